package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// testSnapshotCRUD guards the snapshot record's life: stored whole, replaced
// by a second Put (pinning), deleted once.
func testSnapshotCRUD(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	snap := history.Snapshot{
		ID: "snap-1", SandboxID: "sb", AgentID: "a", Name: "before deps", Description: "pip install",
		Kind: history.SnapshotPreRun, RunID: "run-1", Path: "/var/lib/vmexec/snap-1", SizeBytes: 1 << 30,
		CreatedAt: t0,
	}
	if err := s.PutSnapshot(ctx, snap); err != nil {
		t.Fatalf("PutSnapshot: %v", err)
	}
	got, err := s.GetSnapshot(ctx, "snap-1")
	if err != nil {
		t.Fatalf("GetSnapshot: %v", err)
	}
	if diff := cmp.Diff(snap, got); diff != "" {
		t.Errorf("GetSnapshot (-want +got):\n%s", diff)
	}

	snap.Pinned = true
	snap.Name = "renamed"
	if err := s.PutSnapshot(ctx, snap); err != nil {
		t.Fatalf("PutSnapshot again: %v", err)
	}
	if got, _ := s.GetSnapshot(ctx, "snap-1"); !cmp.Equal(snap, got) {
		t.Errorf("after second Put (-want +got):\n%s", cmp.Diff(snap, got))
	}

	if err := s.DeleteSnapshot(ctx, "snap-1"); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if _, err := s.GetSnapshot(ctx, "snap-1"); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("GetSnapshot after delete: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteSnapshot(ctx, "snap-1"); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("second DeleteSnapshot: err = %v, want ErrNotFound", err)
	}
}

// testPutSnapshotInvalid guards the required fields of a snapshot.
func testPutSnapshotInvalid(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	valid := history.Snapshot{ID: "s", SandboxID: "sb", Kind: history.SnapshotManual}
	tests := []struct {
		name   string
		mutate func(*history.Snapshot)
	}{
		{"empty id", func(s *history.Snapshot) { s.ID = "" }},
		{"empty sandbox", func(s *history.Snapshot) { s.SandboxID = "" }},
		{"empty kind", func(s *history.Snapshot) { s.Kind = "" }},
		{"unknown kind", func(s *history.Snapshot) { s.Kind = "nightly" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := valid
			tt.mutate(&snap)
			if err := s.PutSnapshot(ctx, snap); !errors.Is(err, history.ErrInvalid) {
				t.Errorf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

// testListSnapshotsOrder guards ListSnapshots: one sandbox's snapshots,
// oldest first, ties by ID, and a zero CreatedAt filled in with now.
func testListSnapshotsOrder(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	put := func(id, sb string, at time.Time) {
		t.Helper()
		if err := s.PutSnapshot(ctx, history.Snapshot{ID: id, SandboxID: sb, Kind: history.SnapshotManual, CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	put("c", "sb", t0.Add(2*time.Second))
	put("b", "sb", t0)
	put("a", "sb", t0.Add(2*time.Second))
	put("x", "other", t0.Add(time.Second))
	put("now", "sb", time.Time{})

	snaps, err := s.ListSnapshots(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sn := range snaps {
		got = append(got, sn.ID)
	}
	if diff := cmp.Diff([]string{"b", "a", "c", "now"}, got); diff != "" {
		t.Errorf("ListSnapshots order (-want +got):\n%s", diff)
	}
	if last := snaps[len(snaps)-1]; time.Since(last.CreatedAt) > time.Minute {
		t.Errorf("zero CreatedAt stored as %v, want now", last.CreatedAt)
	}
	empty, err := s.ListSnapshots(ctx, "none")
	if err != nil || empty == nil || len(empty) != 0 {
		t.Errorf("ListSnapshots(none) = %#v, %v; want empty slice", empty, err)
	}
}

// testRollbacks guards the rollback log: records round-trip, oldest first,
// per sandbox, with duplicate and incomplete records refused.
func testRollbacks(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	rb1 := history.Rollback{ID: "rb1", SandboxID: "sb", AgentID: "a", SnapshotID: "snap-1", Reason: "timeout", RunID: "run-1", At: t0.Add(time.Second)}
	rb2 := history.Rollback{ID: "rb2", SandboxID: "sb", SnapshotID: "snap-0", At: t0}
	rb3 := history.Rollback{ID: "rb3", SandboxID: "other", SnapshotID: "snap-9", At: t0}
	for _, rb := range []history.Rollback{rb1, rb2, rb3} {
		if err := s.RecordRollback(ctx, rb); err != nil {
			t.Fatalf("RecordRollback(%s): %v", rb.ID, err)
		}
	}
	got, err := s.ListRollbacks(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]history.Rollback{rb2, rb1}, got); diff != "" {
		t.Errorf("ListRollbacks (-want +got):\n%s", diff)
	}

	tests := []struct {
		name string
		rb   history.Rollback
		want error
	}{
		{"duplicate", rb1, history.ErrExists},
		{"empty id", history.Rollback{SandboxID: "sb", SnapshotID: "s"}, history.ErrInvalid},
		{"empty sandbox", history.Rollback{ID: "x", SnapshotID: "s"}, history.ErrInvalid},
		{"empty snapshot", history.Rollback{ID: "x", SandboxID: "sb"}, history.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.RecordRollback(ctx, tt.rb); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
