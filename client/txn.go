package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vmexec/vmexec/api"
)

func agentQuery(agentID string) string {
	if agentID == "" {
		return ""
	}
	return "?agent_id=" + url.QueryEscape(agentID)
}

// CreateSnapshot saves a sandbox's whole state.
func (c *Client) CreateSnapshot(ctx context.Context, sandboxID string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	var sn api.Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(sandboxID)+"/snapshots", req, &sn)
	return sn, err
}

// ListSnapshots lists a sandbox's snapshots, oldest first.
func (c *Client) ListSnapshots(ctx context.Context, sandboxID, agentID string) (api.SnapshotList, error) {
	var l api.SnapshotList
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+url.PathEscape(sandboxID)+"/snapshots"+agentQuery(agentID), nil, &l)
	return l, err
}

// DeleteSnapshot removes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, snapshotID, agentID string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(snapshotID)+agentQuery(agentID), nil, nil)
}

// Rollback returns a sandbox to a snapshot, or to its last successful run.
func (c *Client) Rollback(ctx context.Context, sandboxID string, req api.RollbackRequest) (api.RollbackResult, error) {
	var res api.RollbackResult
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(sandboxID)+"/rollback", req, &res)
	return res, err
}

// Fork starts a new sandbox from a snapshot.
func (c *Client) Fork(ctx context.Context, snapshotID string, req api.ForkRequest) (api.Sandbox, error) {
	var sb api.Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/snapshots/"+url.PathEscape(snapshotID)+"/fork", req, &sb)
	return sb, err
}

// HistoryQuery selects runs from the history.
type HistoryQuery struct {
	AgentID, SandboxID string
	FailuresOnly       bool
	Since, Until       time.Time
	Limit              int
	Cursor             string
}

// History lists recorded runs, newest first; pass the result's NextCursor as Cursor
// for the next page.
func (c *Client) History(ctx context.Context, q HistoryQuery) (api.RunList, error) {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("agent_id", q.AgentID)
	set("sandbox_id", q.SandboxID)
	set("cursor", q.Cursor)
	if q.FailuresOnly {
		v.Set("failures_only", "true")
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.Format(time.RFC3339Nano))
	}
	var l api.RunList
	err := c.do(ctx, http.MethodGet, "/v1/history?"+v.Encode(), nil, &l)
	return l, err
}

// GetRun returns one recorded run.
func (c *Client) GetRun(ctx context.Context, id string) (api.Run, error) {
	var r api.Run
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id), nil, &r)
	return r, err
}

// AgentPolicy is an agent's transaction policy: the effective one, and the fields the
// agent sets itself.
type AgentPolicy struct {
	AgentID   string         `json:"agent_id"`
	Effective api.ExecPolicy `json:"effective"`
	Own       api.ExecPolicy `json:"own"`
}

// GetAgentPolicy returns an agent's policy.
func (c *Client) GetAgentPolicy(ctx context.Context, agentID string) (AgentPolicy, error) {
	var p AgentPolicy
	err := c.do(ctx, http.MethodGet, "/v1/agents/"+url.PathEscape(agentID)+"/policy", nil, &p)
	return p, err
}

// SetAgentPolicy stores an agent's policy; unset fields follow the server.
func (c *Client) SetAgentPolicy(ctx context.Context, agentID string, p api.ExecPolicy) (AgentPolicy, error) {
	var out AgentPolicy
	err := c.do(ctx, http.MethodPut, "/v1/agents/"+url.PathEscape(agentID)+"/policy", p, &out)
	return out, err
}
