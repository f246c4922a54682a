package gvisor_test

import (
	"context"
	"errors"
	"testing"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/testenv"
)

func newBackend(t *testing.T) (*gvisor.Backend, string) {
	testenv.Root(t)
	runsc := testenv.Runsc(t)
	tpl := testenv.Template(t)
	b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: t.TempDir(), AgentPath: testenv.Agent(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b, tpl.RootFS
}

// The gVisor backend passes the backend conformance suite.
func TestConformance(t *testing.T) {
	b, rootfs := newBackend(t)
	backendtest.Run(t, backendtest.Env{Backend: b, RootFS: rootfs, ImageDir: t.TempDir()})
}

// Guards the host's memory: a sandbox whose processes exceed its memory cap does not
// take more, and what happened is reported as a memory verdict, never as success.
func TestMemoryCap(t *testing.T) {
	b, rootfs := newBackend(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "memcap", RootFS: rootfs, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "a=[]\nwhile True: a.append(bytearray(10**7))",
		Limits: agentproto.Limits{TimeoutMS: 30000, MemoryBytes: 1 << 30}}, nil)
	if err != nil {
		var dead *backend.DeadError
		if !errors.As(err, &dead) {
			t.Fatalf("exec: %v", err)
		}
		t.Logf("sandbox died: %v", dead)
		return
	}
	if res.Verdict == agentproto.VerdictOK {
		t.Fatalf("memory bomb ended ok: %+v", res)
	}
	t.Logf("verdict %s exit %d", res.Verdict, res.ExitCode)
}
