package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// migrationFS holds the schema migrations. A migration's file name starts
// with its version, a positive integer, then '_': "0002_snapshots.sql".
// Versions are applied in numeric order; an applied migration must never be
// edited, only followed by a new one.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

// migrations is migrationFS parsed and ordered by version.
var migrations = mustLoadMigrations(migrationFS)

type migration struct {
	version int
	name    string // file name
	sql     string
}

func mustLoadMigrations(fsys fs.FS) []migration {
	ms, err := loadMigrations(fsys)
	if err != nil {
		panic(err)
	}
	return ms
}

// loadMigrations reads migrations/*.sql from fsys. Versions must be unique
// and run 1, 2, 3, ... without gaps, so that a missing file is caught at
// build time rather than skipped.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []migration
	for _, name := range names {
		base := path.Base(name)
		prefix, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive version and '_'", base)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", base, err)
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions must be 1, 2, 3, ... with no gaps or duplicates)", m.name, m.version, i+1)
		}
	}
	return ms, nil
}

// migrate applies migrations[:upTo] that the database lacks, each in its own
// transaction together with its row in schema_migrations, so a crash leaves
// the schema at some whole version. It fails if the database records a
// version this binary does not know.
func migrate(ctx context.Context, db *sql.DB, upTo int) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	) STRICT`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var current int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if current > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", current, len(migrations))
	}
	for _, m := range migrations[:upTo] {
		if err := apply(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

// isPlaceholder reports a migration file name that only reserved its version.
func isPlaceholder(name string) bool { return strings.HasSuffix(name, "_reserved.sql") }

// apply runs m unless it is already recorded. The check is inside the
// transaction, which takes the write lock at BEGIN, so two processes opening
// the same file cannot both apply it.
func apply(ctx context.Context, db *sql.DB, m migration) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %s: begin: %w", m.name, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	var recorded string
	err = tx.QueryRowContext(ctx, `SELECT name FROM schema_migrations WHERE version = ?`, m.version).Scan(&recorded)
	switch {
	case err == nil && (recorded == m.name || !isPlaceholder(recorded)):
		return tx.Rollback()
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("migration %s: %w", m.name, err)
	}
	// Not applied yet, or applied only as a placeholder that reserved its version
	// (a "NNNN_reserved.sql" holding nothing but a comment): apply the real one.
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return fmt.Errorf("migration %s: %w", m.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)
		ON CONFLICT (version) DO UPDATE SET name = excluded.name, applied_at = excluded.applied_at`,
		m.version, m.name, nanos(now())); err != nil {
		return fmt.Errorf("migration %s: record: %w", m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %s: commit: %w", m.name, err)
	}
	return nil
}
