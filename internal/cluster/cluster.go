// Package cluster is cluster mode's consistent state: which node owns each agent
// (Ownership) and which nodes are up (Nodes), kept in PostgreSQL so that several
// vmexec daemons, and the routers in front of them, agree on it.
//
// # Terms
//
//   - A node is one vmexec daemon, named by cluster.node_name (default: the host
//     name). Names must be unique in a cluster.
//   - An owner row says which node runs an agent's sandbox: (agent, sandbox, node,
//     epoch, state, durable_snapshot_key, updated_at). One row per agent.
//   - The epoch is a counter that only grows. It is 1 when a node first claims an
//     unowned agent and grows by one with every takeover. A node holds an agent at
//     the epoch it claimed or took it at; once the epoch has moved on, whatever the
//     node still does for the agent is stale.
//   - The durable snapshot key names the agent's newest snapshot in the snapshot
//     store (S3): what a new owner restores from.
//
// # What the router (cluster mode part 2) can rely on
//
//   - Resolution: Get(agent) names the owning node and its epoch; join it with
//     Nodes.ListReady to find the node's address. No row means no node owns the
//     agent: place it (best of K ready nodes with capacity) and let that node claim
//     it on its first run.
//   - Takeover is one compare-and-set on the epoch (UPDATE ... WHERE agent = $1 AND
//     epoch = $2 RETURNING): of any number of routers or nodes racing to take one
//     agent over from the epoch they read, exactly one wins and the others get
//     ErrStale with the winner's row. Retry by reading again, never by bumping
//     blindly.
//   - Fencing: a daemon checks its epoch against the row before a run starts and
//     again before it is acknowledged (Fence, through sandbox.Fencer), so a node that
//     was cut off rather than dead cannot acknowledge a run for an agent taken over
//     from it; its callers get HTTP 409 naming the node that owns the agent now. A
//     node that restarts has no epoch and claims again: it is refused an agent
//     another node owns. Writes to the row itself (Update) are fenced the same way.
//   - Membership: each daemon registers (name, address, capacity, load) when it
//     starts, heartbeats every HeartbeatEvery and deregisters when it stops
//     (Announce); a node is ready if ListReady(ReadyWithin) lists it. The owner row
//     names the agent's default sandbox once a run has used it.
//   - Readiness is judged by the database's clock (last_ready is set with
//     clock_timestamp()), so the nodes' clocks need not agree for ListReady;
//     `vmexec doctor` still warns of a skewed clock, which confuses logs and the
//     snapshot store's times.
//   - The durable snapshot key is written by the daemon that uploads the agent's
//     newest state to the snapshot store (Fence.RecordDurable, on
//     internal/snapstore's Store.Uploaded), with Update, so a cut-off node cannot
//     overwrite the new owner's key.
//   - What is fenced: runs (POST /v1/exec and the sandbox exec route), and every
//     write of a sandbox's durable state (current snapshot, head run) to the shared
//     history; a starting daemon also keeps the snapshot records whose images it
//     lacks (they may be another node's). What is not, yet: the history's other
//     writes do not check epochs (a cut-off node's in-flight run still writes its
//     own run row, marked as an error; a snapshot it takes is still recorded), the
//     file, snapshot and rollback routes are not refused, and a starting daemon
//     still closes every run left "running" in the shared history (a live node's
//     FinishRun then overwrites that). A node whose epoch moved on must discard its
//     local sandbox and restore from the durable snapshot before it runs for the
//     agent again; the first run after the change is refused with ErrStale, and the
//     restore is part 2's.
//
// # Errors
//
// Methods return errors wrapping ErrNotFound, ErrStale or ErrOwned where the cause
// is the state of the rows; *OwnerError carries the row that refused the caller.
// Any other error is a failure to reach or query the database.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound: no row for the agent or node.
	ErrNotFound = errors.New("not found")
	// ErrStale: the epoch the caller holds or read is no longer the agent's: another
	// node (or router) took it over since.
	ErrStale = errors.New("stale epoch")
	// ErrOwned: another node owns the agent.
	ErrOwned = errors.New("owned by another node")
	// ErrInvalid: an empty agent or node name, or a bad epoch.
	ErrInvalid = errors.New("invalid argument")
)

// Owner states.
const (
	// StateActive: the node runs (or will run) the agent's sandbox.
	StateActive = "active"
	// StateSuspended: no live sandbox; the next owner resumes from the durable snapshot.
	StateSuspended = "suspended"
)

// Owner is an agent's ownership row.
type Owner struct {
	Agent   string
	Sandbox string
	Node    string
	Epoch   int64
	State   string
	// DurableSnapshotKey is the snapshot store's key of the agent's newest durable
	// snapshot ("" before any).
	DurableSnapshotKey string
	// UpdatedAt is when the row last changed, by the database's clock.
	UpdatedAt time.Time
}

// OwnerError is a refusal: the agent is Owner.Node's at Owner.Epoch. It wraps
// ErrOwned (another node owns it) or ErrStale (the caller's epoch moved on).
type OwnerError struct {
	Owner Owner
	Err   error // ErrOwned or ErrStale
	// Epoch is the epoch the caller held or expected. For a claim (ErrOwned) it is
	// the last epoch the claiming node held before the agent was taken over from it
	// (a node that restarted, or forgot its epoch), else 0.
	Epoch int64
}

func (e *OwnerError) Error() string {
	switch {
	case errors.Is(e.Err, ErrStale):
		return fmt.Sprintf("agent %q was taken over: node %q owns it now (epoch %d; this node held epoch %d)", e.Owner.Agent, e.Owner.Node, e.Owner.Epoch, e.Epoch)
	case e.Epoch > 0:
		return fmt.Sprintf("this node's claim (epoch %d) is stale: agent %q was taken over by node %q at epoch %d", e.Epoch, e.Owner.Agent, e.Owner.Node, e.Owner.Epoch)
	}
	return fmt.Sprintf("agent %q is owned by node %q (epoch %d)", e.Owner.Agent, e.Owner.Node, e.Owner.Epoch)
}

func (e *OwnerError) Unwrap() error { return e.Err }

// Fenced reports that the refusal is about ownership, not a failure to check it;
// sandbox.Fencer's contract asks for it.
func (e *OwnerError) Fenced() bool { return true }

// Ownership is the agent → node map. All methods are safe for concurrent use, by
// any number of daemons and routers on the same database.
type Ownership interface {
	// Get returns the agent's row, or ErrNotFound when no node owns it.
	Get(ctx context.Context, agent string) (Owner, error)

	// Claim makes node the owner of agent at epoch 1 when no node owns it, in state
	// active, and returns the row. When node already owns the agent it returns the
	// row unchanged. When another node owns it, it returns an *OwnerError wrapping
	// ErrOwned (with, in Epoch, the last epoch node held if the agent was taken over
	// from it), and changes nothing: taking an agent from a node is Takeover's.
	Claim(ctx context.Context, agent, node string) (Owner, error)

	// Takeover moves agent to node if the agent's epoch is still seen (the epoch the
	// caller read), in one compare-and-set; the epoch becomes seen+1, the state
	// active, and the durable snapshot key stays (the new owner restores from it).
	// If the epoch moved on, it returns an *OwnerError wrapping ErrStale with the
	// current row; if no row exists, ErrNotFound (Claim instead).
	Takeover(ctx context.Context, agent, node string, seen int64) (Owner, error)

	// Check returns the agent's row if node holds agent at epoch, else an
	// *OwnerError wrapping ErrStale (or ErrNotFound if the row is gone).
	Check(ctx context.Context, agent, node string, epoch int64) (Owner, error)

	// Update writes o's Sandbox, State and DurableSnapshotKey, each only when not
	// empty (the others keep their value), if o.Node still holds o.Agent at o.Epoch
	// (a fenced write), and returns the new row; otherwise an *OwnerError wrapping
	// ErrStale.
	Update(ctx context.Context, o Owner) (Owner, error)

	// Release deletes the agent's row if node holds it at epoch (the agent was
	// deleted); ErrStale otherwise. Releasing an agent with no row is not an error.
	Release(ctx context.Context, agent, node string, epoch int64) error
}

// Node is one daemon of the cluster.
type Node struct {
	Name string
	// Address is where the router reaches the daemon's API (host:port or URL).
	Address string
	// Capacity is how many sandboxes the node takes; Load how many it runs now.
	Capacity, Load int64
	// LastReady is when the node last said it was ready, by the database's clock.
	LastReady time.Time
}

// Nodes is the registry of daemons. All methods are safe for concurrent use.
type Nodes interface {
	// Register records n (by name, replacing its address, capacity and load) as
	// ready now.
	Register(ctx context.Context, n Node) error
	// Heartbeat records that node name is ready now, carrying load; ErrNotFound if
	// it never registered.
	Heartbeat(ctx context.Context, name string, load int64) error
	// ListReady returns the nodes ready within the last `within` (by the database's
	// clock), by name. A node that stopped heartbeating drops out of the list
	// without anyone deleting it.
	ListReady(ctx context.Context, within time.Duration) ([]Node, error)
	// Deregister deletes node name (a clean shutdown); no row is not an error.
	Deregister(ctx context.Context, name string) error
}
