package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/policy"
)

var apiNoMeta = api.CreateSnapshotRequest{}

// txPolicy is a resolved ExecPolicy.
type txPolicy struct {
	snapshotBefore, autoRollback, snapshotOnFailure bool
	maxHistory, maxSnapshots                        int
}

// defaultPolicy is the built-in layer under the server's configuration.
var defaultPolicy = txPolicy{snapshotBefore: true, autoRollback: true, snapshotOnFailure: true, maxHistory: 1000, maxSnapshots: 20}

// apply overlays the fields p sets.
func (t txPolicy) apply(p *api.ExecPolicy) txPolicy {
	if p == nil {
		return t
	}
	if p.SnapshotBeforeExecution != nil {
		t.snapshotBefore = *p.SnapshotBeforeExecution
	}
	if p.AutoRollbackOnFailure != nil {
		t.autoRollback = *p.AutoRollbackOnFailure
	}
	if p.SnapshotOnFailure != nil {
		t.snapshotOnFailure = *p.SnapshotOnFailure
	}
	if p.MaxHistoryEntries != nil {
		t.maxHistory = *p.MaxHistoryEntries
	}
	if p.MaxSnapshots != nil {
		t.maxSnapshots = *p.MaxSnapshots
	}
	return t
}

func (t txPolicy) api() api.ExecPolicy {
	return api.ExecPolicy{SnapshotBeforeExecution: &t.snapshotBefore, AutoRollbackOnFailure: &t.autoRollback,
		SnapshotOnFailure: &t.snapshotOnFailure, MaxHistoryEntries: &t.maxHistory, MaxSnapshots: &t.maxSnapshots}
}

// validatePolicy checks the numbers of an ExecPolicy against the server's bounds.
func (c Config) validatePolicy(p *api.ExecPolicy) error {
	if p == nil {
		return nil
	}
	if p.MaxHistoryEntries != nil && (*p.MaxHistoryEntries < 1 || *p.MaxHistoryEntries > c.MaxHistoryLimit) {
		return fmt.Errorf("max_history_entries must be between 1 and %d (max_history_limit): %w", c.MaxHistoryLimit, ErrInvalid)
	}
	if p.MaxSnapshots != nil && (*p.MaxSnapshots < 1 || *p.MaxSnapshots > c.MaxSnapshotsLimit) {
		return fmt.Errorf("max_snapshots must be between 1 and %d (max_snapshots_limit): %w", c.MaxSnapshotsLimit, ErrInvalid)
	}
	return nil
}

// settings are an agent's stored settings, read and decoded once per request: the
// policy check, the choice of backend and the transaction policy all use them.
type settings struct {
	agentID string
	own     api.ExecPolicy // the fields the agent set itself
	found   bool
}

// settingsFor reads agentID's stored policy ("" or none: the zero settings). A
// stored policy that cannot be decoded is logged and ignored.
func (s *Service) settingsFor(ctx context.Context, agentID string) settings {
	set := settings{agentID: agentID}
	if agentID == "" {
		return set
	}
	own, err := s.agentPolicy(ctx, agentID)
	switch {
	case err == nil:
		set.own, set.found = own, true
	case !errors.Is(err, history.ErrNotFound):
		s.log.Warn("agent policy unreadable; using the server's", "agent", agentID, "err", err)
	}
	return set
}

// policyFor resolves the transaction policy of a run: built-in defaults, the
// server's configuration, the agent's stored policy, then the request's.
func (s *Service) policyFor(set settings, req *api.ExecPolicy) txPolicy {
	p := defaultPolicy.apply(&s.cfg.History)
	if set.found {
		p = p.apply(&set.own)
	}
	return p.apply(req)
}

func (s *Service) agentPolicy(ctx context.Context, agentID string) (api.ExecPolicy, error) {
	var p api.ExecPolicy
	raw, err := s.hist.GetAgentPolicy(ctx, agentID)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal([]byte(raw), &p); err != nil {
		return p, fmt.Errorf("stored policy of agent %s: %w", agentID, err)
	}
	return p, nil
}

// AgentPolicy returns the agent's effective policy and the fields it sets itself.
func (s *Service) AgentPolicy(ctx context.Context, agentID string) (effective, own api.ExecPolicy, err error) {
	own, err = s.agentPolicy(ctx, agentID)
	if err != nil && !errors.Is(err, history.ErrNotFound) {
		return effective, own, err
	}
	return s.policyFor(settings{agentID: agentID, own: own, found: err == nil}, nil).api(), own, nil
}

// SetAgentPolicy stores the fields p sets as the agent's policy; fields left unset
// follow the server's defaults.
func (s *Service) SetAgentPolicy(ctx context.Context, agentID string, p api.ExecPolicy) (api.ExecPolicy, error) {
	if agentID == "" {
		return api.ExecPolicy{}, fmt.Errorf("agent id is required: %w", ErrInvalid)
	}
	if err := s.cfg.validatePolicy(&p); err != nil {
		return api.ExecPolicy{}, err
	}
	check := policy.Config{Enabled: true, AllowedLanguages: p.AllowedLanguages, DisabledRules: p.DisabledRules}
	if err := check.Validate(); err != nil {
		return api.ExecPolicy{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	b, _ := json.Marshal(p)
	if err := s.hist.PutAgentPolicy(ctx, agentID, string(b)); err != nil {
		return api.ExecPolicy{}, err
	}
	return s.policyFor(settings{agentID: agentID, own: p, found: true}, nil).api(), nil
}

// History lists recorded runs, newest first. With both an agent and a sandbox, the
// sandbox must be the agent's (ErrForbidden); with an agent, only its runs are listed.
func (s *Service) History(ctx context.Context, f history.RunFilter) (api.RunList, error) {
	if f.AgentID != "" && f.SandboxID != "" {
		if _, err := s.lookup(f.SandboxID, f.AgentID); err != nil && !errors.Is(err, ErrNotFound) {
			return api.RunList{}, err
		}
	}
	runs, next, err := s.hist.ListRuns(ctx, f)
	if errors.Is(err, history.ErrInvalid) {
		return api.RunList{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err != nil {
		return api.RunList{}, err
	}
	total, err := s.hist.CountRuns(ctx, f)
	if err != nil {
		return api.RunList{}, err
	}
	out := api.RunList{Runs: make([]api.Run, 0, len(runs)), NextCursor: next, Total: total}
	for _, r := range runs {
		out.Runs = append(out.Runs, runAPI(r))
	}
	return out, nil
}

// GetRun returns one recorded run, as the operator.
func (s *Service) GetRun(ctx context.Context, id string) (api.Run, error) {
	return s.GetRunFor(ctx, id, "")
}

// GetRunFor returns one recorded run for agentID. Another agent's run is reported as
// not found, so its existence does not leak.
func (s *Service) GetRunFor(ctx context.Context, id, agentID string) (api.Run, error) {
	r, err := s.hist.GetRun(ctx, id)
	if errors.Is(err, history.ErrNotFound) || err == nil && CheckAgent(agentID, r.AgentID) != nil {
		return api.Run{}, fmt.Errorf("run %s: %w", id, ErrNotFound)
	}
	return runAPI(r), err
}

func runAPI(r history.Run) api.Run {
	return api.Run{ID: r.ID, AgentID: r.AgentID, SandboxID: r.SandboxID, Language: r.Language, Code: r.Code,
		Status: r.Status, Verdict: r.Verdict, ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr,
		StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated, BlockedRule: r.BlockedRule,
		BlockedReason: r.BlockedReason, PreSnapshotID: r.PreSnapshotID, FailureSnapshotID: r.FailureSnapshotID,
		RestoredSnapshotID: r.RestoredSnapshotID, RolledBack: r.RolledBack, StartedAt: r.StartedAt,
		CompletedAt: r.CompletedAt, DurationMS: r.DurationMS, Metadata: r.Metadata, KeyName: r.KeyName,
		Changes: changesAPI(r.Changes), ChangesTruncated: r.ChangesTruncated, ChangesUndone: r.ChangesUndone}
}
