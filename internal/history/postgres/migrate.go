package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/internal/history/sqlstore"
)

// migrationFS holds the schema migrations, named and numbered as the SQLite
// store's ("0002_snapshots.sql"): version N here is the PostgreSQL twin of SQLite's
// version N. Versions are applied in order; an applied migration is never edited,
// only followed by a new one.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

var migrations = sqlstore.MustLoadMigrations(migrationFS)

// migrationLock is the advisory lock key that serializes migrators ("vmexec" in
// ASCII, as a number).
const migrationLock = 0x766d65786563

// migration is one embedded migration file.
type migration = sqlstore.Migration

// loadMigrations reads and checks migrations/*.sql (see sqlstore.LoadMigrations).
func loadMigrations(fsys fs.FS) ([]migration, error) { return sqlstore.LoadMigrations(fsys) }

// Migrations returns the names of the embedded migrations, in order.
func Migrations() []string {
	out := make([]string, len(migrations))
	for i, m := range migrations {
		out[i] = m.Name
	}
	return out
}

// migrate applies migrations[:upTo] that the database lacks, each in its own
// transaction with its schema_migrations row, under a session advisory lock so that
// concurrent daemons do not race. It fails if the database records a version this
// binary does not know.
func migrate(ctx context.Context, pool *pgxpool.Pool, upTo int) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    BIGINT NOT NULL PRIMARY KEY,
		name       TEXT   NOT NULL,
		applied_at BIGINT NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	current, err := schemaVersion(ctx, conn.Conn())
	if err != nil {
		return err
	}
	if current > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", current, len(migrations))
	}
	for _, m := range migrations[:upTo] {
		if err := apply(ctx, conn.Conn(), m); err != nil {
			return err
		}
	}
	return nil
}

// schemaVersion returns the newest applied version (0 for none).
func schemaVersion(ctx context.Context, c *pgx.Conn) (int, error) {
	var v int
	if err := c.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// apply runs m unless it is recorded already (a recorded placeholder is replaced by
// the real migration, as in the SQLite store).
func apply(ctx context.Context, c *pgx.Conn, m migration) error {
	var recorded string
	err := c.QueryRow(ctx, `SELECT name FROM schema_migrations WHERE version = $1`, m.Version).Scan(&recorded)
	switch {
	case err == nil && !sqlstore.NeedsApply(m, recorded, true):
		return nil
	case err != nil && !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("migration %s: %w", m.Name, err)
	}
	return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		// No arguments: the simple protocol, which runs a file of several statements.
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return fmt.Errorf("migration %s: %w", m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)
			ON CONFLICT (version) DO UPDATE SET name = excluded.name, applied_at = excluded.applied_at`,
			m.Version, m.Name, nanos(now())); err != nil {
			return fmt.Errorf("migration %s: record: %w", m.Name, err)
		}
		return nil
	})
}
