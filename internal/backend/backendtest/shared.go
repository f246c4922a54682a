package backendtest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/backend"
)

// sharedImages is the contract of backend.SharedImager (skipped for a backend that
// does not offer it): a shared image is found by its key, listed as shared, left in
// place by DeleteImage (so a sandbox's retention cannot remove it), forkable, saved
// again under the same reference, and removed only by DeleteShared.
func sharedImages(t *testing.T, e Env) {
	si, ok := e.Backend.(backend.SharedImager)
	snap, ok2 := e.Backend.(backend.Snapshotter)
	if !ok || !ok2 {
		t.Skipf("backend %s has no shared images", e.Backend.Name())
	}
	ctx := e.ctxFor(t)
	key := "conformance-" + strings.ReplaceAll(t.Name(), "/", "-")
	if _, err := si.SharedImage(ctx, key); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("shared image before any was saved: %v, want ErrNotFound", err)
	}
	sb := e.create(t, ctx)
	img, err := si.SaveShared(ctx, sb, key)
	if err != nil {
		t.Fatalf("save shared: %v", err)
	}
	defer si.DeleteShared(context.Background(), img.Ref)
	if !img.Shared || !backend.ValidRef(img.Ref) {
		t.Fatalf("saved image %+v: want a valid, shared ref", img)
	}
	found, err := si.SharedImage(ctx, key)
	if err != nil || found.Ref != img.Ref {
		t.Fatalf("shared image for its key: %+v, %v; want %s", found, err, img.Ref)
	}
	if err := snap.DeleteImage(ctx, img.Ref); err != nil {
		t.Fatalf("DeleteImage of a shared image: %v", err)
	}
	listedShared := false
	for _, i := range images(t, ctx, snap) {
		listedShared = listedShared || i.Ref == img.Ref && i.Shared
	}
	if !listedShared {
		t.Fatalf("shared image %s not listed as shared after DeleteImage", img.Ref)
	}
	fork, err := snap.Fork(ctx, img.Ref, e.spec(t))
	if err != nil {
		t.Fatalf("fork of the shared image: %v", err)
	}
	defer fork.Destroy(context.Background())
	if _, err := fork.Exec(ctx, trivial, nil); err != nil {
		t.Fatalf("exec in a fork of the shared image: %v", err)
	}
	again, err := si.SaveShared(ctx, sb, key)
	if err != nil || again.Ref != img.Ref {
		t.Fatalf("saving the same key again: %+v, %v; want ref %s", again, err, img.Ref)
	}
	if err := si.DeleteShared(ctx, img.Ref); err != nil {
		t.Fatal(err)
	}
	if _, err := si.SharedImage(ctx, key); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("shared image after DeleteShared: %v, want ErrNotFound", err)
	}
	if hasImage(images(t, ctx, snap), img.Ref) {
		t.Fatalf("shared image %s still listed after DeleteShared", img.Ref)
	}
}

// forksDiffer checks that two sandboxes forked from one image do not share their
// random state: the kernel's /dev/urandom and python's random module differ (the
// guest reseeds from the host's entropy on each new connection).
func forksDiffer(t *testing.T, e Env) {
	snap, ok := e.Backend.(backend.Snapshotter)
	if !ok {
		t.Skipf("backend %s has no snapshot capability", e.Backend.Name())
	}
	ctx := e.ctxFor(t)
	sb := e.create(t, ctx)
	img, err := snap.Snapshot(ctx, sb)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	defer snap.DeleteImage(context.Background(), img.Ref)
	const probe = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; python3 -c 'import random, uuid; print(random.random(), uuid.uuid4())'"
	var outs []string
	for i := 0; i < 2; i++ {
		f, err := snap.Fork(ctx, img.Ref, e.spec(t))
		if err != nil {
			t.Fatalf("fork %d: %v", i+1, err)
		}
		defer f.Destroy(context.Background())
		res := run(t, ctx, f, "bash", probe)
		outs = append(outs, string(res.Stdout))
	}
	a, b := strings.Fields(outs[0]), strings.Fields(outs[1])
	if len(a) != 3 || len(b) != 3 {
		t.Fatalf("probe output %q / %q", outs[0], outs[1])
	}
	for i, what := range []string{"/dev/urandom", "random.random", "uuid4"} {
		if a[i] == b[i] {
			t.Errorf("two forks of one image share %s: %s", what, a[i])
		}
	}
}
