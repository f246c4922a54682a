package storetest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// Guards that sandbox records and agent policies survive a reopen, which is what lets
// an agent find its sandbox after a daemon restart.
func testSandboxesAndAgentsPersist(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, reopen := openTest(t, newDB)
	a := history.Sandbox{ID: "sb-a", AgentID: "agent-1", Name: "a", Backend: "gvisor", MemoryMB: 512, CreatedAt: t0}
	b := history.Sandbox{ID: "sb-b", Backend: "gvisor", MemoryMB: 256, CreatedAt: t0.Add(1)}
	for _, sb := range []history.Sandbox{b, a} {
		if err := s.PutSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutAgentPolicy(ctx, "agent-1", `{"auto_rollback_on_failure":false}`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := reopen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]history.Sandbox{a, b}, got); diff != "" {
		t.Fatalf("sandboxes (-want +got):\n%s", diff)
	}
	p, err := s2.GetAgentPolicy(ctx, "agent-1")
	if err != nil || p != `{"auto_rollback_on_failure":false}` {
		t.Fatalf("policy = %q, %v", p, err)
	}
	if _, err := s2.GetAgentPolicy(ctx, "nobody"); !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("unknown agent: %v", err)
	}
	if err := s2.DeleteSandbox(ctx, "sb-a"); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteSandbox(ctx, "sb-a"); !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := s2.PutSandbox(ctx, history.Sandbox{}); !errors.Is(err, history.ErrInvalid) {
		t.Fatalf("empty id: %v", err)
	}
}

// Guards the sandbox's durable state: what it resumes from (its current snapshot) and
// the newest acknowledged run in its state survive a reopen, so a crash cannot undo a
// rollback or hide a lost commit.
func testSandboxStatePersists(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, reopen := openTest(t, newDB)
	if err := s.PutSandbox(ctx, history.Sandbox{ID: "sb-a", Backend: "gvisor", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	st := history.SandboxState{CurrentSnapshotID: "snap-1", HeadRunID: "ex-2"}
	if err := s.SetSandboxState(ctx, "sb-a", st); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSandboxState(ctx, "sb-none", st); !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("unknown sandbox: %v", err)
	}
	for _, sn := range []history.Snapshot{
		{ID: "snap-1", SandboxID: "sb-a", Kind: history.SnapshotPreRun, SizeBytes: 100, StateRunID: "ex-1", CreatedAt: t0},
		{ID: "snap-2", SandboxID: "sb-b", Kind: history.SnapshotManual, SizeBytes: 20, CreatedAt: t0},
	} {
		if err := s.PutSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s2, err := reopen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.ListSandboxes(ctx)
	if err != nil || len(got) != 1 || got[0].SandboxState != st {
		t.Fatalf("sandboxes after reopen: %+v %v", got, err)
	}
	sn, err := s2.GetSnapshot(ctx, "snap-1")
	if err != nil || sn.StateRunID != "ex-1" {
		t.Fatalf("snapshot state run: %+v %v", sn, err)
	}
	for id, want := range map[string]int64{"sb-a": 100, "sb-b": 20, "": 120, "sb-none": 0} {
		if n, err := s2.SnapshotBytes(ctx, id); err != nil || n != want {
			t.Errorf("SnapshotBytes(%q) = %d, %v; want %d", id, n, err, want)
		}
	}
}
