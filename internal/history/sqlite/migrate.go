package sqlite

import (
	"context"
	"database/sql"
	"embed"
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

// migrate applies migrations[:upTo] that the database lacks (see
// sqlstore.Migrate). Two processes opening the same file cannot both apply one:
// each migration's transaction takes the write lock at BEGIN (_txlock=immediate).
// It fails if the database records a version this binary does not know.
func migrate(ctx context.Context, db *sql.DB, upTo int) error {
	return sqlstore.Migrate(ctx, db, dialect, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	) STRICT`, migrations, upTo)
}
