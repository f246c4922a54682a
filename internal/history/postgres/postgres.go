// Package postgres implements history.Store (and the API keys' auth.Store and the
// agent loop's conversation store) on PostgreSQL through pgx, for cluster mode:
// several daemons share one history, so an agent's runs, snapshots and sandbox
// records outlive the node that ran them. The sqlite package is the single-host
// twin; both pass the same conformance suite (internal/history/storetest).
//
// # Schema
//
// The schema is created and upgraded by the migrations embedded from
// migrations/*.sql when Open is called (see migrate.go). Each is the PostgreSQL
// twin of the SQLite migration with the same version and name, and a test checks
// that every SQLite migration has one. Times are stored as unix nanoseconds in
// BIGINT columns, as in SQLite, because timestamptz keeps only microseconds and the
// contract promises nanoseconds. IDs are ordered bytewise (COLLATE "C"), as SQLite
// orders them, whatever the database's locale.
//
// # Durability and concurrency
//
// Every mutating method is one statement or one transaction, committed with the
// server's synchronous_commit (on by default: a nil return means durable). The store
// holds a pgxpool.Pool, so calls run in parallel; migrations take an advisory lock,
// so daemons starting together apply each migration once.
//
// The statements are shared with the sqlite store (internal/history/sqlstore), run
// on the pool through pgx's database/sql adapter; this package holds what is
// PostgreSQL's: connecting, the migrations and their lock, and the dialect.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/sqlstore"
)

// defaultMaxConns is the pool's size unless the URL sets pool_max_conns.
const defaultMaxConns = 16

// Store is a history.Store backed by PostgreSQL. Create it with Open.
type Store struct {
	// Store runs the logic shared with the sqlite store (runs, listing,
	// conversations) on db.
	*sqlstore.Store
	// db is pool seen through pgx's database/sql adapter: both share the pool's
	// connections. pool stays for Pool's users (internal/cluster).
	db   *sql.DB
	pool *pgxpool.Pool
}

var _ history.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or a libpq key=value
// string; pgxpool's pool_max_conns sets the pool's size, 16 by default) and applies
// any migrations it lacks. A database whose schema is newer
// than this binary's is refused. The context bounds connecting and migrating only.
func Open(ctx context.Context, url string) (*Store, error) {
	pool, err := connect(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, pool, len(migrations)); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open history database: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	return &Store{Store: sqlstore.New(db, dialect), db: db, pool: pool}, nil
}

// dialect is PostgreSQL's for the shared store.
var dialect = sqlstore.Dialect{
	Postgres: true,
	IsUnique: isUnique,
	IDOrder:  `id COLLATE "C"`,
	AbortRunning: `UPDATE runs SET
		status = ?, verdict = ?, exit_code = -1, completed_at = ?,
		duration_ms = GREATEST(0, (CAST(? AS BIGINT) - started_at) / 1000000),
		metadata = jsonb_set(metadata::jsonb, '{abort_reason}', to_jsonb(CAST(? AS TEXT)))::text
		WHERE status = ?`,
	ForUpdate: ` FOR UPDATE`,
}

// connect opens a pool on url and checks that the server answers.
func connect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	if url == "" {
		return nil, fmt.Errorf("open postgres: empty url: %w", history.ErrInvalid)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parse error may quote the URL, password included: say only what is wrong.
		return nil, fmt.Errorf("open postgres: malformed postgres_url (want postgres://user:password@host:port/db): %w", history.ErrInvalid)
	}
	if !strings.Contains(url, "pool_max_conns") {
		// pgxpool's default is max(4, CPUs); a daemon's concurrent runs, key checks
		// and heartbeats need more than that on a small host.
		cfg.MaxConns = defaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres %s: %w", Redact(url), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres %s: %w", Redact(url), err)
	}
	return pool, nil
}

// Pool returns the store's connection pool, for packages that keep their own tables
// in the same database (internal/cluster).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool. Closing twice is harmless.
func (s *Store) Close() error {
	s.db.Close()
	s.pool.Close()
	return nil
}

// isUnique reports whether err is a unique or primary-key violation.
func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// now is the store's clock.
func now() time.Time { return time.Now().UTC() }

// nanos is sqlstore.Nanos, for the migrations' applied_at.
func nanos(t time.Time) int64 { return sqlstore.Nanos(t) }
