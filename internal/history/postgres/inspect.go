package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Inspection is what `vmexec doctor` reports about a PostgreSQL database, read
// without changing it.
type Inspection struct {
	// ServerVersion is the server's version string ("15.18 (Debian ...)").
	ServerVersion string
	// SchemaVersion is the newest migration applied (0: none; the first daemon to
	// start applies them); Known is this binary's newest.
	SchemaVersion, Known int
	// ClockSkew is the server's clock minus this host's, measured at the middle of
	// the round trip. Ownership and node readiness compare times written by
	// different hosts, so a large skew makes a live node look dead.
	ClockSkew time.Duration
	// CanCreate says whether the user may create tables in the current schema
	// (needed for migrations).
	CanCreate bool
	// User and Database are who and where the connection is.
	User, Database string
}

// Inspect connects to url and reads what doctor checks. An error means the server
// could not be reached or queried; the message says which, without the password.
func Inspect(ctx context.Context, url string) (Inspection, error) {
	pool, err := connect(ctx, url)
	if err != nil {
		return Inspection{}, err
	}
	defer pool.Close()
	var in Inspection
	in.Known = len(migrations)
	before := time.Now()
	var serverNow time.Time
	if err := pool.QueryRow(ctx, `SELECT version(), clock_timestamp(), current_user, current_database(),
		has_schema_privilege(current_schema(), 'CREATE')`).Scan(&in.ServerVersion, &serverNow, &in.User, &in.Database, &in.CanCreate); err != nil {
		return in, fmt.Errorf("query postgres: %w", err)
	}
	after := time.Now()
	in.ClockSkew = serverNow.Sub(before.Add(after.Sub(before) / 2))
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return in, fmt.Errorf("query postgres: %w", err)
	}
	if exists {
		if err := pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&in.SchemaVersion); err != nil {
			return in, fmt.Errorf("read schema version: %w", err)
		}
	}
	return in, nil
}

// Redact returns url with its password replaced by "xxxxx", for messages and logs.
// A string that is not a URL (libpq key=value) is returned as "(postgres_url)".
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "(postgres_url)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// IsAuthError reports whether err is the server refusing the user or password.
func IsAuthError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "28P01" || pe.Code == "28000")
}
