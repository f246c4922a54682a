package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

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

// migrate applies migrations[:upTo] that the database lacks (see
// sqlstore.Migrate) under a session advisory lock, so that concurrent daemons do
// not race. It fails if the database records a version this binary does not know.
func migrate(ctx context.Context, pool *pgxpool.Pool, upTo int) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close() // gives its connections back to pool
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))

	return sqlstore.Migrate(ctx, conn, dialect, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    BIGINT NOT NULL PRIMARY KEY,
		name       TEXT   NOT NULL,
		applied_at BIGINT NOT NULL
	)`, migrations, upTo)
}
