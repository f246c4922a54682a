// Package memtest is the HTTP layers' test bed (internal/httpapi, internal/e2b): an
// in-memory backend whose sandboxes run a tiny line language and keep files in a
// map, and a sandbox service over it with a real SQLite history. It has no
// snapshots; the real backends' tests are internal/backend's.
package memtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/sandbox"
	"github.com/vmexec/vmexec/internal/template"
)

// Home is the sandbox user's home: relative paths are under it, and it is a
// directory from the start.
const Home = "/home/user"

// Backend is the in-memory backend. Programs are lines:
//
//	echo TEXT        TEXT and a newline on stdout
//	warn TEXT        TEXT and a newline on stderr
//	raw ESCAPED      bytes on stdout, as a Go string's \xNN escapes spell them
//	wait             until the run is cancelled (verdict canceled)
//	exit N           stop with exit code N (verdict nonzero_exit unless 0)
//
// Any other line does nothing. A directory is Home or any directory a file was
// written under.
type Backend struct{}

var _ backend.Backend = Backend{}

// Name implements backend.Backend.
func (Backend) Name() string { return "mem" }

// Create implements backend.Backend.
func (Backend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
	return &memSandbox{id: spec.ID, files: map[string][]byte{}}, nil
}

// List implements backend.Backend: a new service finds nothing left over.
func (Backend) List(ctx context.Context) ([]backend.Info, error) { return nil, nil }

// DestroyID implements backend.Backend.
func (Backend) DestroyID(ctx context.Context, id string) error { return nil }

type memSandbox struct {
	id    string
	mu    sync.Mutex
	files map[string][]byte
}

func (s *memSandbox) ID() string                     { return s.id }
func (s *memSandbox) Ping(ctx context.Context) error { return nil }
func (s *memSandbox) Info(context.Context) backend.Info {
	return backend.Info{ID: s.id, Backend: "mem", Status: "running"}
}
func (s *memSandbox) Destroy(ctx context.Context) error { return nil }

func (s *memSandbox) Exec(ctx context.Context, req *agentproto.ExecRequest, out agentproto.OutputFunc) (*agentproto.ExecResult, error) {
	res := &agentproto.ExecResult{Verdict: agentproto.VerdictOK}
	emit := func(stream string, p []byte) {
		if stream == agentproto.StreamStderr {
			res.Stderr = append(res.Stderr, p...)
		} else {
			res.Stdout = append(res.Stdout, p...)
		}
		if out != nil {
			out(stream, p)
		}
	}
	for _, line := range strings.Split(req.Code, "\n") {
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd {
		case "echo":
			emit(agentproto.StreamStdout, []byte(arg+"\n"))
		case "warn":
			emit(agentproto.StreamStderr, []byte(arg+"\n"))
		case "raw":
			var b []byte
			fmt.Sscanf(`"`+arg+`"`, "%q", &b)
			emit(agentproto.StreamStdout, b)
		case "wait":
			<-ctx.Done()
			res.Verdict, res.ExitCode = agentproto.VerdictCanceled, -1
			return res, nil
		case "exit":
			res.ExitCode, _ = strconv.Atoi(arg)
			if res.ExitCode != 0 {
				res.Verdict = agentproto.VerdictNonzeroExit
			}
			return res, nil
		}
	}
	return res, nil
}

// abs is p in the sandbox: relative to Home, cleaned.
func abs(p string) string {
	if !path.IsAbs(p) {
		p = path.Join(Home, p)
	}
	return path.Clean(p)
}

// isDirLocked reports whether p (absolute) is a directory: Home, or an ancestor of
// a file.
func (s *memSandbox) isDirLocked(p string) bool {
	if p == Home {
		return true
	}
	for f := range s.files {
		if strings.HasPrefix(f, p+"/") {
			return true
		}
	}
	return false
}

func (s *memSandbox) WriteFile(ctx context.Context, p string, mode uint32, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	p = abs(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isDirLocked(p) {
		return fmt.Errorf("%s: %w", p, agentproto.ErrIsDir)
	}
	s.files[p] = b
	return nil
}

func (s *memSandbox) StatFile(ctx context.Context, p string) (agentproto.FileInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p = abs(p)
	if b, ok := s.files[p]; ok {
		return agentproto.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: 0o644, MTime: time.Unix(1700000000, 0)}, nil
	}
	if s.isDirLocked(p) {
		return agentproto.FileInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755}, nil
	}
	return agentproto.FileInfo{}, fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
}

func (s *memSandbox) OpenFile(ctx context.Context, p string) (agentproto.FileInfo, io.ReadCloser, error) {
	fi, err := s.StatFile(ctx, p)
	if err == nil && fi.Type == "dir" {
		err = fmt.Errorf("%s: %w", fi.Path, agentproto.ErrIsDir)
	}
	if err != nil {
		return fi, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return fi, io.NopCloser(bytes.NewReader(s.files[fi.Path])), nil
}

// ListFiles lists the files directly in directory p (depth is not followed).
func (s *memSandbox) ListFiles(ctx context.Context, p string, depth int) ([]agentproto.FileInfo, error) {
	p = abs(p)
	s.mu.Lock()
	if !s.isDirLocked(p) {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
	}
	var names []string
	for n := range s.files {
		if path.Dir(n) == p {
			names = append(names, n)
		}
	}
	s.mu.Unlock()
	sort.Strings(names)
	var out []agentproto.FileInfo
	for _, n := range names {
		fi, _ := s.StatFile(ctx, n)
		out = append(out, fi)
	}
	return out, nil
}

func (s *memSandbox) MakeDir(ctx context.Context, p string) error { return nil }

func (s *memSandbox) RemoveFile(ctx context.Context, p string, recursive bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.files[abs(p)]; !ok {
		return fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
	}
	delete(s.files, abs(p))
	return nil
}

// Service starts a sandbox service over Backend (no pool; mod, if set, changes the
// config first) with a SQLite history in a temporary directory, both closed when
// the test ends.
func Service(t testing.TB, mod func(*sandbox.Config)) (*sandbox.Service, *sqlite.Store) {
	t.Helper()
	hist, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := sandbox.DefaultConfig()
	cfg.PoolSize = 0
	if mod != nil {
		mod(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := sandbox.New(cfg, sandbox.Deps{Backends: []backend.Backend{Backend{}}, Template: template.Template{Name: "mem", RootFS: "/nonexistent"}, History: hist, Logger: log})
	if err != nil {
		hist.Close()
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		svc.Close(context.Background())
		hist.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		hist.Close()
	})
	return svc, hist
}
