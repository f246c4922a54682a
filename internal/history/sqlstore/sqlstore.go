// Package sqlstore is the history logic shared by the sqlite and postgres stores:
// runs, their listing and the agent loop's conversations, written once over
// database/sql. Each store opens its own *sql.DB (pragmas, pool settings,
// migrations) and describes its SQL dialect in a Dialect; the Store here runs every
// statement through it.
//
// Statements are written with '?' placeholders and rebound by the dialect
// (PostgreSQL's $n). Times are unix nanoseconds in integer columns, the zero time
// as 0; booleans are bound as Go bools (SQLite stores 0/1). Every mutating method
// is one statement or one transaction, so its durability is the database's commit.
package sqlstore

import (
	"database/sql"
	"strconv"
	"strings"
	"time"
)

// Dialect is what differs between the databases.
type Dialect struct {
	// Postgres rebinds '?' placeholders as $1, $2, … (outside quoted strings).
	Postgres bool
	// IsUnique reports whether err is a unique or primary-key violation.
	IsUnique func(error) bool
	// IDOrder is the expression ordering ids bytewise: "id" in SQLite,
	// `id COLLATE "C"` in PostgreSQL whatever the locale.
	IDOrder string
	// AbortRunning is the UPDATE of AbortRunning; its arguments are, in order,
	// the error status, the error verdict, the completion time twice (nanos), the
	// reason stored in metadata's abort_reason, and the running status.
	AbortRunning string
	// ForUpdate is appended to the SELECT that locks a conversation's row in
	// AppendMessages ("" where BEGIN already takes the write lock).
	ForUpdate string
}

// Store implements the shared part of history.Store over db. Create it with New;
// it does not own db (the caller closes it).
type Store struct {
	db *sql.DB
	d  Dialect
}

// New returns a Store running statements on db in dialect d.
func New(db *sql.DB, d Dialect) *Store {
	if d.IDOrder == "" {
		d.IDOrder = "id"
	}
	return &Store{db: db, d: d}
}

// q rebinds query's placeholders for the dialect.
func (s *Store) q(query string) string {
	if !s.d.Postgres {
		return query
	}
	return Rebind(query)
}

// newestFirst orders runs as the contract says: StartedAt, then ID, descending.
func (s *Store) newestFirst() string {
	return ` ORDER BY started_at DESC, ` + s.d.IDOrder + ` DESC`
}

func (s *Store) isUnique(err error) bool {
	return err != nil && s.d.IsUnique != nil && s.d.IsUnique(err)
}

// Rebind turns '?' placeholders into PostgreSQL's $1, $2, …, leaving quoted
// strings and identifiers alone.
func Rebind(query string) string {
	var (
		b     strings.Builder
		n     int
		quote byte
	)
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Nanos converts t to unix nanoseconds, with the zero time as 0.
func Nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromNanos is the inverse of Nanos; times are returned in UTC.
func FromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// now is the store's clock.
func now() time.Time { return time.Now().UTC() }

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}
