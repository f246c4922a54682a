package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
)

// sqliteMigrations is where the SQLite store's migrations live, relative to this
// package (go test runs in the package's directory).
const sqliteMigrations = "../sqlite/migrations"

// TestEverySQLiteMigrationHasATwin guards the two stores from drifting apart: each
// SQLite migration has a PostgreSQL migration of the same file name, and there are
// no others. When it fails after a merge that added a SQLite migration, port it:
// write the PostgreSQL dialect of the same change under the same name (BIGINT for
// integers and unix-nanosecond times, BOOLEAN for 0/1 flags, DOUBLE PRECISION for
// REAL, no STRICT, COLLATE "C" on id in ordered indexes); TestMigrationsMatchSQLite
// then checks its tables, columns and indexes against SQLite's.
func TestEverySQLiteMigrationHasATwin(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(sqliteMigrations, "*.sql"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no SQLite migrations found in %s (%v)", sqliteMigrations, err)
	}
	var lite []string
	for _, p := range paths {
		lite = append(lite, filepath.Base(p))
	}
	pg := Migrations()
	have := map[string]bool{}
	for _, n := range pg {
		have[n] = true
	}
	for _, n := range lite {
		if !have[n] {
			t.Errorf("SQLite migration %s has no PostgreSQL twin: write internal/history/postgres/migrations/%s (the same change in PostgreSQL's dialect)", n, n)
		}
		delete(have, n)
	}
	for n := range have {
		t.Errorf("PostgreSQL migration %s has no SQLite original in %s: the two stores must share versions and names", n, sqliteMigrations)
	}
}

// TestMigrationsMatchSQLite guards each schema version on PostgreSQL: starting from
// an empty database, applying the migrations one by one yields, at every step, the
// same tables, columns (in order) and indexes (with their columns) as SQLite's
// migrations up to the same version, and records the step.
func TestMigrationsMatchSQLite(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	pool := rawPool(t, srv.NewDatabase(t))
	lite := openSQLite(t)
	for i, m := range migrations {
		t.Run(m.Name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(sqliteMigrations, m.Name))
			if err != nil {
				t.Fatalf("the SQLite original: %v", err)
			}
			if _, err := lite.Exec(string(b)); err != nil {
				t.Fatalf("SQLite %s: %v", m.Name, err)
			}
			if err := migrate(ctx, pool, i+1); err != nil {
				t.Fatalf("migrate to %d: %v", i+1, err)
			}
			if diff := cmp.Diff(sqliteSchema(t, lite), pgSchema(t, pool)); diff != "" {
				t.Errorf("schema after %s (-sqlite +postgres):\n%s", m.Name, diff)
			}
			if got := appliedVersions(t, pool); len(got) != i+1 || got[i] != i+1 {
				t.Errorf("schema_migrations holds %v after %s", got, m.Name)
			}
		})
	}
}

// TestUpgradeKeepsData guards upgrades: a database at an older version, with rows,
// opens at the current one with its rows intact, and 0005 gives an old sandbox the
// resume point it had (its newest snapshot that is not a failure's).
func TestUpgradeKeepsData(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	url := srv.NewDatabase(t)
	pool := rawPool(t, url)
	if err := migrate(ctx, pool, 4); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO sandboxes (id, created_at) VALUES ('sb-a', 1), ('sb-empty', 1)`,
		`INSERT INTO snapshots (id, sandbox_id, kind, path, created_at) VALUES ('snap-1', 'sb-a', 'pre_run', '/x', 1),
			('snap-2', 'sb-a', 'suspend', '/x', 2), ('snap-3', 'sb-a', 'failure', '/x', 3)`,
		`INSERT INTO runs (id, sandbox_id, status, verdict, started_at, metadata) VALUES ('r1', 'sb-a', 'done', 'ok', 5, '{"k":"v"}')`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatalf("Open an older schema: %v", err)
	}
	defer s.Close()
	sbs, err := s.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, sb := range sbs {
		got[sb.ID] = sb.CurrentSnapshotID
	}
	if diff := cmp.Diff(map[string]string{"sb-a": "snap-2", "sb-empty": ""}, got); diff != "" {
		t.Errorf("resume points after the upgrade (-want +got):\n%s", diff)
	}
	r, err := s.GetRun(ctx, "r1")
	if err != nil || r.Metadata["k"] != "v" || r.KeyName != "" || r.Changes != nil {
		t.Errorf("old run after the upgrade: %+v, %v", r, err)
	}
	if v := appliedVersions(t, pool); len(v) != len(migrations) {
		t.Errorf("versions after the upgrade: %v", v)
	}
}

// TestOpenConcurrently guards daemons starting together on one new database: all
// succeed and each migration is applied once.
func TestOpenConcurrently(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	url := srv.NewDatabase(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctx, url)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
		}
	}
	pool := rawPool(t, url)
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != len(migrations) {
		t.Errorf("schema_migrations has %d rows (%v), want %d", rows, err, len(migrations))
	}
}

// TestOpenRejectsNewerSchema guards downgrades: an older binary refuses a database
// migrated by a newer one instead of writing to a schema it does not know.
func TestOpenRejectsNewerSchema(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	url := srv.NewDatabase(t)
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, 'future.sql', 0)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(ctx, url); err == nil {
		s.Close()
		t.Fatal("Open succeeded on a newer schema")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open error = %v, want one about a newer schema", err)
	}
}

// TestOpenBadURL guards the operator's mistakes: a malformed URL is ErrInvalid, an
// unreachable server an error naming it, and neither message shows the password.
func TestOpenBadURL(t *testing.T) {
	ctx := context.Background()
	for _, url := range []string{"", "postgres://u:s3cret@[::1", "postgres://u:s3cret@127.0.0.1:1/db?connect_timeout=2"} {
		s, err := Open(ctx, url)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", url)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q) error shows the password: %v", url, err)
		}
		if strings.Contains(url, "127.0.0.1:1") {
			if !strings.Contains(err.Error(), "127.0.0.1:1") {
				t.Errorf("unreachable server: %v, want its address", err)
			}
		} else if !errors.Is(err, history.ErrInvalid) {
			t.Errorf("Open(%q) = %v, want ErrInvalid", url, err)
		}
	}
}

func rawPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func openSQLite(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "twin.db"))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// sqliteSchema describes db's tables (their columns) and indexes (their table, then
// columns), leaving out SQLite's automatic indexes.
func sqliteSchema(t *testing.T, db *sql.DB) map[string][]string {
	t.Helper()
	got := map[string][]string{}
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
	rows.Close()
	for _, o := range objs {
		q, cols := `SELECT name FROM pragma_table_info(?) ORDER BY cid`, []string{}
		if o.typ == "index" {
			q, cols = `SELECT name FROM pragma_index_info(?) ORDER BY seqno`, []string{o.table}
		}
		crows, err := db.Query(q, o.name)
		if err != nil {
			t.Fatal(err)
		}
		for crows.Next() {
			var c string
			crows.Scan(&c)
			cols = append(cols, c)
		}
		crows.Close()
		got[o.typ+" "+o.name] = cols
	}
	return got
}

// pgSchema describes the current schema in sqliteSchema's terms, leaving out the
// indexes that back primary keys and unique constraints (SQLite's automatic ones).
func pgSchema(t *testing.T, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	ctx := context.Background()
	got := map[string][]string{}
	rows, err := pool.Query(ctx, `SELECT table_name::text, array_agg(column_name::text ORDER BY ordinal_position)
		FROM information_schema.columns WHERE table_schema = current_schema() AND table_name <> 'schema_migrations'
		GROUP BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		var cols []string
		if err := rows.Scan(&name, &cols); err != nil {
			t.Fatal(err)
		}
		got["table "+name] = cols
	}
	rows.Close()
	rows, err = pool.Query(ctx, `SELECT i.relname::text, tb.relname::text,
		ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = tb.oid AND a.attnum = k.attnum ORDER BY k.ord)
		FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class tb ON tb.oid = x.indrelid
		JOIN pg_namespace n ON n.oid = tb.relnamespace
		WHERE n.nspname = current_schema() AND tb.relname <> 'schema_migrations'
		AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, table string
		var cols []string
		if err := rows.Scan(&name, &table, &cols); err != nil {
			t.Fatal(err)
		}
		got["index "+name] = append([]string{table}, cols...)
	}
	return got
}

func appliedVersions(t *testing.T, pool *pgxpool.Pool) []int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(fmt.Errorf("scan version: %w", err))
		}
		vs = append(vs, v)
	}
	return vs
}
