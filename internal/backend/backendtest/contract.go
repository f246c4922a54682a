package backendtest

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// trivial is the one program the contract tier runs: a real guest and a fake alike
// end it ok.
var trivial = &agentproto.ExecRequest{Language: "bash", Code: "true", Limits: agentproto.Limits{TimeoutMS: 20000}}

// RunContract runs the contract tier: lifecycle, error classes, scope and snapshot
// images, asking nothing of the guest but to run "true".
func RunContract(t *testing.T, e Env) {
	e.defaults()
	ctxFor := e.ctxFor

	// Destroy removes the sandbox from the host; a second Destroy is harmless; a
	// destroyed sandbox refuses calls; DestroyID of an unknown id is not an error.
	t.Run("DestroyAndList", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		if !listed(t, ctx, e.Backend, sb.ID()) {
			t.Fatalf("%s not in List", sb.ID())
		}
		if st := sb.Info(ctx).Status; st != "running" {
			t.Fatalf("status of a new sandbox = %s, want running", st)
		}
		if _, err := sb.Exec(ctx, trivial, nil); err != nil {
			t.Fatalf("exec: %v", err)
		}
		if err := sb.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sb.Destroy(ctx); err != nil {
			t.Fatalf("second destroy: %v", err)
		}
		if listed(t, ctx, e.Backend, sb.ID()) {
			t.Fatalf("%s still listed after destroy", sb.ID())
		}
		if _, err := sb.Exec(ctx, trivial, nil); err == nil {
			t.Fatal("exec on a destroyed sandbox succeeded")
		}
		if err := e.Backend.DestroyID(ctx, "no-such-sandbox"); err != nil {
			t.Fatalf("DestroyID of unknown id: %v", err)
		}
	})

	// A sandbox this process forgot (a crashed daemon's) is found by List and removed
	// by DestroyID.
	t.Run("RecoverOrphan", func(t *testing.T) {
		ctx := ctxFor(t)
		sb, err := e.Backend.Create(ctx, e.spec(t))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Destroy(context.Background())
		if err := e.Backend.DestroyID(ctx, sb.ID()); err != nil {
			t.Fatal(err)
		}
		if listed(t, ctx, e.Backend, sb.ID()) {
			t.Fatal("orphan still listed after DestroyID")
		}
	})

	// A bad spec is refused before anything is made.
	t.Run("BadSpec", func(t *testing.T) {
		ctx := ctxFor(t)
		for name, mod := range map[string]func(*backend.Spec){
			"invalid id":  func(s *backend.Spec) { s.ID = "bad/id" },
			"empty id":    func(s *backend.Spec) { s.ID = "" },
			"no template": func(s *backend.Spec) { s.Template = e.Template; s.Template.Name, s.Template.RootFS = "", "" },
		} {
			sp := e.spec(t)
			mod(&sp)
			if sb, err := e.Backend.Create(ctx, sp); err == nil {
				sb.Destroy(ctx)
				t.Errorf("create with %s succeeded", name)
			}
			if sp.ID != "" && listed(t, ctx, e.Backend, sp.ID) {
				t.Errorf("create with %s left %s behind", name, sp.ID)
			}
		}
	})

	// Create's context bounds start-up: one already ended fails Create with its error
	// and leaves nothing behind.
	t.Run("CreateCanceled", func(t *testing.T) {
		ctx := ctxFor(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		sp := e.spec(t)
		sb, err := e.Backend.Create(cctx, sp)
		if err == nil {
			sb.Destroy(ctx)
			t.Fatal("create with a cancelled context succeeded")
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("create with a cancelled context: %v, want context.Canceled", err)
		}
		if listed(t, ctx, e.Backend, sp.ID) {
			t.Fatalf("cancelled create left %s behind", sp.ID)
		}
	})

	// ... but not the sandbox's life: a sandbox outlives the context it was created
	// with.
	t.Run("OutlivesCreateContext", func(t *testing.T) {
		ctx := ctxFor(t)
		cctx, cancel := context.WithCancel(ctx)
		sb, err := e.Backend.Create(cctx, e.spec(t))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Destroy(context.Background())
		cancel()
		if err := sb.Ping(ctx); err != nil {
			t.Fatalf("ping after the create context ended: %v", err)
		}
	})

	// Exec with a context already ended does not run the program to completion and
	// does not harm the sandbox: a canceled result (nil error) or ctx's error, and
	// the next run works.
	t.Run("ExecCanceled", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		res, err := sb.Exec(cctx, &agentproto.ExecRequest{Language: "bash", Code: "sleep 300", Limits: agentproto.Limits{TimeoutMS: 600000}}, nil)
		switch {
		case err == nil && res.Verdict != agentproto.VerdictCanceled:
			t.Fatalf("exec with a cancelled context: verdict %s, want canceled", res.Verdict)
		case err != nil && !errors.Is(err, context.Canceled):
			t.Fatalf("exec with a cancelled context: %v, want context.Canceled", err)
		}
		if _, err := sb.Exec(ctx, trivial, nil); err != nil {
			t.Fatalf("exec after a cancelled one: %v", err)
		}
	})

	// A sandbox killed from outside reports dead: Info says so, calls fail with
	// ErrSandboxDead (never a plain error), and Destroy still cleans it up.
	t.Run("DeadSandbox", func(t *testing.T) {
		ctx := ctxFor(t)
		sb, err := e.Backend.Create(ctx, e.spec(t))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Destroy(context.Background())
		e.kill(t, ctx, sb)
		waitFor(t, ctx, "the killed sandbox to report dead", func() bool { return sb.Info(ctx).Status == "dead" })
		if _, err := sb.Exec(ctx, trivial, nil); !errors.Is(err, backend.ErrSandboxDead) {
			t.Fatalf("exec in a dead sandbox: %v, want ErrSandboxDead", err)
		}
		var dead *backend.DeadError
		if err := sb.Ping(ctx); !errors.As(err, &dead) || dead.Verdict == "" {
			t.Fatalf("ping of a dead sandbox: %v, want a *DeadError with a verdict", err)
		}
		if snap, ok := e.Backend.(backend.Snapshotter); ok {
			before := images(t, ctx, snap)
			if _, err := snap.Snapshot(ctx, sb); !errors.Is(err, backend.ErrSandboxDead) {
				t.Errorf("snapshot of a dead sandbox: %v, want ErrSandboxDead", err)
			}
			if after := images(t, ctx, snap); len(after) != len(before) {
				t.Errorf("a failed snapshot left an image: %d images before, %d after", len(before), len(after))
			}
		}
		if err := sb.Destroy(ctx); err != nil {
			t.Fatalf("destroy of a dead sandbox: %v", err)
		}
		if listed(t, ctx, e.Backend, sb.ID()) {
			t.Fatal("dead sandbox still listed after destroy")
		}
	})

	// List and DestroyID stay within the backend's scope: a second backend of the
	// same kind with its own state (another daemon) neither sees nor removes them.
	t.Run("Scope", func(t *testing.T) {
		if e.Peer == nil {
			t.Skip("no peer backend given (Env.Peer)")
		}
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		if listed(t, ctx, e.Peer, sb.ID()) {
			t.Fatalf("another scope's List reports %s", sb.ID())
		}
		if err := e.Peer.DestroyID(ctx, sb.ID()); err != nil {
			t.Fatalf("another scope's DestroyID: %v", err)
		}
		if err := sb.Ping(ctx); err != nil || !listed(t, ctx, e.Backend, sb.ID()) {
			t.Fatalf("another scope's DestroyID touched %s: ping %v", sb.ID(), err)
		}
	})

	t.Run("SharedImages", func(t *testing.T) { sharedImages(t, e) })

	// Snapshot images are opaque references the backend owns: listed once taken,
	// forkable, deleted idempotently; a missing or malformed reference is ErrNotFound.
	t.Run("Images", func(t *testing.T) {
		snap, ok := e.Backend.(backend.Snapshotter)
		if !ok {
			t.Skipf("backend %s has no snapshot capability", e.Backend.Name())
		}
		ctx := ctxFor(t)
		for _, ref := range []string{"img-missing", "../escape", ""} {
			if sb, err := snap.Fork(ctx, ref, e.spec(t)); !errors.Is(err, backend.ErrNotFound) {
				if sb != nil {
					sb.Destroy(ctx)
				}
				t.Errorf("fork of image %q: %v, want ErrNotFound", ref, err)
			}
			if err := snap.DeleteImage(ctx, ref); err != nil {
				t.Errorf("delete of missing image %q: %v", ref, err)
			}
		}
		sb := e.create(t, ctx)
		img, err := snap.Snapshot(ctx, sb)
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		if !backend.ValidRef(img.Ref) || img.SizeBytes <= 0 {
			t.Fatalf("image %+v: want a valid ref and a size", img)
		}
		if !hasImage(images(t, ctx, snap), img.Ref) {
			t.Fatalf("image %s not in ListImages", img.Ref)
		}
		fork, err := snap.Fork(ctx, img.Ref, e.spec(t))
		if err != nil {
			t.Fatalf("fork: %v", err)
		}
		defer fork.Destroy(context.Background())
		if err := fork.Ping(ctx); err != nil {
			t.Fatalf("ping the fork: %v", err)
		}
		if sb.Ping(ctx) != nil {
			t.Fatal("the snapshotted sandbox stopped")
		}
		for i := 0; i < 2; i++ {
			if err := snap.DeleteImage(ctx, img.Ref); err != nil {
				t.Fatalf("delete image (#%d): %v", i+1, err)
			}
		}
		if hasImage(images(t, ctx, snap), img.Ref) {
			t.Fatalf("image %s still listed after delete", img.Ref)
		}
		if f, err := snap.Fork(ctx, img.Ref, e.spec(t)); !errors.Is(err, backend.ErrNotFound) {
			if f != nil {
				f.Destroy(ctx)
			}
			t.Fatalf("fork of a deleted image: %v, want ErrNotFound", err)
		}
		if _, err := fork.Exec(ctx, trivial, nil); err != nil {
			t.Fatalf("the fork after its image was deleted: %v", err)
		}
	})
}

func (e *Env) kill(t *testing.T, ctx context.Context, sb backend.Sandbox) {
	t.Helper()
	if e.Kill != nil {
		e.Kill(t, sb)
		return
	}
	pid := sb.Info(ctx).PID
	if pid <= 0 {
		t.Fatal("no Env.Kill and Info reports no PID to kill")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func images(t *testing.T, ctx context.Context, snap backend.Snapshotter) []backend.Image {
	t.Helper()
	imgs, err := snap.ListImages(ctx)
	if err != nil {
		t.Fatalf("list images: %v", err)
	}
	return imgs
}

func hasImage(imgs []backend.Image, ref string) bool {
	for _, i := range imgs {
		if i.Ref == ref {
			return true
		}
	}
	return false
}
