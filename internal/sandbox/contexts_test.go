package sandbox

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/testenv"
)

// gvisorService is a Service over the real gVisor backend and a real history.
func gvisorService(t *testing.T) *Service {
	t.Helper()
	testenv.Root(t)
	runsc := testenv.Runsc(t)
	tpl := testenv.Template(t)
	dir := t.TempDir()
	be, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: filepath.Join(dir, "state"), AgentPath: testenv.Agent(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	svc, err := New(cfg, Deps{Backends: []backend.Backend{be}, Template: tpl, History: hist,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		hist.Close()
	})
	return svc
}

func mainText(r CellResult) string {
	for _, o := range r.Results {
		if o.IsMainResult {
			return o.Text
		}
	}
	return ""
}

// The contexts API as the E2B surface calls it: the default context (no id) created on
// first use, events in order from one goroutine at a time, the rollback of a failing
// cell (Rollback nil: the agent's policy, auto-rollback on) and Rollback forced off.
func TestCellsAreTransactions(t *testing.T) {
	svc := gvisorService(t)
	ctx := context.Background()
	sb, err := svc.Create(ctx, api.CreateSandboxRequest{AgentID: "cells"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []string
	emit := func(ev CellEvent) {
		if !mu.TryLock() {
			t.Errorf("emit called concurrently")
			return
		}
		defer mu.Unlock()
		switch ev.Kind {
		case CellStdout, CellStderr:
			events = append(events, ev.Kind+":"+ev.Text)
		case CellResultEvent:
			events = append(events, "result:"+ev.Result.Text)
		case CellErrorEvent:
			events = append(events, "error:"+ev.Error.Name)
		}
	}
	run := func(code string, rollback *bool) CellResult {
		t.Helper()
		r, err := svc.RunCell(ctx, sb.ID, "cells", "", CellRequest{Code: code, Rollback: rollback}, emit)
		if err != nil {
			t.Fatalf("%q: %v", code, err)
		}
		return r
	}
	r := run("x = 1\nprint('one')\nx", nil)
	if r.Verdict != "ok" || mainText(r) != "1" || r.ContextID == "" || r.RunID == "" {
		t.Fatalf("first cell: %+v", r)
	}
	// Output printed before the result is streamed before it (the agent holds a result
	// until the pipes have passed what the cell wrote before it).
	if got := strings.Join(events, " | "); got != "stdout:one\n | result:1" {
		t.Errorf("events %q", got)
	}
	list, err := svc.ListContexts(ctx, sb.ID, "cells")
	if err != nil || len(list) != 1 || list[0].ID != r.ContextID || !list[0].Default || list[0].Language != "python" {
		t.Fatalf("the default context: %+v %v", list, err)
	}
	r = run("x = 2\nraise ValueError('v')", nil)
	if r.Verdict != "error" || !r.RolledBack || r.Error == nil || r.Error.Name != "ValueError" {
		t.Fatalf("failing cell: %+v", r)
	}
	if r := run("x", nil); mainText(r) != "1" {
		t.Fatalf("after the rollback x = %q, want 1", mainText(r))
	}
	off := false
	if r := run("x = 3\nraise ValueError('v')", &off); r.RolledBack {
		t.Fatalf("rollback forced off, rolled back anyway: %+v", r)
	}
	if r := run("x", nil); mainText(r) != "3" {
		t.Fatalf("without rollback x = %q, want 3", mainText(r))
	}
	// Another agent may not use the sandbox's contexts.
	if _, err := svc.RunCell(ctx, sb.ID, "intruder", "", CellRequest{Code: "x"}, nil); !errors.Is(err, ErrForbidden) {
		t.Errorf("another agent's cell: %v, want ErrForbidden", err)
	}
	if _, err := svc.RunCell(ctx, sb.ID, "cells", "ctx_nope", CellRequest{Code: "x"}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown context: %v, want ErrNotFound", err)
	}
	if _, err := svc.RunCell(ctx, sb.ID, "cells", "", CellRequest{Code: "x", Language: "ruby"}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("ruby cell: %v, want ErrInvalid", err)
	}
}

// Bad requests are classified before any sandbox work, and a backend without contexts
// says so.
func TestContextErrors(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	sb, err := h.svc.Create(ctx, api.CreateSandboxRequest{AgentID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"unknown language", func() error {
			_, err := h.svc.CreateContext(ctx, sb.ID, "a", ContextSpec{Language: "cobol"})
			return err
		}(), ErrInvalid},
		{"no language", func() error { _, err := h.svc.CreateContext(ctx, sb.ID, "a", ContextSpec{}); return err }(), ErrInvalid},
		{"unknown sandbox", func() error {
			_, err := h.svc.CreateContext(ctx, "sb-000000000000", "a", ContextSpec{Language: "python"})
			return err
		}(), ErrNotFound},
		{"empty code", func() error { _, err := h.svc.RunCell(ctx, sb.ID, "a", "", CellRequest{Code: " "}, nil); return err }(), ErrInvalid},
		{"no contexts in the fake backend", func() error {
			_, err := h.svc.CreateContext(ctx, sb.ID, "a", ContextSpec{Language: "python"})
			return err
		}(), ErrUnsupported},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
}
