package storetest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// testRunRoundTrip guards that every field a run records comes back as
// written, through BeginRun and FinishRun.
func testRunRoundTrip(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)

	begin := history.Run{
		ID:            "run-1",
		AgentID:       "agent-1",
		SandboxID:     "sb-1",
		Language:      "python",
		Code:          "import sys\nprint('héllo')\nsys.exit(3)",
		Status:        "ignored: BeginRun sets running",
		Verdict:       "ignored",
		PreSnapshotID: "snap-pre",
		StartedAt:     t0,
		Metadata:      map[string]any{"model": "m1", "turn": "7"},
	}
	if err := s.BeginRun(ctx, begin); err != nil {
		t.Fatalf("BeginRun: %v", err)
	}
	wantRunning := begin
	wantRunning.Status = history.StatusRunning
	wantRunning.Verdict = ""
	got, err := s.GetRun(ctx, "run-1")
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	if diff := cmp.Diff(wantRunning, got); diff != "" {
		t.Errorf("after BeginRun (-want +got):\n%s", diff)
	}

	finish := history.Run{
		ID:                 "run-1",
		Status:             history.StatusDone,
		Verdict:            history.VerdictNonzeroExit,
		ExitCode:           3,
		Stdout:             "héllo\n",
		Stderr:             "boom",
		StdoutTruncated:    true,
		StderrTruncated:    true,
		FailureSnapshotID:  "snap-fail",
		RestoredSnapshotID: "snap-pre",
		RolledBack:         true,
		CompletedAt:        t0.Add(1234 * time.Millisecond),
		DurationMS:         1234,
		Changes: []history.Change{{Path: "/home/user/report.csv", Kind: "created", Type: "file", Size: 12288, Mode: 0o644},
			{Path: "/tmp/old.log", Kind: "deleted", Type: "file", Size: 3, Mode: 0o600}},
		ChangesTruncated: true,
		ChangesUndone:    true,
	}
	if err := s.FinishRun(ctx, finish); err != nil {
		t.Fatalf("FinishRun: %v", err)
	}
	want := wantRunning
	want.Status, want.Verdict, want.ExitCode = finish.Status, finish.Verdict, finish.ExitCode
	want.Stdout, want.Stderr = finish.Stdout, finish.Stderr
	want.StdoutTruncated, want.StderrTruncated = true, true
	want.FailureSnapshotID, want.RestoredSnapshotID, want.RolledBack = "snap-fail", "snap-pre", true
	want.CompletedAt, want.DurationMS = finish.CompletedAt, 1234
	want.Changes, want.ChangesTruncated, want.ChangesUndone = finish.Changes, true, true
	got, err = s.GetRun(ctx, "run-1")
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after FinishRun (-want +got):\n%s", diff)
	}
	if got.StartedAt.Location() != time.UTC {
		t.Errorf("StartedAt location = %v, want UTC", got.StartedAt.Location())
	}
}

// testFinishRunOverwrites guards FinishRun's field rules: identity fields
// stay as BeginRun wrote them, non-empty snapshot IDs and metadata replace
// the stored ones, and a zero CompletedAt is filled in.
func testFinishRunOverwrites(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	if err := s.BeginRun(ctx, history.Run{ID: "r", SandboxID: "sb", AgentID: "a", Code: "x", StartedAt: t0,
		PreSnapshotID: "p1", Metadata: map[string]any{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := s.FinishRun(ctx, history.Run{ID: "r", SandboxID: "other", AgentID: "other", Code: "other",
		StartedAt: t0.Add(time.Hour), Status: history.StatusError, Verdict: history.VerdictError,
		PreSnapshotID: "p2", Metadata: map[string]any{"k2": "v2"}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRun(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if got.SandboxID != "sb" || got.AgentID != "a" || got.Code != "x" || !got.StartedAt.Equal(t0) {
		t.Errorf("identity fields changed: %+v", got)
	}
	if got.PreSnapshotID != "p2" {
		t.Errorf("PreSnapshotID = %q, want p2", got.PreSnapshotID)
	}
	if diff := cmp.Diff(map[string]any{"k2": "v2"}, got.Metadata); diff != "" {
		t.Errorf("Metadata (-want +got):\n%s", diff)
	}
	if got.CompletedAt.Before(before.Add(-time.Second)) {
		t.Errorf("CompletedAt = %v, want about now", got.CompletedAt)
	}
}

// testRunErrors guards the error classes callers branch on.
func testRunErrors(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	if err := s.BeginRun(ctx, history.Run{ID: "exists", SandboxID: "sb"}); err != nil {
		t.Fatal(err)
	}
	done := func(id string) history.Run {
		return history.Run{ID: id, SandboxID: "sb", Status: history.StatusDone, Verdict: history.VerdictOK}
	}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"begin empty id", func() error { return s.BeginRun(ctx, history.Run{SandboxID: "sb"}) }, history.ErrInvalid},
		{"begin empty sandbox", func() error { return s.BeginRun(ctx, history.Run{ID: "x"}) }, history.ErrInvalid},
		{"begin duplicate", func() error { return s.BeginRun(ctx, history.Run{ID: "exists", SandboxID: "sb"}) }, history.ErrExists},
		{"record duplicate", func() error { return s.RecordRun(ctx, done("exists")) }, history.ErrExists},
		{"record running", func() error {
			r := done("y")
			r.Status = history.StatusRunning
			return s.RecordRun(ctx, r)
		}, history.ErrInvalid},
		{"record unknown status", func() error {
			r := done("y")
			r.Status = "finished"
			return s.RecordRun(ctx, r)
		}, history.ErrInvalid},
		{"record no verdict", func() error {
			r := done("y")
			r.Verdict = ""
			return s.RecordRun(ctx, r)
		}, history.ErrInvalid},
		{"finish missing", func() error { return s.FinishRun(ctx, done("missing")) }, history.ErrNotFound},
		{"finish empty id", func() error { return s.FinishRun(ctx, done("")) }, history.ErrInvalid},
		{"finish as running", func() error {
			r := done("exists")
			r.Status = history.StatusRunning
			return s.FinishRun(ctx, r)
		}, history.ErrInvalid},
		{"get missing", func() error { _, err := s.GetRun(ctx, "missing"); return err }, history.ErrNotFound},
		{"prune negative", func() error { return s.PruneRuns(ctx, "sb", -1) }, history.ErrInvalid},
		{"list bad cursor", func() error {
			_, _, err := s.ListRuns(ctx, history.RunFilter{Cursor: "not a cursor!"})
			return err
		}, history.ErrInvalid},
		{"list cursor without id", func() error {
			_, _, err := s.ListRuns(ctx, history.RunFilter{Cursor: base64.RawURLEncoding.EncodeToString([]byte("1:"))})
			return err
		}, history.ErrInvalid},
		{"last successful none", func() error { _, err := s.LastSuccessfulRun(ctx, "sb"); return err }, history.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// A refused duplicate must not have changed the stored row.
	r, err := s.GetRun(ctx, "exists")
	if err != nil || r.Status != history.StatusRunning {
		t.Errorf("existing run after refused writes: %+v, %v", r, err)
	}
}

// testRecordRunDefaults guards one-step records: times default sensibly and
// the row is complete at once.
func testRecordRunDefaults(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	before := time.Now().Add(-time.Second)
	blocked := history.Run{ID: "b", SandboxID: "sb", Code: "rm -rf /", Status: history.StatusBlocked,
		Verdict: history.VerdictBlocked, BlockedRule: "fs.destructive", BlockedReason: "deletes root"}
	if err := s.RecordRun(ctx, blocked); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRun(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if got.StartedAt.Before(before) || !got.CompletedAt.Equal(got.StartedAt) {
		t.Errorf("StartedAt %v, CompletedAt %v: want now, equal", got.StartedAt, got.CompletedAt)
	}
	blocked.StartedAt, blocked.CompletedAt = got.StartedAt, got.CompletedAt
	if diff := cmp.Diff(blocked, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// testListRunsFilters guards each filter of ListRuns and CountRuns, alone
// and combined, and the newest-first order.
func testListRunsFilters(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	mustRecord(t, s,
		finishedRun("r1", "a1", "sb1", 1, history.VerdictOK),
		finishedRun("r2", "a1", "sb1", 2, history.VerdictNonzeroExit),
		finishedRun("r3", "a2", "sb2", 3, history.VerdictTimeout),
		finishedRun("r4", "a2", "sb1", 4, history.VerdictOK),
		finishedRun("r5", "a1", "sb2", 5, history.VerdictBlocked),
	)
	// A running run is never a failure.
	if err := s.BeginRun(ctx, history.Run{ID: "r6", AgentID: "a1", SandboxID: "sb1", StartedAt: t0.Add(6 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	tests := []struct {
		name   string
		filter history.RunFilter
		want   []string
	}{
		{"all", history.RunFilter{}, []string{"r6", "r5", "r4", "r3", "r2", "r1"}},
		{"agent", history.RunFilter{AgentID: "a1"}, []string{"r6", "r5", "r2", "r1"}},
		{"sandbox", history.RunFilter{SandboxID: "sb2"}, []string{"r5", "r3"}},
		{"agent and sandbox", history.RunFilter{AgentID: "a2", SandboxID: "sb1"}, []string{"r4"}},
		{"failures only", history.RunFilter{FailuresOnly: true}, []string{"r5", "r3", "r2"}},
		{"failures of agent", history.RunFilter{FailuresOnly: true, AgentID: "a1"}, []string{"r5", "r2"}},
		{"since inclusive", history.RunFilter{Since: at(4)}, []string{"r6", "r5", "r4"}},
		{"until exclusive", history.RunFilter{Until: at(3)}, []string{"r2", "r1"}},
		{"range", history.RunFilter{Since: at(2), Until: at(5)}, []string{"r4", "r3", "r2"}},
		{"range in other zone", history.RunFilter{Since: at(2).In(time.FixedZone("x", 3600)), Until: at(5)}, []string{"r4", "r3", "r2"}},
		{"no match", history.RunFilter{AgentID: "nobody"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runs, next, err := s.ListRuns(ctx, tt.filter)
			if err != nil {
				t.Fatalf("ListRuns: %v", err)
			}
			if diff := cmp.Diff(tt.want, ids(runs)); diff != "" {
				t.Errorf("ListRuns (-want +got):\n%s", diff)
			}
			if next != "" {
				t.Errorf("next = %q for a single page", next)
			}
			n, err := s.CountRuns(ctx, tt.filter)
			if err != nil {
				t.Fatalf("CountRuns: %v", err)
			}
			if n != len(tt.want) {
				t.Errorf("CountRuns = %d, want %d", n, len(tt.want))
			}
		})
	}
}

// testListRunsPagination guards paging: following cursors visits every
// matching run exactly once, newest first, even across runs that share a
// start time and runs inserted mid-way.
func testListRunsPagination(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	const n = 57
	var want []string
	for i := n - 1; i >= 0; i-- {
		want = append(want, fmt.Sprintf("r%03d", i))
	}
	for _, limit := range []int{1, 10, 25} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			s, _ := openTest(t, newDB)
			for i := 0; i < n; i++ {
				// Pairs of runs share a start time, so the ID breaks ties.
				mustRecord(t, s, finishedRun(fmt.Sprintf("r%03d", i), "a", "sb", i/2, history.VerdictOK))
			}
			mustRecord(t, s, finishedRun("other", "a", "other-sb", 100, history.VerdictOK))

			f := history.RunFilter{SandboxID: "sb", Limit: limit}
			var got []string
			pages := 0
			for {
				runs, next, err := s.ListRuns(ctx, f)
				if err != nil {
					t.Fatalf("page %d: %v", pages, err)
				}
				pages++
				if len(runs) > limit {
					t.Fatalf("page %d has %d runs, limit %d", pages, len(runs), limit)
				}
				got = append(got, ids(runs)...)
				if pages == 2 {
					// A newer run arriving mid-way must not shift the pages.
					mustRecord(t, s, finishedRun("late", "a", "sb", 200, history.VerdictOK))
				}
				if next == "" {
					break
				}
				f.Cursor = next
				if pages > n+1 {
					t.Fatal("pagination does not end")
				}
			}
			if pages < 3 {
				t.Errorf("only %d pages", pages)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("runs across pages (-want +got):\n%s", diff)
			}
		})
	}
}

// testListRunsLimit guards the page size bounds.
func testListRunsLimit(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	for i := 0; i < history.MaxListLimit+5; i++ {
		mustRecord(t, s, finishedRun(fmt.Sprintf("r%04d", i), "a", "sb", i, history.VerdictOK))
	}
	tests := []struct {
		limit, want int
	}{
		{0, history.DefaultListLimit},
		{-3, history.DefaultListLimit},
		{7, 7},
		{history.MaxListLimit + 100, history.MaxListLimit},
	}
	for _, tt := range tests {
		runs, next, err := s.ListRuns(ctx, history.RunFilter{Limit: tt.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != tt.want || next == "" {
			t.Errorf("Limit %d: %d runs, next %q; want %d runs and a cursor", tt.limit, len(runs), next, tt.want)
		}
	}
}

// testAbortRunning guards crash recovery: every in-flight run is closed as
// an error with the reason kept and exit code -1 (a run cut off by a crash
// never exited 0), and finished runs are untouched.
func testAbortRunning(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	ok := finishedRun("done", "a", "sb", 0, history.VerdictOK)
	mustRecord(t, s, ok)
	for i, id := range []string{"inflight1", "inflight2"} {
		r := history.Run{ID: id, SandboxID: "sb", StartedAt: t0.Add(time.Duration(i) * time.Second)}
		if i == 0 {
			r.Metadata = map[string]any{"model": "m"}
		}
		if err := s.BeginRun(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.AbortRunning(ctx, "daemon restarted")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("AbortRunning = %d, want 2", n)
	}
	for _, id := range []string{"inflight1", "inflight2"} {
		r, err := s.GetRun(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != history.StatusError || r.Verdict != history.VerdictError || r.ExitCode != -1 || r.CompletedAt.IsZero() || r.DurationMS <= 0 {
			t.Errorf("%s after abort: status %q verdict %q exit %d completed %v duration %d", id, r.Status, r.Verdict, r.ExitCode, r.CompletedAt, r.DurationMS)
		}
		if r.Metadata["abort_reason"] != "daemon restarted" {
			t.Errorf("%s metadata = %v, want abort_reason", id, r.Metadata)
		}
	}
	if r, _ := s.GetRun(ctx, "inflight1"); r.Metadata["model"] != "m" {
		t.Errorf("abort lost existing metadata: %v", r.Metadata)
	}
	if got, _ := s.GetRun(ctx, "done"); !cmp.Equal(ok, got) {
		t.Errorf("finished run changed: %s", cmp.Diff(ok, got))
	}
	if n, err := s.AbortRunning(ctx, "again"); err != nil || n != 0 {
		t.Errorf("second AbortRunning = %d, %v; want 0, nil", n, err)
	}
}

// testPruneRuns guards retention: the newest runs of the sandbox stay, other
// sandboxes and in-flight runs are untouched.
func testPruneRuns(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	tests := []struct {
		name string
		keep int
		want []string
	}{
		{"keep 0", 0, []string{"live"}},
		{"keep 2", 2, []string{"live", "r4"}},
		{"keep 3", 3, []string{"live", "r4", "r3"}},
		{"keep more than exist", 10, []string{"live", "r4", "r3", "r2", "r1", "r0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t, newDB)
			for i := 0; i < 5; i++ {
				mustRecord(t, s, finishedRun(fmt.Sprintf("r%d", i), "a", "sb", i, history.VerdictOK))
			}
			mustRecord(t, s, finishedRun("keepme", "a", "other", 0, history.VerdictOK))
			if err := s.BeginRun(ctx, history.Run{ID: "live", SandboxID: "sb", StartedAt: t0.Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			if err := s.PruneRuns(ctx, "sb", tt.keep); err != nil {
				t.Fatal(err)
			}
			runs, _, err := s.ListRuns(ctx, history.RunFilter{SandboxID: "sb"})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, ids(runs)); diff != "" {
				t.Errorf("after PruneRuns (-want +got):\n%s", diff)
			}
			if _, err := s.GetRun(ctx, "keepme"); err != nil {
				t.Errorf("other sandbox pruned: %v", err)
			}
		})
	}
}

// testLastSuccessfulRun guards the rollback target: the newest ok run of the
// sandbox, ignoring failures, running rows and other sandboxes.
func testLastSuccessfulRun(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	mustRecord(t, s,
		finishedRun("old-ok", "a", "sb", 1, history.VerdictOK),
		finishedRun("new-ok", "a", "sb", 2, history.VerdictOK),
		finishedRun("failed", "a", "sb", 3, history.VerdictNonzeroExit),
		finishedRun("other-ok", "a", "other", 4, history.VerdictOK),
	)
	if err := s.BeginRun(ctx, history.Run{ID: "live", SandboxID: "sb", StartedAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	r, err := s.LastSuccessfulRun(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "new-ok" {
		t.Errorf("LastSuccessfulRun = %s, want new-ok", r.ID)
	}
	if _, err := s.LastSuccessfulRun(ctx, "empty"); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("no runs: err = %v, want ErrNotFound", err)
	}
}
