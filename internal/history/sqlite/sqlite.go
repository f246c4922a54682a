// Package sqlite implements history.Store on a single SQLite file, using the
// pure-Go driver modernc.org/sqlite (no cgo).
//
// The database runs in WAL mode with synchronous=NORMAL: a committed change
// survives a crash of the process, and a power loss may lose the last
// commits but never leaves a torn row. Every mutating method is one
// statement or one transaction.
//
// The store holds one connection. SQLite admits one writer at a time anyway,
// and a single connection means goroutines queue in database/sql instead of
// failing with SQLITE_BUSY; busy_timeout covers other processes that open the
// same file.
//
// The schema is created and upgraded by the migrations embedded from
// migrations/*.sql when Open is called; see migrate.go.
//
// The statements themselves are shared with the postgres store
// (internal/history/sqlstore); this package holds what is SQLite's: opening the
// file with its pragmas, the migrations, and the dialect.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/sqlstore"
)

// busyTimeout is how long a statement waits for another process's lock
// before failing with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// Store is a history.Store backed by SQLite. Create it with Open.
type Store struct {
	// Store runs the logic shared with the postgres store (runs, listing,
	// conversations) on db.
	*sqlstore.Store
	db *sql.DB
}

var _ history.Store = (*Store)(nil)

// Open opens the database file at path, creating it if missing, and applies
// any migrations it lacks. The file's directory must exist. A path
// containing '?' is rejected, as is a database whose schema is newer than
// this binary's. The context bounds opening and migration only.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn, err := dsn(path)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open history database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)

	if err := migrate(ctx, db, len(migrations)); err != nil {
		db.Close()
		return nil, fmt.Errorf("open history database %s: %w", path, err)
	}
	return &Store{Store: sqlstore.New(db, dialect), db: db}, nil
}

// dialect is SQLite's for the shared store. ForUpdate is empty: _txlock=immediate
// makes BEGIN take the write lock.
var dialect = sqlstore.Dialect{
	IsUnique: isConstraint,
	IDOrder:  "id",
	AbortRunning: `UPDATE runs SET
		status = ?, verdict = ?, exit_code = -1, completed_at = ?,
		duration_ms = MAX(0, (? - started_at) / 1000000),
		metadata = json_set(metadata, '$.abort_reason', ?)
		WHERE status = ?`,
}

// dsn returns the driver name for path: the plain file name followed by the
// pragmas every connection runs. _txlock=immediate makes each transaction
// take the write lock at BEGIN, so a read-then-write transaction cannot fail
// with SQLITE_BUSY half-way.
func dsn(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("open history database: empty path: %w", history.ErrInvalid)
	}
	if strings.ContainsRune(path, '?') || strings.HasPrefix(path, "file:") {
		return "", fmt.Errorf("open history database %q: path must be a plain file name without '?': %w", path, history.ErrInvalid)
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode(), nil
}

// Close closes the database. Closing twice is harmless.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close history database: %w", err)
	}
	return nil
}

// isConstraint reports whether err is a primary-key or unique violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() {
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return true
	}
	return false
}

// now is the store's clock.
func now() time.Time { return time.Now().UTC() }

// nanos is sqlstore.Nanos, for the migrations' applied_at.
func nanos(t time.Time) int64 { return sqlstore.Nanos(t) }
