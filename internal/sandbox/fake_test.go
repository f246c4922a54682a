package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
	"github.com/vmexec/vmexec/internal/template"
)

var (
	_ backend.Backend     = (*fakeBackend)(nil)
	_ backend.Snapshotter = (*fakeBackend)(nil)
)

// The fake is a backend: it passes the conformance suite's contract tier, so the
// service's unit tests run against the contract the real backends keep.
func TestFakeContract(t *testing.T) {
	be := newFake()
	be.dir = t.TempDir()
	backendtest.RunContract(t, backendtest.Env{Backend: be, Template: fakeTemplate,
		Kill: func(t *testing.T, sb backend.Sandbox) { sb.(*fakeSandbox).kill() }})
}

// fakeTemplate is the template the service's tests give the fake (which never reads it).
var fakeTemplate = template.Template{Name: "fake", Hash: "0", RootFS: "/nonexistent-rootfs"}

// fakeBackend is an in-memory backend for the service's unit tests; it passes the
// backend conformance suite's contract tier (TestFakeContract). A sandbox's state
// is a map of variables, and a snapshot image a copy of it in a file under dir, as a
// real backend's images are under its state dir: a "crash" (a new fake on the same
// dir) loses the live sandboxes and keeps the images. "Programs" are lines of:
//
//	set K V      print K     exit N      sleep MS     die (the sandbox dies)
//
// Its knobs let tests stage what a real host does: snapGate holds every snapshot
// until closed (a crash "before the background snapshot"), failCreate fails that many
// Creates after createGate is closed, snapPad makes images that many bytes bigger.
type fakeBackend struct {
	mu         sync.Mutex
	live       map[string]*fakeSandbox
	created    int
	snapGate   chan struct{}
	createGate chan struct{}
	failCreate int
	snapPad    int
	dir        string // where images are kept; set by the harness (startHarnessWith)
}

func newFake() *fakeBackend { return &fakeBackend{live: map[string]*fakeSandbox{}} }

type fakeSandbox struct {
	b    *fakeBackend
	id   string
	mu   sync.Mutex
	vars map[string]string
	dead bool
	gone bool // destroyed
}

func (b *fakeBackend) Name() string { return "fake" }

func (b *fakeBackend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
	b.mu.Lock()
	gate := b.createGate
	b.mu.Unlock()
	if gate != nil {
		<-gate
	}
	b.mu.Lock()
	fail := b.failCreate > 0
	if fail {
		b.failCreate--
	}
	b.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("fake: create %s failed", spec.ID)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fake: create %s: %w", spec.ID, err)
	}
	return b.start(spec, map[string]string{})
}

func (b *fakeBackend) start(spec backend.Spec, vars map[string]string) (*fakeSandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.live[spec.ID]; ok {
		return nil, fmt.Errorf("fake: %s exists", spec.ID)
	}
	sb := &fakeSandbox{b: b, id: spec.ID, vars: vars}
	b.live[spec.ID] = sb
	b.created++
	return sb, nil
}

func (b *fakeBackend) List(ctx context.Context) ([]backend.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []backend.Info
	for id := range b.live {
		out = append(out, backend.Info{ID: id, Backend: "fake", Status: "running"})
	}
	return out, nil
}

func (b *fakeBackend) DestroyID(ctx context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.live, id)
	return nil
}

func (b *fakeBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.live)
}

func (b *fakeBackend) Snapshot(ctx context.Context, s backend.Sandbox) (backend.Image, error) {
	b.mu.Lock()
	gate, pad := b.snapGate, b.snapPad
	b.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return backend.Image{}, ctx.Err()
		}
	}
	sb := s.(*fakeSandbox)
	sb.mu.Lock()
	dead := sb.dead
	data, _ := json.Marshal(sb.vars)
	sb.mu.Unlock()
	if dead {
		return backend.Image{}, &backend.DeadError{Verdict: agentproto.VerdictKilled}
	}
	img := backend.Image{Ref: randID("fake-img-", 8), SizeBytes: int64(len(data) + pad)}
	// Written whole or not at all, like a real backend's: a .tmp file is never listed.
	final := filepath.Join(b.dir, img.Ref)
	if err := os.WriteFile(final+".tmp", append(data, make([]byte, pad)...), 0o600); err != nil {
		return backend.Image{}, err
	}
	return img, os.Rename(final+".tmp", final)
}

func (b *fakeBackend) Fork(ctx context.Context, ref string, spec backend.Spec) (backend.Sandbox, error) {
	if !backend.ValidRef(ref) {
		return nil, fmt.Errorf("image %q: %w", ref, backend.ErrNotFound)
	}
	data, err := os.ReadFile(filepath.Join(b.dir, ref))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, backend.ErrNotFound)
	}
	vars := map[string]string{}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&vars); err != nil {
		return nil, err
	}
	return b.start(spec, vars)
}

func (b *fakeBackend) DeleteImage(ctx context.Context, ref string) error {
	if !backend.ValidRef(ref) {
		return nil
	}
	if err := os.Remove(filepath.Join(b.dir, ref)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (b *fakeBackend) ListImages(ctx context.Context) ([]backend.Image, error) {
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, err
	}
	var out []backend.Image
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && backend.ValidRef(e.Name()) {
			out = append(out, backend.Image{Ref: e.Name(), SizeBytes: fi.Size()})
		}
	}
	return out, nil
}

func (s *fakeSandbox) ID() string { return s.id }

func (s *fakeSandbox) Info(ctx context.Context) backend.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := "running"
	if s.dead {
		st = "dead"
	}
	return backend.Info{ID: s.id, Backend: "fake", Status: st}
}

func (s *fakeSandbox) Ping(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return &backend.DeadError{Verdict: agentproto.VerdictKilled}
	}
	return nil
}

// kill ends the sandbox from outside, as an operator's kill or the host's OOM killer
// would.
func (s *fakeSandbox) kill() {
	s.mu.Lock()
	s.dead = true
	s.mu.Unlock()
}

// sandboxes returns the live fake sandboxes.
func (b *fakeBackend) sandboxes() []*fakeSandbox {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*fakeSandbox
	for _, sb := range b.live {
		out = append(out, sb)
	}
	return out
}

func (s *fakeSandbox) Destroy(ctx context.Context) error {
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	s.b.mu.Lock()
	if s.b.live[s.id] == s {
		delete(s.b.live, s.id)
	}
	s.b.mu.Unlock()
	return nil
}

// Exec runs the program, passing each line it prints to outFn as it prints it. sleep
// and wait end early, with verdict canceled, when ctx ends (wait waits for nothing
// else); hang waits for ctx and then fails with its error, as a guest that does not
// answer; warn prints to stderr.
func (s *fakeSandbox) Exec(ctx context.Context, req *agentproto.ExecRequest, outFn agentproto.OutputFunc) (res *agentproto.ExecResult, err error) {
	// The lock is held per line, not per program, so that only the service's own
	// serialisation keeps a snapshot from seeing a run half done.
	s.mu.Lock()
	dead, gone := s.dead, s.gone
	s.mu.Unlock()
	if gone {
		return nil, fmt.Errorf("fake: sandbox %s was destroyed", s.id)
	}
	if dead {
		return nil, &backend.DeadError{Verdict: agentproto.VerdictKilled}
	}
	res = &agentproto.ExecResult{Verdict: agentproto.VerdictOK}
	var out, errOut strings.Builder
	say := func(stream, text string) {
		if stream == agentproto.StreamStderr {
			errOut.WriteString(text)
		} else {
			out.WriteString(text)
		}
		if outFn != nil {
			outFn(stream, []byte(text))
		}
	}
	defer func() {
		if res != nil {
			res.Stdout, res.Stderr = []byte(out.String()), []byte(errOut.String())
		}
	}()
	canceled := func() (*agentproto.ExecResult, error) {
		res.Verdict, res.ExitCode = agentproto.VerdictCanceled, -1
		return res, nil
	}
	for _, line := range strings.Split(req.Code, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "set":
			s.mu.Lock()
			s.vars[f[1]] = f[2]
			s.mu.Unlock()
		case len(f) == 2 && f[0] == "print":
			s.mu.Lock()
			v := s.vars[f[1]]
			s.mu.Unlock()
			say(agentproto.StreamStdout, v+"\n")
		case len(f) == 2 && f[0] == "exit":
			fmt.Sscan(f[1], &res.ExitCode)
			res.Verdict = agentproto.VerdictNonzeroExit
			return res, nil
		case len(f) == 2 && f[0] == "sleep":
			var ms int
			fmt.Sscan(f[1], &ms)
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-ctx.Done():
				return canceled()
			}
		case len(f) == 1 && f[0] == "hang": // a guest that does not answer the cancellation
			<-ctx.Done()
			return nil, ctx.Err()
		case len(f) == 1 && f[0] == "wait":
			<-ctx.Done()
			return canceled()
		case len(f) == 1 && f[0] == "die":
			s.mu.Lock()
			s.dead = true
			s.mu.Unlock()
			return nil, &backend.DeadError{Verdict: agentproto.VerdictMemoryLimit}
		case len(f) >= 1 && f[0] == "echo":
			say(agentproto.StreamStdout, strings.Join(f[1:], " ")+"\n")
		case len(f) >= 1 && f[0] == "warn":
			say(agentproto.StreamStderr, strings.Join(f[1:], " ")+"\n")
		}
	}
	return res, nil
}
