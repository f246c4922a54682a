package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/vmexec/vmexec/internal/history/sqlstore"
)

// migrationFS holds the schema migrations. A migration's file name starts
// with its version, a positive integer, then '_': "0002_snapshots.sql".
// Versions are applied in numeric order; an applied migration must never be
// edited, only followed by a new one.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

// migrations is migrationFS parsed and ordered by version.
var migrations = sqlstore.MustLoadMigrations(migrationFS)

// migration is one embedded migration file.
type migration = sqlstore.Migration

// loadMigrations reads and checks migrations/*.sql (see sqlstore.LoadMigrations).
func loadMigrations(fsys fs.FS) ([]migration, error) { return sqlstore.LoadMigrations(fsys) }

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

// apply runs m unless it is already recorded. The check is inside the
// transaction, which takes the write lock at BEGIN, so two processes opening
// the same file cannot both apply it.
func apply(ctx context.Context, db *sql.DB, m migration) (err error) {
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
	err = tx.QueryRowContext(ctx, `SELECT name FROM schema_migrations WHERE version = ?`, m.Version).Scan(&recorded)
	switch {
	case err == nil && !sqlstore.NeedsApply(m, recorded, true):
		return tx.Rollback()
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("migration %s: %w", m.Name, err)
	}
	// Not applied yet, or applied only as a placeholder that reserved its version
	// (a "NNNN_reserved.sql" holding nothing but a comment): apply the real one.
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return fmt.Errorf("migration %s: %w", m.Name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)
		ON CONFLICT (version) DO UPDATE SET name = excluded.name, applied_at = excluded.applied_at`,
		m.Version, m.Name, nanos(now())); err != nil {
		return fmt.Errorf("migration %s: record: %w", m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %s: commit: %w", m.Name, err)
	}
	return nil
}
