package sqlite

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// Guards that sandbox records and agent policies survive a reopen, which is what lets
// an agent find its sandbox after a daemon restart.
func TestSandboxesAndAgentsPersist(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
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
	s2, err := Open(ctx, path)
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
