package api

// Cluster mode's daemon routes (internal/router calls them; admin keys only).

// AdoptRequest is POST /v1/cluster/adopt: this node now holds agent_id at epoch
// (a router took the agent over for it) and is to restore the agent's sandbox from
// its durable snapshot.
type AdoptRequest struct {
	AgentID string `json:"agent_id"`
	Epoch   int64  `json:"epoch"`
}

// AdoptResult says what the node restored.
type AdoptResult struct {
	AgentID string `json:"agent_id"`
	Epoch   int64  `json:"epoch"`
	// SandboxID is the agent's default sandbox ("" when it had none yet).
	SandboxID string `json:"sandbox_id,omitempty"`
	// SnapshotID is the snapshot it resumed from.
	SnapshotID string `json:"snapshot_id,omitempty"`
	// Restored is true when the sandbox was restored from that snapshot (false: it
	// had none, or the restore failed and the sandbox is fresh).
	Restored bool `json:"restored"`
}

// NodeInfo is GET /v1/cluster/node: who this node is and what its snapshots need
// of a node that restores them.
type NodeInfo struct {
	Node string `json:"node"`
	// Compat is "backend/version/platform" of the default backend's images (empty
	// when the backend cannot say); nodes with equal Compat restore each other's
	// snapshots (given the same template and CPU features).
	Compat string `json:"compat"`
}
