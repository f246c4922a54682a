package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// runsColumns is the runs table as 0001 creates it.
var runsColumns = []string{
	"id", "agent_id", "sandbox_id", "language", "code", "status", "verdict", "exit_code",
	"stdout", "stderr", "stdout_truncated", "stderr_truncated", "blocked_rule", "blocked_reason",
	"pre_snapshot_id", "failure_snapshot_id", "restored_snapshot_id", "rolled_back",
	"started_at", "completed_at", "duration_ms", "metadata",
}

// migrationSteps is the schema expected after each migration, cumulative.
// Keys are "table NAME" (its columns) and "index NAME" (its table, then its
// columns). A new migration needs a new entry; TestMigrationSteps fails until
// it has one.
var migrationSteps = []struct {
	file   string
	schema map[string][]string
}{
	{
		file: "0001_runs.sql",
		schema: map[string][]string{
			"table runs":                 runsColumns,
			"index runs_agent_started":   {"runs", "agent_id", "started_at", "id"},
			"index runs_sandbox_started": {"runs", "sandbox_id", "started_at", "id"},
			"index runs_started":         {"runs", "started_at", "id"},
			"index runs_running":         {"runs", "status"},
		},
	},
	{
		file: "0002_snapshots.sql",
		schema: map[string][]string{
			"table snapshots": {
				"id", "sandbox_id", "agent_id", "name", "description", "kind", "run_id",
				"path", "size_bytes", "pinned", "created_at",
			},
			"index snapshots_sandbox_created": {"snapshots", "sandbox_id", "created_at", "id"},
		},
	},
	{
		file: "0003_rollbacks.sql",
		schema: map[string][]string{
			"table rollbacks":            {"id", "sandbox_id", "agent_id", "snapshot_id", "reason", "run_id", "at"},
			"index rollbacks_sandbox_at": {"rollbacks", "sandbox_id", "at", "id"},
		},
	},
	{
		file: "0004_sandboxes_agents.sql",
		schema: map[string][]string{
			"table sandboxes":       {"id", "agent_id", "name", "backend", "memory_mb", "created_at"},
			"index sandboxes_agent": {"sandboxes", "agent_id"},
			"table agents":          {"id", "policy", "updated_at"},
		},
	},
	{
		file: "0005_sandbox_state.sql",
		schema: map[string][]string{
			"table sandboxes": {"id", "agent_id", "name", "backend", "memory_mb", "created_at", "current_snapshot", "head_run"},
			"table snapshots": {
				"id", "sandbox_id", "agent_id", "name", "description", "kind", "run_id",
				"path", "size_bytes", "pinned", "created_at", "state_run",
			},
		},
	},
	{
		file: "0006_keys.sql",
		schema: map[string][]string{
			"table api_keys": {"id", "name", "hash", "admin", "agents", "rate", "max_sandboxes", "max_runs",
				"created_at", "last_used_at", "revoked_at"},
			"index api_keys_live_name": {"api_keys", "name"},
			"table runs":               append(slices.Clone(runsColumns), "key_name"),
		},
	},
	{
		file: "0007_conversations.sql",
		schema: map[string][]string{
			"table conversations":         {"id", "agent_id", "created_at", "updated_at"},
			"index conversations_agent":   {"conversations", "agent_id", "updated_at"},
			"table conversation_messages": {"conversation_id", "seq", "role", "content", "tool_calls", "tool_call_id", "step", "run_ids", "created_at"},
		},
	},
	{
		file: "0008_changes.sql",
		schema: map[string][]string{
			"table runs": append(slices.Clone(runsColumns), "key_name", "changes", "changes_truncated", "changes_undone"),
		},
	},
}

// openRaw opens the database at path with the store's DSN but without
// migrating it.
func openRaw(t *testing.T, path string) *sql.DB {
	t.Helper()
	d, err := dsn(path)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", d)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// schemaOf describes the user tables and indexes of db, leaving out
// schema_migrations and SQLite's automatic indexes.
func schemaOf(t *testing.T, db *sql.DB) map[string][]string {
	t.Helper()
	rows, err := db.Query(`SELECT type, name, tbl_name FROM sqlite_schema
		WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' AND tbl_name != 'schema_migrations'`)
	if err != nil {
		t.Fatal(err)
	}
	type obj struct{ typ, name, table string }
	var objs []obj
	for rows.Next() {
		var o obj
		if err := rows.Scan(&o.typ, &o.name, &o.table); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, o := range objs {
		var cols []string
		q := `SELECT name FROM pragma_table_info(?) ORDER BY cid`
		if o.typ == "index" {
			cols = []string{o.table}
			q = `SELECT name FROM pragma_index_info(?) ORDER BY seqno`
		}
		crows, err := db.Query(q, o.name)
		if err != nil {
			t.Fatal(err)
		}
		for crows.Next() {
			var c string
			if err := crows.Scan(&c); err != nil {
				t.Fatal(err)
			}
			cols = append(cols, c)
		}
		if err := crows.Close(); err != nil {
			t.Fatal(err)
		}
		got[o.typ+" "+o.name] = cols
	}
	return got
}

func appliedVersions(t *testing.T, db *sql.DB) []int {
	t.Helper()
	rows, err := db.Query(`SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	return vs
}

// TestMigrationSteps guards each schema version: starting from an empty
// file, applying migrations one by one yields exactly the expected tables,
// columns and indexes at every step, and records the step.
func TestMigrationSteps(t *testing.T) {
	if len(migrationSteps) != len(migrations) {
		t.Fatalf("%d migrations embedded, %d described in migrationSteps: describe each new migration's schema", len(migrations), len(migrationSteps))
	}
	db := openRaw(t, filepath.Join(t.TempDir(), "history.db"))
	want := map[string][]string{}
	var wantVersions []int
	for i, step := range migrationSteps {
		t.Run(step.file, func(t *testing.T) {
			if migrations[i].Name != step.file {
				t.Fatalf("migration %d is %s, want %s", i+1, migrations[i].Name, step.file)
			}
			if err := migrate(context.Background(), db, i+1); err != nil {
				t.Fatalf("migrate to %d: %v", i+1, err)
			}
			for k, v := range step.schema {
				want[k] = v
			}
			if diff := cmp.Diff(want, schemaOf(t, db)); diff != "" {
				t.Errorf("schema after %s (-want +got):\n%s", step.file, diff)
			}
			wantVersions = append(wantVersions, i+1)
			if diff := cmp.Diff(wantVersions, appliedVersions(t, db)); diff != "" {
				t.Errorf("schema_migrations (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOpenIdempotent guards restarts: reopening a migrated database applies
// nothing again and keeps the data.
func TestOpenIdempotent(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	mustRecord(t, s, finishedRun("r1", "a", "sb", 1, history.VerdictOK))
	var firstApplied int64
	if err := s.db.QueryRow(`SELECT applied_at FROM schema_migrations WHERE version = 1`).Scan(&firstApplied); err != nil {
		t.Fatal(err)
	}
	wantSchema := schemaOf(t, s.db)
	s.Close()

	for i := 0; i < 2; i++ {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		var applied int64
		if err := s.db.QueryRow(`SELECT applied_at FROM schema_migrations WHERE version = 1`).Scan(&applied); err != nil {
			t.Fatal(err)
		}
		if applied != firstApplied {
			t.Errorf("migration 1 re-applied: applied_at %d, was %d", applied, firstApplied)
		}
		if got, want := len(appliedVersions(t, s.db)), len(migrations); got != want {
			t.Errorf("%d migrations recorded, want %d", got, want)
		}
		if diff := cmp.Diff(wantSchema, schemaOf(t, s.db)); diff != "" {
			t.Errorf("schema changed on reopen (-want +got):\n%s", diff)
		}
		if _, err := s.GetRun(ctx, "r1"); err != nil {
			t.Errorf("GetRun after reopen: %v", err)
		}
		s.Close()
	}
}

// TestOpenRejectsNewerSchema guards downgrades: an older binary refuses a
// database migrated by a newer one instead of writing to a schema it does
// not know.
func TestOpenRejectsNewerSchema(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	if _, err := s.db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future.sql', 0)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(ctx, path); err == nil {
		s.Close()
		t.Fatal("Open succeeded on a newer schema")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open error = %v, want one about a newer schema", err)
	}
}

// TestLoadMigrations guards the migration file naming rules.
func TestLoadMigrations(t *testing.T) {
	tests := []struct {
		name    string
		files   []string
		want    []int
		wantErr bool
	}{
		{"ordered numerically", []string{"10_j.sql", "2_b.sql", "1_a.sql", "3_c.sql", "4_d.sql", "5_e.sql", "6_f.sql", "7_g.sql", "8_h.sql", "9_i.sql"}, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, false},
		{"zero padded", []string{"0002_b.sql", "0001_a.sql"}, []int{1, 2}, false},
		{"gap", []string{"0001_a.sql", "0003_c.sql"}, nil, true},
		{"duplicate", []string{"0001_a.sql", "0001_b.sql"}, nil, true},
		{"no prefix", []string{"init.sql"}, nil, true},
		{"zero version", []string{"0000_a.sql"}, nil, true},
		{"none", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for _, f := range tt.files {
				fsys["migrations/"+f] = &fstest.MapFile{Data: []byte("SELECT 1;")}
			}
			ms, err := loadMigrations(fsys)
			if (err != nil) != tt.wantErr {
				t.Fatalf("loadMigrations err = %v, wantErr %v", err, tt.wantErr)
			}
			var got []int
			for _, m := range ms {
				got = append(got, m.Version)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("versions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPragmas guards the durability settings every connection runs with.
func TestPragmas(t *testing.T) {
	s, _ := openTest(t)
	tests := []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "1"}, // NORMAL
		{"foreign_keys", "1"},
		{"busy_timeout", "5000"},
	}
	for _, tt := range tests {
		var got string
		if err := s.db.QueryRow("PRAGMA " + tt.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tt.pragma, err)
		}
		if got != tt.want {
			t.Errorf("PRAGMA %s = %q, want %q", tt.pragma, got, tt.want)
		}
	}
}

// TestOpenBadPath guards the path check: names the driver would
// misinterpret are refused.
func TestOpenBadPath(t *testing.T) {
	for _, p := range []string{"", "/tmp/x.db?mode=ro", "file:x.db"} {
		if s, err := Open(context.Background(), p); !errors.Is(err, history.ErrInvalid) {
			if s != nil {
				s.Close()
			}
			t.Errorf("Open(%q) err = %v, want ErrInvalid", p, err)
		}
	}
}

// TestMigration5KeepsResumePoint guards upgrades: a sandbox recorded before 0005
// resumes from its newest snapshot that is not a failure's, as it did before.
func TestMigration5KeepsResumePoint(t *testing.T) {
	ctx := context.Background()
	db := openRaw(t, filepath.Join(t.TempDir(), "history.db"))
	if err := migrate(ctx, db, 4); err != nil {
		t.Fatal(err)
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO sandboxes (id, created_at) VALUES ('sb-a', 1), ('sb-empty', 1)`)
	for i, sn := range []struct{ id, kind string }{{"snap-1", "pre_run"}, {"snap-2", "suspend"}, {"snap-3", "failure"}} {
		exec(`INSERT INTO snapshots (id, sandbox_id, kind, path, created_at) VALUES (?, 'sb-a', ?, '/x', ?)`, sn.id, sn.kind, i+1)
	}
	if err := migrate(ctx, db, 5); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"sb-a": "snap-2", "sb-empty": ""} {
		var got string
		if err := db.QueryRowContext(ctx, `SELECT current_snapshot FROM sandboxes WHERE id = ?`, id).Scan(&got); err != nil || got != want {
			t.Errorf("%s: current_snapshot %q, %v; want %q", id, got, err, want)
		}
	}
}
