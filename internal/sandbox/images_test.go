package sandbox

import (
	"context"
	"errors"
	"sort"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// Guards crash safety now that snapshot images are the backend's: after a crash,
// Start deletes an image no record names (a crash between a snapshot and its record)
// and drops a record whose image is gone, and every other snapshot keeps its image.
// The lost image was the sandbox's current one, so its agent gets a fresh sandbox,
// not an error.
func TestImagesReconciledAtStart(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "im", "set x 1\nprint x", nil)
	manual, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "im", Name: "manual"})
	if err != nil {
		t.Fatal(err)
	}
	// A record without an image: the manual snapshot's image is lost.
	rec, err := h.hist.GetSnapshot(ctx, manual.ID)
	if err != nil {
		t.Fatal(err)
	}
	h.be.DeleteImage(ctx, rec.Path)
	// An image without a record.
	live := h.be.sandboxes()
	if len(live) != 1 {
		t.Fatalf("%d live fake sandboxes, want 1", len(live))
	}
	orphan, err := h.be.Snapshot(ctx, live[0])
	if err != nil {
		t.Fatal(err)
	}

	h2 := h.crash(t, nil, nil)
	if _, err := h2.hist.GetSnapshot(ctx, manual.ID); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("the record whose image is gone: %v, want it dropped", err)
	}
	imgs, err := h2.be.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk, recorded []string
	for _, img := range imgs {
		if img.Ref == orphan.Ref {
			t.Errorf("the image without a record (%s) survived the start", orphan.Ref)
		}
		onDisk = append(onDisk, img.Ref)
	}
	snaps, err := h2.hist.ListAllSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps {
		recorded = append(recorded, sn.Path)
	}
	sort.Strings(onDisk)
	sort.Strings(recorded)
	if len(recorded) == 0 || len(onDisk) != len(recorded) {
		t.Fatalf("images %v, recorded %v: want one image per record", onDisk, recorded)
	}
	for i := range onDisk {
		if onDisk[i] != recorded[i] {
			t.Fatalf("images %v, recorded %v: want one image per record", onDisk, recorded)
		}
	}
	if got := h2.run(t, "im", "print x", nil); got.Verdict != "ok" || got.Stdout != "\n" {
		t.Fatalf("after the crash: %s %q, want ok in a fresh sandbox (x unset)", got.Verdict, got.Stdout)
	}
}
