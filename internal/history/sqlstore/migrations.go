package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Migration is one schema migration file. A migration's file name starts with its
// version, a positive integer, then '_': "0002_snapshots.sql". Each store embeds its
// own files (version N of the postgres store is the twin of SQLite's version N) and
// runs them its own way; an applied migration is never edited, only followed by a
// new one.
type Migration struct {
	Version int
	Name    string // file name
	SQL     string
}

// MustLoadMigrations is LoadMigrations for embedded files, which cannot be wrong at
// run time: it panics on an error.
func MustLoadMigrations(fsys fs.FS) []Migration {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		panic(err)
	}
	return ms
}

// LoadMigrations reads migrations/*.sql from fsys, ordered by version. Versions
// must be unique and run 1, 2, 3, ... without gaps, so that a missing file is
// caught at build time rather than skipped.
func LoadMigrations(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []Migration
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
		ms = append(ms, Migration{Version: v, Name: base, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions must be 1, 2, 3, ... with no gaps or duplicates)", m.Name, m.Version, i+1)
		}
	}
	return ms, nil
}

// NeedsApply reports whether a migration m must run, given the name recorded for
// its version (recorded false: none). A recorded placeholder, a
// "NNNN_reserved.sql" holding nothing but a comment that only reserved its version,
// is replaced by the real migration.
func NeedsApply(m Migration, recordedName string, recorded bool) bool {
	if !recorded {
		return true
	}
	return recordedName != m.Name && strings.HasSuffix(recordedName, "_reserved.sql")
}

// Migrator is what Migrate runs on: a *sql.DB, or a *sql.Conn holding a session
// lock.
type Migrator interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// Migrate creates the schema_migrations table (createTable, the dialect's CREATE
// TABLE IF NOT EXISTS) and applies ms[:upTo] that the database lacks, each in its
// own transaction together with its schema_migrations row, so a crash leaves the
// schema at some whole version. Whether a migration is recorded is read inside its
// transaction; the caller makes concurrent migrators wait (SQLite's BEGIN takes the
// write lock, PostgreSQL's caller holds an advisory lock). It fails, changing
// nothing, if the database records a version newer than ms knows.
func Migrate(ctx context.Context, db Migrator, d Dialect, createTable string, ms []Migration, upTo int) error {
	if _, err := db.ExecContext(ctx, createTable); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var current int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if current > len(ms) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", current, len(ms))
	}
	s := &Store{d: d}
	for _, m := range ms[:upTo] {
		if err := s.apply(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

// apply runs m unless it is already recorded.
func (s *Store) apply(ctx context.Context, db Migrator, m Migration) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %s: begin: %w", m.Name, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	var recorded string
	err = tx.QueryRowContext(ctx, s.q(`SELECT name FROM schema_migrations WHERE version = ?`), m.Version).Scan(&recorded)
	switch {
	case err == nil && !NeedsApply(m, recorded, true):
		return tx.Rollback()
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("migration %s: %w", m.Name, err)
	}
	// No arguments: PostgreSQL runs the file of several statements through the
	// simple protocol.
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return fmt.Errorf("migration %s: %w", m.Name, err)
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)
		ON CONFLICT (version) DO UPDATE SET name = excluded.name, applied_at = excluded.applied_at`),
		m.Version, m.Name, Nanos(now())); err != nil {
		return fmt.Errorf("migration %s: record: %w", m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %s: commit: %w", m.Name, err)
	}
	return nil
}
