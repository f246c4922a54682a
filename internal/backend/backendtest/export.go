package backendtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/vmexec/vmexec/internal/backend"
)

// RunExport checks backend.ImageExporter, for a backend that declares it: an image
// exported, deleted, and imported (into the peer's scope when there is one, as
// another daemon would) starts a sandbox with the files and a process's memory it
// was taken with; a truncated stream imports nothing; ImageCompat describes the host.
// Run calls it in the guest tier.
func RunExport(t *testing.T, e Env) {
	e.defaults()
	exp, ok := e.Backend.(backend.ImageExporter)
	if !ok {
		t.Skipf("backend %s cannot export images", e.Backend.Name())
	}
	snap := e.Backend.(backend.Snapshotter)
	ctx := e.ctxFor(t)

	compat, err := exp.ImageCompat(ctx)
	if err != nil {
		t.Fatalf("image compat: %v", err)
	}
	if compat.Backend != e.Backend.Name() || compat.Version == "" {
		t.Fatalf("image compat %+v: want the backend's name and its runtime's version", compat)
	}
	if err := compat.Check(compat); err != nil {
		t.Fatalf("a host is not compatible with itself: %v", err)
	}

	sb := e.create(t, ctx)
	wantOut(t, run(t, ctx, sb, "bash", MemStart), "0")
	wantOut(t, run(t, ctx, sb, "bash", "echo exported > ~/e.txt\n"+MemBump), "1")
	img, err := snap.Snapshot(ctx, sb)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "export-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := exp.ExportImage(ctx, img.Ref, f); err != nil {
		t.Fatalf("export: %v", err)
	}
	if err := snap.DeleteImage(ctx, img.Ref); err != nil {
		t.Fatal(err)
	}
	if err := exp.ExportImage(ctx, img.Ref, io.Discard); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("export of a deleted image: %v, want ErrNotFound", err)
	}

	into, intoSnap := exp, snap // another scope when there is one
	target := e.Backend
	if p, ok := e.Peer.(backend.ImageExporter); ok {
		into, intoSnap, target = p, e.Peer.(backend.Snapshotter), e.Peer
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	f.Seek(0, io.SeekStart)
	before := len(images(t, ctx, intoSnap))
	if _, err := into.ImportImage(ctx, io.LimitReader(f, size/2)); err == nil {
		t.Fatal("import of a truncated export succeeded")
	}
	if n := len(images(t, ctx, intoSnap)); n != before {
		t.Fatalf("a failed import left an image (%d images, %d before)", n, before)
	}
	f.Seek(0, io.SeekStart)
	imported, err := into.ImportImage(ctx, f)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	defer intoSnap.DeleteImage(context.Background(), imported.Ref)
	if !hasImage(images(t, ctx, intoSnap), imported.Ref) || imported.SizeBytes <= 0 {
		t.Fatalf("imported image %+v not listed, or without a size", imported)
	}
	sp := e.spec(t)
	restored, err := intoSnap.Fork(ctx, imported.Ref, sp)
	if err != nil {
		t.Fatalf("fork of the imported image on %s: %v", target.Name(), err)
	}
	defer restored.Destroy(context.Background())
	wantOut(t, run(t, ctx, restored, "bash", "cat ~/e.txt"), "exported")
	wantOut(t, run(t, ctx, restored, "bash", MemRead), "1")
	wantOut(t, run(t, ctx, restored, "bash", MemBump), "2") // the process still runs

	// A garbage stream is refused.
	if _, err := into.ImportImage(ctx, bytes.NewReader([]byte("not an image"))); err == nil {
		t.Fatal("import of garbage succeeded")
	}
}
