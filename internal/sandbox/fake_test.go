package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// fakeBackend is an in-memory backend for the service's unit tests. A sandbox's state
// is a map of variables; "programs" are lines of:
//
//	set K V      print K     exit N      sleep MS     die (the sandbox dies)
type fakeBackend struct {
	mu      sync.Mutex
	live    map[string]*fakeSandbox
	created int
}

func newFake() *fakeBackend { return &fakeBackend{live: map[string]*fakeSandbox{}} }

type fakeSandbox struct {
	b    *fakeBackend
	id   string
	mu   sync.Mutex
	vars map[string]string
	dead bool
}

func (b *fakeBackend) Name() string { return "fake" }

func (b *fakeBackend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
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

func (b *fakeBackend) Snapshot(ctx context.Context, s backend.Sandbox, dir string) error {
	sb := s.(*fakeSandbox)
	sb.mu.Lock()
	data, _ := json.Marshal(sb.vars)
	sb.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "state.json"), data, 0o600)
}

func (b *fakeBackend) load(dir string) (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", dir, backend.ErrNotFound)
	}
	vars := map[string]string{}
	return vars, json.Unmarshal(data, &vars)
}

func (b *fakeBackend) Restore(ctx context.Context, s backend.Sandbox, dir string, spec backend.Spec) (backend.Sandbox, error) {
	vars, err := b.load(dir)
	if err != nil {
		return nil, err
	}
	if s != nil {
		s.Destroy(ctx)
	}
	return b.start(spec, vars)
}

func (b *fakeBackend) Fork(ctx context.Context, dir string, spec backend.Spec) (backend.Sandbox, error) {
	vars, err := b.load(dir)
	if err != nil {
		return nil, err
	}
	return b.start(spec, vars)
}

func (s *fakeSandbox) ID() string { return s.id }

func (s *fakeSandbox) Info() backend.Info {
	st := "running"
	if s.dead {
		st = "dead"
	}
	return backend.Info{ID: s.id, Backend: "fake", Status: st}
}

func (s *fakeSandbox) Ping(ctx context.Context) error { return nil }

func (s *fakeSandbox) Destroy(ctx context.Context) error {
	s.b.DestroyID(ctx, s.id)
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
	dead := s.dead
	s.mu.Unlock()
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
