package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// Files in and out of a sandbox.
//
// Terms: a path is absolute, or relative to the sandbox user's home, /home/user; it is
// resolved by the guest, inside the sandbox, so neither ".." nor a symlink can reach the
// host. Files written and directories created belong to the sandbox user (uid 1000).
//
// Lifecycle: every file operation queues with the sandbox's runs (it holds the
// sandbox's run lock, like a run, a snapshot or a rollback), and resumes a suspended
// sandbox first. A write or a removal changes the sandbox's state, so the next run
// takes a fresh pre-run snapshot instead of reusing one taken before it.
//
// Failure semantics: a missing path is ErrNotFound; a directory where a file is
// expected (or the reverse) and a path the guest refuses are ErrInvalid; a file over
// the server's max_file_bytes maximum is ErrTooLarge, and the partial file is removed.
// A sandbox that dies during an operation is dropped (the next use starts a fresh
// one) and the operation fails with ErrUnavailable.

// ErrTooLarge: a file is over the server's per-file limit (HTTP 413).
var ErrTooLarge = errors.New("file too large")

// HomeDir is where relative paths start.
const HomeDir = "/home/user"

// MaxListDepth bounds the depth of ListFiles.
const MaxListDepth = 16

// MaxFileBytes is the largest file PutFile accepts: the server's max_file_bytes maximum.
func (s *Service) MaxFileBytes() int64 { return s.cfg.Max.MaxFileBytes }

// PutFile writes r's content to p in a sandbox, creating missing parent directories,
// with mode (0 is 0o644). The content streams to the guest; it is never held whole.
func (s *Service) PutFile(ctx context.Context, sandboxID, agentID, p string, mode uint32, r io.Reader) (api.FileInfo, error) {
	p, err := cleanPath(p)
	if err != nil {
		return api.FileInfo{}, err
	}
	if mode&^0o7777 != 0 {
		return api.FileInfo{}, fmt.Errorf("mode %#o is not a permission mode: %w", mode, ErrInvalid)
	}
	var info api.FileInfo
	err = s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		e.cleanSnap = "" // the state changes, even if the write fails half way
		lr := &limitReader{r: r, left: s.cfg.Max.MaxFileBytes}
		if err := e.sb.WriteFile(ctx, p, mode, lr); err != nil {
			if lr.over {
				e.sb.RemoveFile(context.WithoutCancel(ctx), p, false)
				return fmt.Errorf("%s is over the %d byte file limit: %w", p, s.cfg.Max.MaxFileBytes, ErrTooLarge)
			}
			return err
		}
		fi, err := e.sb.StatFile(ctx, p)
		info = fileAPI(fi)
		return err
	})
	return info, err
}

// OpenFile calls fn with p's info and a reader of its content, streamed from the guest.
// The sandbox stays locked (other requests queue) until fn returns; fn must not keep r.
func (s *Service) OpenFile(ctx context.Context, sandboxID, agentID, p string, fn func(api.FileInfo, io.Reader) error) error {
	p, err := cleanPath(p)
	if err != nil {
		return err
	}
	return s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		fi, rc, err := e.sb.OpenFile(ctx, p)
		if err != nil {
			return err
		}
		defer rc.Close()
		return fn(fileAPI(fi), rc)
	})
}

// StatFile describes p.
func (s *Service) StatFile(ctx context.Context, sandboxID, agentID, p string) (api.FileInfo, error) {
	p, err := cleanPath(p)
	if err != nil {
		return api.FileInfo{}, err
	}
	var info api.FileInfo
	err = s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		fi, err := e.sb.StatFile(ctx, p)
		info = fileAPI(fi)
		return err
	})
	return info, err
}

// ListFiles lists directory p's entries, recursing depth levels (0 or 1: the entries
// only; at most MaxListDepth).
func (s *Service) ListFiles(ctx context.Context, sandboxID, agentID, p string, depth int) (api.FileList, error) {
	if p == "" {
		p = HomeDir
	}
	p, err := cleanPath(p)
	if err != nil {
		return api.FileList{}, err
	}
	switch {
	case depth == 0:
		depth = 1
	case depth < 0 || depth > MaxListDepth:
		return api.FileList{}, fmt.Errorf("depth %d: want 1 to %d: %w", depth, MaxListDepth, ErrInvalid)
	}
	out := api.FileList{Entries: []api.FileInfo{}}
	err = s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		fis, err := e.sb.ListFiles(ctx, p, depth)
		for _, fi := range fis {
			out.Entries = append(out.Entries, fileAPI(fi))
		}
		return err
	})
	return out, err
}

// RemoveFile removes p; a directory only with recursive.
func (s *Service) RemoveFile(ctx context.Context, sandboxID, agentID, p string, recursive bool) error {
	p, err := cleanPath(p)
	if err != nil {
		return err
	}
	if p == "/" || p == HomeDir {
		return fmt.Errorf("refusing to remove %s: %w", p, ErrInvalid)
	}
	return s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		e.cleanSnap = ""
		return e.sb.RemoveFile(ctx, p, recursive)
	})
}

// withFiles runs f on e's running sandbox, queued like a run, and classifies the
// errors of the backend's file methods.
func (s *Service) withFiles(ctx context.Context, sandboxID, agentID string, f func(e *entry) error) error {
	return s.withEntry(ctx, sandboxID, agentID, func(e *entry) error {
		if _, err := s.resumeLocked(ctx, e); err != nil {
			return err
		}
		e.busy.Store(true)
		defer e.busy.Store(false)
		err := f(e)
		e.lastUsed = time.Now()
		if errors.Is(err, backend.ErrSandboxDead) {
			e.drop()
		}
		return classifyFileErr(err)
	})
}

// classifyFileErr maps the guest's file errors to the service's classes.
func classifyFileErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrInvalid), errors.Is(err, ErrNotFound):
		return err // classified already
	case errors.Is(err, agentproto.ErrNotExist):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, agentproto.ErrIsDir), errors.Is(err, agentproto.ErrNotDir),
		errors.Is(err, agentproto.ErrInvalidPath), errors.Is(err, agentproto.ErrInvalidRequest):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	case errors.Is(err, agentproto.ErrFileTooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, backend.ErrSandboxDead):
		return fmt.Errorf("the sandbox died; the next request starts a fresh one: %w: %w", ErrUnavailable, err)
	}
	return err
}

// cleanPath makes p absolute (relative to HomeDir) and lexically clean. It refuses
// only what cannot name a file; where p leads is for the guest to resolve.
func cleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fmt.Errorf("path is required: %w", ErrInvalid)
	case len(p) > 4096:
		return "", fmt.Errorf("path is over 4096 bytes: %w", ErrInvalid)
	}
	for _, c := range p {
		if c == 0 {
			return "", fmt.Errorf("path contains a NUL byte: %w", ErrInvalid)
		}
	}
	if !path.IsAbs(p) {
		p = path.Join(HomeDir, p)
	}
	return path.Clean(p), nil
}

// limitReader reads from r until left bytes have been read, then fails, remembering
// that the content was over the limit.
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells a content of exactly the limit from a longer one.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.over = true
			return 0, fmt.Errorf("over the file limit: %w", ErrTooLarge)
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

func fileAPI(fi agentproto.FileInfo) api.FileInfo {
	return api.FileInfo{Name: fi.Name, Path: fi.Path, Type: fi.Type, Size: fi.Size, Mode: fi.Mode, MTime: fi.MTime.UTC()}
}

// MakeDir creates directory p in a sandbox with its missing parents; one that exists
// already is no error.
func (s *Service) MakeDir(ctx context.Context, sandboxID, agentID, p string) error {
	p, err := cleanPath(p)
	if err != nil {
		return err
	}
	return s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		e.cleanSnap = ""
		return e.sb.MakeDir(ctx, p)
	})
}
