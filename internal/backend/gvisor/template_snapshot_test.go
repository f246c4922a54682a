package gvisor_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/testenv"
)

// A shared image is made again when what the backend puts into every sandbox
// changes: a backend on the same state dir whose guest agent binary differs does not
// find the image saved under the same key, while one with the same inputs does.
func TestSharedImageKeyedByAgentBinary(t *testing.T) {
	testenv.Root(t)
	runsc, tpl, agent := testenv.Runsc(t), testenv.Template(t), testenv.Agent(t)
	state := t.TempDir()
	a, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: state, AgentPath: agent})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sb, err := a.Create(ctx, backend.Spec{ID: "shared-key", Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	img, err := a.SaveShared(ctx, sb, "k")
	if err != nil {
		t.Fatal(err)
	}

	same, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: state, AgentPath: agent})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := same.SharedImage(ctx, "k"); err != nil || got.Ref != img.Ref {
		t.Fatalf("same inputs: %+v, %v; want %s", got, err, img.Ref)
	}

	// Another build of the agent: the same bytes and one more (still a valid binary).
	b, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "vmexec-agent")
	if err := os.WriteFile(other, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: state, AgentPath: other})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rebuilt.SharedImage(ctx, "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("another agent binary: %+v, %v; want ErrNotFound (the image must be made again)", got, err)
	}
	if _, err := a.SharedImage(ctx, "other key"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("another key: %v, want ErrNotFound", err)
	}
}
