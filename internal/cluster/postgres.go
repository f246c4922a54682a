package cluster

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres implements Ownership and Nodes on PostgreSQL. Its tables (cluster_owners,
// cluster_nodes) live beside the history's, with their own migrations.
type Postgres struct {
	pool *pgxpool.Pool
}

var (
	_ Ownership = (*Postgres)(nil)
	_ Nodes     = (*Postgres)(nil)
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLock serializes migrators of the cluster tables ("vmclus").
const migrationLock = 0x766d636c7573

// SchemaVersion is the newest cluster migration this binary knows.
func SchemaVersion() int {
	names, _ := fs.Glob(migrationFS, "migrations/*.sql")
	return len(names)
}

// NewPostgres returns the ownership and node registry on pool (whose life stays the
// caller's), creating or upgrading its tables.
func NewPostgres(ctx context.Context, pool *pgxpool.Pool) (*Postgres, error) {
	if err := migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("cluster tables: %w", err)
	}
	return &Postgres{pool: pool}, nil
}

// migrate applies the cluster migrations the database lacks, under an advisory
// lock, each in a transaction with its cluster_schema_migrations row.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS cluster_schema_migrations (
		version BIGINT NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())`); err != nil {
		return err
	}
	var current int
	if err := conn.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM cluster_schema_migrations`).Scan(&current); err != nil {
		return err
	}
	if current > len(names) {
		return fmt.Errorf("database cluster schema version %d is newer than this binary's %d", current, len(names))
	}
	for i, name := range names {
		base := path.Base(name)
		if v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0]); err != nil || v != i+1 {
			return fmt.Errorf("migration %s: want version %d", base, i+1)
		}
		if i+1 <= current {
			continue
		}
		b, err := fs.ReadFile(migrationFS, name)
		if err != nil {
			return err
		}
		if err := pgx.BeginFunc(ctx, conn.Conn(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, string(b)); err != nil {
				return fmt.Errorf("migration %s: %w", base, err)
			}
			_, err := tx.Exec(ctx, `INSERT INTO cluster_schema_migrations (version, name) VALUES ($1, $2)`, i+1, base)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

const ownerColumns = `agent, sandbox, node, epoch, state, durable_snapshot_key, updated_at`

func scanOwner(row pgx.Row) (Owner, error) {
	var o Owner
	err := row.Scan(&o.Agent, &o.Sandbox, &o.Node, &o.Epoch, &o.State, &o.DurableSnapshotKey, &o.UpdatedAt)
	o.UpdatedAt = o.UpdatedAt.UTC()
	return o, err
}

// Get implements Ownership.
func (p *Postgres) Get(ctx context.Context, agent string) (Owner, error) {
	o, err := scanOwner(p.pool.QueryRow(ctx, `SELECT `+ownerColumns+` FROM cluster_owners WHERE agent = $1`, agent))
	if errors.Is(err, pgx.ErrNoRows) {
		return Owner{}, fmt.Errorf("owner of agent %q: %w", agent, ErrNotFound)
	}
	if err != nil {
		return Owner{}, fmt.Errorf("owner of agent %q: %w", agent, err)
	}
	return o, nil
}

// Claim implements Ownership: an INSERT that does nothing on conflict, so two
// nodes claiming one new agent at once cannot both get it.
func (p *Postgres) Claim(ctx context.Context, agent, node string) (Owner, error) {
	if agent == "" || node == "" {
		return Owner{}, fmt.Errorf("claim: empty agent or node: %w", ErrInvalid)
	}
	o, err := scanOwner(p.pool.QueryRow(ctx, `INSERT INTO cluster_owners (agent, node, epoch, state)
		VALUES ($1, $2, 1, $3) ON CONFLICT (agent) DO NOTHING RETURNING `+ownerColumns, agent, node, StateActive))
	if err == nil {
		return o, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Owner{}, fmt.Errorf("claim agent %q: %w", agent, err)
	}
	cur, err := p.Get(ctx, agent)
	if errors.Is(err, ErrNotFound) {
		// Released between the insert and the read: claim again.
		return p.Claim(ctx, agent, node)
	}
	if err != nil {
		return Owner{}, fmt.Errorf("claim agent %q: %w", agent, err)
	}
	if cur.Node == node {
		return cur, nil
	}
	// A node the agent was taken over from says so: its claim is stale.
	var held *int64
	if err := p.pool.QueryRow(ctx, `SELECT (held->>$2::text)::bigint FROM cluster_owners WHERE agent = $1`, agent, node).Scan(&held); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Owner{}, fmt.Errorf("claim agent %q: %w", agent, err)
	}
	oe := &OwnerError{Owner: cur, Err: ErrOwned}
	if held != nil && *held < cur.Epoch {
		oe.Epoch = *held
	}
	return Owner{}, oe
}

// Takeover implements Ownership: one compare-and-set on the epoch.
func (p *Postgres) Takeover(ctx context.Context, agent, node string, seen int64) (Owner, error) {
	if agent == "" || node == "" || seen < 1 {
		return Owner{}, fmt.Errorf("take over: empty agent or node, or epoch %d: %w", seen, ErrInvalid)
	}
	o, err := scanOwner(p.pool.QueryRow(ctx, `UPDATE cluster_owners
		SET node = $3, epoch = epoch + 1, state = $4, updated_at = clock_timestamp(),
			held = CASE WHEN node = $3 THEN held ELSE held || jsonb_build_object(node, epoch) END
		WHERE agent = $1 AND epoch = $2 RETURNING `+ownerColumns, agent, seen, node, StateActive))
	if err == nil {
		return o, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Owner{}, fmt.Errorf("take over agent %q: %w", agent, err)
	}
	return Owner{}, p.refusal(ctx, agent, seen)
}

// refusal explains a compare-and-set that matched no row: the row moved on (an
// *OwnerError with it) or is gone.
func (p *Postgres) refusal(ctx context.Context, agent string, epoch int64) error {
	cur, err := p.Get(ctx, agent)
	if err != nil {
		return err
	}
	return &OwnerError{Owner: cur, Err: ErrStale, Epoch: epoch}
}

// Check implements Ownership.
func (p *Postgres) Check(ctx context.Context, agent, node string, epoch int64) (Owner, error) {
	cur, err := p.Get(ctx, agent)
	if err != nil {
		return Owner{}, err
	}
	if cur.Node != node || cur.Epoch != epoch {
		return Owner{}, &OwnerError{Owner: cur, Err: ErrStale, Epoch: epoch}
	}
	return cur, nil
}

// Update implements Ownership.
func (p *Postgres) Update(ctx context.Context, o Owner) (Owner, error) {
	got, err := scanOwner(p.pool.QueryRow(ctx, `UPDATE cluster_owners
		SET sandbox = COALESCE(NULLIF($4::text, ''), sandbox), state = COALESCE(NULLIF($5::text, ''), state),
			durable_snapshot_key = COALESCE(NULLIF($6::text, ''), durable_snapshot_key), updated_at = clock_timestamp()
		WHERE agent = $1 AND node = $2 AND epoch = $3 RETURNING `+ownerColumns,
		o.Agent, o.Node, o.Epoch, o.Sandbox, o.State, o.DurableSnapshotKey))
	if err == nil {
		return got, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Owner{}, fmt.Errorf("update owner of agent %q: %w", o.Agent, err)
	}
	return Owner{}, p.refusal(ctx, o.Agent, o.Epoch)
}

// Release implements Ownership.
func (p *Postgres) Release(ctx context.Context, agent, node string, epoch int64) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM cluster_owners WHERE agent = $1 AND node = $2 AND epoch = $3`, agent, node, epoch)
	if err != nil {
		return fmt.Errorf("release agent %q: %w", agent, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if err := p.refusal(ctx, agent, epoch); !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// Register implements Nodes.
func (p *Postgres) Register(ctx context.Context, n Node) error {
	if n.Name == "" {
		return fmt.Errorf("register node: empty name: %w", ErrInvalid)
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO cluster_nodes (name, address, capacity, load, last_ready)
		VALUES ($1, $2, $3, $4, clock_timestamp())
		ON CONFLICT (name) DO UPDATE SET address = excluded.address, capacity = excluded.capacity,
			load = excluded.load, last_ready = excluded.last_ready`, n.Name, n.Address, n.Capacity, n.Load)
	if err != nil {
		return fmt.Errorf("register node %q: %w", n.Name, err)
	}
	return nil
}

// Heartbeat implements Nodes.
func (p *Postgres) Heartbeat(ctx context.Context, name string, load int64) error {
	tag, err := p.pool.Exec(ctx, `UPDATE cluster_nodes SET load = $2, last_ready = clock_timestamp() WHERE name = $1`, name, load)
	if err != nil {
		return fmt.Errorf("heartbeat of node %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("heartbeat of node %q: %w", name, ErrNotFound)
	}
	return nil
}

// ListReady implements Nodes.
func (p *Postgres) ListReady(ctx context.Context, within time.Duration) ([]Node, error) {
	rows, err := p.pool.Query(ctx, `SELECT name, address, capacity, load, last_ready FROM cluster_nodes
		WHERE last_ready >= clock_timestamp() - make_interval(secs => $1) ORDER BY name COLLATE "C"`, within.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list ready nodes: %w", err)
	}
	defer rows.Close()
	out := []Node{}
	for rows.Next() {
		var n Node
		if err := rows.Scan(&n.Name, &n.Address, &n.Capacity, &n.Load, &n.LastReady); err != nil {
			return nil, fmt.Errorf("list ready nodes: %w", err)
		}
		n.LastReady = n.LastReady.UTC()
		out = append(out, n)
	}
	return out, rows.Err()
}

// Deregister implements Nodes.
func (p *Postgres) Deregister(ctx context.Context, name string) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM cluster_nodes WHERE name = $1`, name); err != nil {
		return fmt.Errorf("deregister node %q: %w", name, err)
	}
	return nil
}
