package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/codeblock"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/policy"
)

// CanonicalLanguage returns the canonical name of a supported language.
func CanonicalLanguage(lang string) (string, bool) { return codeblock.Canonical(lang) }

// validate checks a request before any sandbox work and resolves its limits.
func (s *Service) validate(req *api.ExecRequest) (api.Limits, error) {
	if req.AgentID == "" && req.SandboxID == "" {
		return api.Limits{}, fmt.Errorf("agent_id is required: %w", ErrInvalid)
	}
	lang, ok := CanonicalLanguage(req.Language)
	if !ok {
		if req.Language == "" {
			return api.Limits{}, fmt.Errorf("language is required (one of %s): %w", strings.Join(api.Languages, ", "), ErrInvalid)
		}
		return api.Limits{}, fmt.Errorf("unknown language %q (supported: %s): %w", req.Language, strings.Join(api.Languages, ", "), ErrInvalid)
	}
	req.Language = lang
	if err := s.cfg.validatePolicy(req.History); err != nil {
		return api.Limits{}, err
	}
	if strings.TrimSpace(req.Code) == "" {
		return api.Limits{}, fmt.Errorf("code is empty: %w", ErrInvalid)
	}
	if len(req.Code) > s.cfg.MaxCodeBytes {
		return api.Limits{}, fmt.Errorf("code is %d bytes, over the %d byte limit: %w", len(req.Code), s.cfg.MaxCodeBytes, ErrInvalid)
	}
	if err := validateChanges(req.Changes); err != nil {
		return api.Limits{}, err
	}
	return s.cfg.resolve(req.Limits)
}

// Exec runs code for an agent: in req.SandboxID if given, else in the agent's own
// sandbox, created on first use. The program's failure is a result, not an error;
// errors are for requests that could not run (see the ErrX classes).
//
// Durability: the answer to a run is sent once its history row and the sandbox's
// head (the newest run in its state) are durable. Its state is saved by a snapshot
// taken after the answer, in the background; with req.Durable, before it. A crash in
// between loses the run's effects, and the next result says so with
// state_restored_from (the run whose state the sandbox came back with).
func (s *Service) Exec(ctx context.Context, req api.ExecRequest) (*api.ExecResult, error) {
	return s.ExecStream(ctx, req, nil)
}

// ExecStream is Exec that also passes the run's output to out (when not nil) while it
// runs, redacted and cut as stream.go describes; out is not called after ExecStream
// returns. If ctx ends during the run (the caller went away), the run is stopped and
// ends with verdict canceled: it is rolled back like any failure and recorded.
func (s *Service) ExecStream(ctx context.Context, req api.ExecRequest, out OutputFunc) (res *api.ExecResult, err error) {
	ctx, st := s.withSteps(ctx)
	defer func() {
		if res != nil {
			st.done(s.log, res.ExecutionID)
		}
	}()
	lim, err := s.validate(&req)
	if err != nil {
		return nil, err
	}
	if req.SandboxID != "" { // another agent's sandbox is 403, whatever the code
		if _, err := s.lookup(req.SandboxID, req.AgentID); err != nil {
			return nil, err
		}
	}
	st.mark("validate")
	set := s.settingsFor(ctx, req.AgentID)
	st.mark("settings")
	if d := s.checkPolicy(req, set); d.Blocked {
		return s.blocked(ctx, req, d), nil
	}
	st.mark("policy")
	if err := s.fence(ctx, req.AgentID, req.SandboxID); err != nil { // cluster mode: another node's agent
		return nil, err
	}
	e, err := s.entryFor(ctx, req, lim, set)
	if err != nil {
		return nil, err
	}
	if err := s.acquire(ctx, e); err != nil {
		return nil, err
	}
	st.mark("acquire")
	defer func() {
		e.unlock()
		st.mark("unlock")
	}()
	pol := s.policyFor(set, req.History)
	res, err = s.execLocked(ctx, e, req, lim, pol, newStreamer(s.redactor, out))
	if err == nil && e.sb != nil && s.snapperOf(e) != nil {
		switch {
		case req.Durable && e.cleanSnap != "":
			res.Durable = true // the state equals a snapshot already (e.g. rolled back)
		case req.Durable:
			s.commitLocked(ctx, e, res)
		case res.PreSnapshotID != "" && e.cleanSnap == "":
			st.note("snapshot_after", true)
			s.snapshotAfter(e)
		}
		st.mark("after")
	} else if err == nil && req.Durable {
		res.Warnings = append(res.Warnings, "durable: the state could not be saved (the sandbox's backend cannot snapshot, or the sandbox is gone)")
	}
	return res, err
}

// commitLocked saves the state a run left before its answer (durable: true); turn
// held.
func (s *Service) commitLocked(ctx context.Context, e *entry, res *api.ExecResult) {
	if _, err := e.snapshot(ctx, history.SnapshotPreRun, "", apiNoMeta); err != nil {
		res.Warnings = append(res.Warnings, "the run's state could not be saved before the answer (durable); a crash before the next snapshot loses it: "+err.Error())
		return
	}
	res.Durable = true
}

// snapshotAfter takes, in the background, the snapshot the next run would take
// before it starts, so that the next run does not wait for it: agents think between
// turns, and the snapshot is taken meanwhile. It also gives a crash or a suspension
// the latest state to resume from.
func (s *Service) snapshotAfter(e *entry) {
	s.goBackground(func() {
		ctx, cancel := context.WithTimeout(s.work, time.Minute)
		defer cancel()
		if err := e.lock(ctx); err != nil {
			return
		}
		defer e.unlock()
		if e.usable() != nil || e.sb == nil || e.cleanSnap != "" {
			return // a run, rollback or suspension came first
		}
		if _, err := e.snapshot(ctx, history.SnapshotPreRun, "", apiNoMeta); err != nil {
			s.log.Warn("background snapshot", "sandbox", e.id, "err", err)
		}
	})
}

// checkPolicy applies the server's policy as narrowed by the agent's own.
func (s *Service) checkPolicy(req api.ExecRequest, set settings) policy.Decision {
	cfg := s.cfg.Policy
	if own := set.own; set.found {
		if len(own.AllowedLanguages) > 0 { // an agent may narrow the server's list, not widen it
			cfg.AllowedLanguages = narrow(cfg.AllowedLanguages, own.AllowedLanguages)
			if len(cfg.AllowedLanguages) == 0 && cfg.Enabled {
				return policy.Decision{Blocked: true, Rule: policy.RuleLanguageNotAllowed,
					Reason: "the agent's allowed_languages leave no language the server allows; update the agent's policy"}
			}
		}
		cfg.DisabledRules = append(append([]string(nil), cfg.DisabledRules...), own.DisabledRules...)
	}
	p, err := policy.New(cfg)
	if err != nil { // a stored agent policy naming a rule that no longer exists
		s.log.Warn("agent policy invalid; using the server's", "agent", req.AgentID, "err", err)
		p, _ = policy.New(s.cfg.Policy)
	}
	return p.Check(req.Language, req.Code)
}

// narrow returns the languages of agent that server allows too (all five when server
// is empty).
func narrow(server, agent []string) []string {
	if len(server) == 0 {
		server = api.Languages
	}
	allowed := map[string]bool{}
	for _, l := range server {
		c, _ := codeblock.Canonical(l)
		allowed[c] = true
	}
	out := []string{}
	for _, l := range agent {
		if c, ok := codeblock.Canonical(l); ok && allowed[c] {
			out = append(out, c)
		}
	}
	return out
}

// blocked records and reports a run that policy refused.
func (s *Service) blocked(ctx context.Context, req api.ExecRequest, d policy.Decision) *api.ExecResult {
	now := time.Now().UTC()
	out := &api.ExecResult{ExecutionID: randID("ex-", 8), AgentID: req.AgentID, Language: req.Language, ExitCode: -1,
		Verdict: api.VerdictBlocked, Blocked: true, BlockedRule: d.Rule, BlockedReason: d.Reason,
		Error: "blocked by policy rule " + d.Rule + ": " + d.Reason, StartedAt: now, CompletedAt: now}
	out.SandboxID = req.SandboxID
	if out.SandboxID == "" {
		s.mu.Lock()
		out.SandboxID = s.byAgent[req.AgentID]
		s.mu.Unlock()
	}
	err := s.hist.RecordRun(ctx, history.Run{ID: out.ExecutionID, AgentID: req.AgentID, SandboxID: out.SandboxID,
		Language: req.Language, Code: req.Code, Status: history.StatusBlocked, Verdict: history.VerdictBlocked,
		ExitCode: -1, BlockedRule: d.Rule, BlockedReason: d.Reason, StartedAt: now, CompletedAt: now, Metadata: req.Metadata, KeyName: keyNameOf(ctx)})
	if err != nil {
		s.log.Error("recording blocked run", "agent", req.AgentID, "err", err)
	}
	s.log.Info("run blocked by policy", "agent", req.AgentID, "rule", d.Rule)
	return out
}

// entryFor finds the sandbox a request runs in, creating the agent's default sandbox
// on first use.
func (s *Service) entryFor(ctx context.Context, req api.ExecRequest, lim api.Limits, set settings) (*entry, error) {
	if req.SandboxID != "" {
		return s.lookup(req.SandboxID, req.AgentID)
	}
	s.mu.Lock()
	id, ok := s.byAgent[req.AgentID]
	s.mu.Unlock()
	if !ok && s.fencer != nil { // cluster mode: the agent's sandbox may be in the shared history (adopt.go)
		s.adoptKnown(ctx, req.AgentID)
		s.mu.Lock()
		id, ok = s.byAgent[req.AgentID]
		s.mu.Unlock()
	}
	if ok {
		if e, err := s.lookup(id, req.AgentID); err == nil {
			return e, nil
		}
	}
	be := s.def.Name()
	if set.own.Backend != "" {
		var err error
		if be, err = s.backendFor(set.own.Backend); err != nil {
			return nil, fmt.Errorf("the agent's policy: %w", err)
		}
	}
	return s.newEntry(ctx, newEntryReq{agentID: req.AgentID, backend: be, memoryMB: lim.MemoryMB, asDefault: true})
}

// execLocked runs one request in e as a transaction under the resolved policy pol;
// turn held.
//
//  1. Resume or replace the sandbox if it is not running.
//  2. With snapshot_before_execution, snapshot it (reusing a snapshot the state is
//     known to equal, e.g. right after a rollback).
//  3. Record the run as running, run it, record the outcome.
//  4. On failure (any verdict but ok): with snapshot_on_failure keep the failed state
//     as a snapshot; with auto_rollback_on_failure restore the pre-run snapshot. A run
//     that killed its sandbox is restored from the pre-run snapshot whatever the
//     policy, since its failed state is gone anyway. A run interrupted by the
//     server's shutdown is rolled back too, and its caller gets ErrClosed.
//  5. Record the sandbox's head (the newest run in its state) durably.
func (s *Service) execLocked(ctx context.Context, e *entry, req api.ExecRequest, lim api.Limits, pol txPolicy, st *streamer) (*api.ExecResult, error) {
	e.busy.Store(true)
	defer e.busy.Store(false)
	sw := stepsOf(ctx)
	fresh, err := e.resume(ctx)
	if err != nil {
		return nil, err
	}
	sw.mark("resume")
	out := &api.ExecResult{ExecutionID: randID("ex-", 8), SandboxID: e.id, AgentID: req.AgentID, Language: req.Language, SandboxRecreated: fresh}
	e.takeNotes(out)
	var pre history.Snapshot
	if pol.snapshotBefore && s.snapperOf(e) != nil {
		pre, err = s.preSnapshot(ctx, e, out.ExecutionID)
		if errors.Is(err, ErrStorage) {
			return nil, err // a run that could not be rolled back is not started
		}
		if err != nil {
			out.Warnings = append(out.Warnings, "no snapshot before the run, so it cannot be rolled back: "+err.Error())
		}
		out.PreSnapshotID = pre.ID
	}
	sw.mark("pre_snapshot")
	out.StartedAt = time.Now().UTC()
	// Exit code -1 until the run reports one: a row a crash cuts off never says 0.
	rec := history.Run{ID: out.ExecutionID, AgentID: req.AgentID, SandboxID: e.id, Language: req.Language, Code: req.Code,
		StartedAt: out.StartedAt, PreSnapshotID: pre.ID, Metadata: req.Metadata, ExitCode: -1, KeyName: keyNameOf(ctx)}
	if err := s.hist.BeginRun(ctx, rec); err != nil {
		return nil, fmt.Errorf("record run: %w", err)
	}
	sw.mark("begin_run")
	e.beginRun(pol)
	// A shutdown interrupts the run: Close cancels s.runs.
	rctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.runs, cancel)
	runErr := s.runLocked(rctx, e, req, lim, out, st)
	stop()
	cancel()
	if s.runs.Err() != nil && (runErr != nil || out.Verdict == api.VerdictCanceled) {
		runErr = fmt.Errorf("interrupted: the server shut down during the run, which was rolled back: %w", ErrClosed)
	}
	e.ran(out.ExecutionID)
	if out.Success() {
		e.keepPre(pre) // a run that changed nothing: pre is still the state's image
	}
	s.redactOutput(out)
	sw.mark("redact")
	if !out.Success() && !errors.Is(runErr, ErrInvalid) { // a refused request changed nothing
		// Its own context: a caller that went away still gets its sandbox rolled back.
		fctx, cancel := context.WithTimeout(s.work, 2*time.Minute)
		s.afterFailure(fctx, e, pol, pre, out)
		cancel()
	}
	if e.sb == nil && !out.RolledBack {
		e.lost(pre, s.runs.Err() != nil)
	}
	// Cluster mode: a node that lost the agent during the run must not acknowledge it.
	checked := false // the fence was asked after the run
	if runErr == nil {
		fctx, cancel := context.WithTimeout(s.work, 10*time.Second)
		def := "" // the ownership record names the agent's default sandbox only
		if req.SandboxID == "" {
			def = e.id
		}
		runErr, checked = s.fence(fctx, req.AgentID, def), true
		cancel()
	}
	sw.mark("fence")
	s.finishRecord(e, pol, rec, out, runErr)
	sw.mark("finish_run")
	switch {
	case checked && runErr != nil: // refused: the state is not this node's to record
	case checked && req.AgentID == e.agentID:
		e.writeState(context.Background()) // held a moment ago: no second ownership query
	default:
		e.persist(context.Background())
	}
	sw.mark("state")
	if runErr != nil {
		return nil, runErr
	}
	return out, nil
}

// preSnapshot returns a snapshot of e's current state, taking one unless the state
// is known to equal an existing snapshot.
func (s *Service) preSnapshot(ctx context.Context, e *entry, runID string) (history.Snapshot, error) {
	if sn, ok := e.cleanRecord(); ok {
		return sn, nil
	}
	if e.cleanSnap != "" {
		if sn, err := s.hist.GetSnapshot(ctx, e.cleanSnap); err == nil {
			return sn, nil
		}
	}
	return e.snapshot(ctx, history.SnapshotPreRun, runID, apiNoMeta)
}

// runLocked sends the request to the guest and fills out with the outcome. A sandbox
// that died or stopped answering is dropped (e.sb = nil) and the result says so.
func (s *Service) runLocked(ctx context.Context, e *entry, req api.ExecRequest, lim api.Limits, out *api.ExecResult, st *streamer) error {
	preq := &agentproto.ExecRequest{
		Language: req.Language, Code: req.Code, Stdin: []byte(req.Stdin), Env: req.Env, WorkDir: req.WorkDir,
		Limits: agentproto.Limits{
			TimeoutMS: lim.TimeoutMS, MaxOutputBytes: lim.MaxOutputBytes, MaxFileBytes: lim.MaxFileBytes,
			MaxProcs: lim.MaxProcs, MemoryBytes: lim.MemoryMB << 20,
		},
		Changes: s.changeScan(req),
	}
	output := st.output()
	cell := cellOf(ctx) // a cell of an interpreter context (contexts.go)
	if cell != nil {
		cell.prepare(preq)
		output = cell.output(output)
	}
	// The guest enforces the timeout; the host waits a little longer before it gives
	// up on the guest.
	rctx, cancel := context.WithTimeout(ctx, time.Duration(lim.TimeoutMS)*time.Millisecond+15*time.Second)
	defer cancel()
	e.settle.running()
	sw := stepsOf(ctx)
	preq.Trace = sw != nil
	sw.mark("prepare")
	t0 := time.Now()
	res, err := e.sb.Exec(rctx, preq, output)
	sw.mark("guest")
	if sw != nil && err == nil && len(res.Trace) > 0 {
		sw.note("guest_span", time.Duration(res.Trace[len(res.Trace)-1].US)*time.Microsecond)
		sw.note("to_guest", time.UnixMicro(res.TraceStartUS).Sub(t0))
		sw.note("from_guest", time.Since(time.UnixMicro(res.TraceStartUS+res.Trace[len(res.Trace)-1].US)))
		sw.note("outside_span", time.Since(t0)-time.Duration(res.Trace[len(res.Trace)-1].US)*time.Microsecond)
	}
	st.close()
	out.CompletedAt = time.Now().UTC()
	e.used()
	var dead *backend.DeadError
	switch {
	case err == nil:
		e.settle.ranWith(res, preq.Changes != nil)
		out.ExitCode, out.Verdict, out.Signal = res.ExitCode, res.Verdict, res.Signal
		out.Stdout, out.Stderr = text(res.Stdout), text(res.Stderr)
		out.StdoutTruncated, out.StderrTruncated = res.StdoutTruncated, res.StderrTruncated
		out.DurationMS = res.DurationMS
		out.Error = res.Error
		setChanges(out, res)
		if cell != nil {
			cell.outcome = res.Cell
		}
		if out.Verdict == api.VerdictCanceled && out.Error == "" {
			out.Error = "the caller went away; the run was stopped"
		}
		return nil
	case errors.As(err, &dead):
		s.log.Warn("sandbox died during a run", "id", e.id, "agent", e.agentID, "verdict", dead.Verdict, "detail", dead.Detail)
		out.Verdict = dead.Verdict
		out.Error = "the run ended its sandbox (" + dead.Verdict + ")"
	case errors.Is(err, agentproto.ErrInvalidRequest):
		return fmt.Errorf("the guest refused the request: %w: %w", ErrInvalid, err) // nothing ran
	default:
		// The guest did not answer in time, or the caller went away mid-run: the
		// sandbox is in an unknown state, so it is replaced either way.
		e.drop()
		if ctx.Err() != nil {
			out.Verdict = api.VerdictCanceled
			out.Error = "the caller went away and the guest did not answer the cancellation"
			out.Stdout, out.Stderr = st.passed() // what the caller was sent is all there is
			break
		}
		out.Verdict = api.VerdictKilled
		out.Error = "the sandbox stopped answering: " + err.Error()
	}
	e.drop()
	out.ExitCode, out.SandboxLost = 137, true
	out.DurationMS = out.CompletedAt.Sub(out.StartedAt).Milliseconds()
	return nil
}

// redactOutput replaces secrets in the run's output, before it is returned or stored.
func (s *Service) redactOutput(out *api.ExecResult) {
	var h1, h2 []string
	out.Stdout, h1 = s.redactor.Redact(out.Stdout)
	out.Stderr, h2 = s.redactor.Redact(out.Stderr)
	for _, h := range append(h1, h2...) {
		if !slices.Contains(out.Redactions, h) {
			out.Redactions = append(out.Redactions, h)
		}
	}
}

// afterFailure applies the failure half of the transaction policy.
func (s *Service) afterFailure(ctx context.Context, e *entry, pol txPolicy, pre history.Snapshot, out *api.ExecResult) {
	if pol.snapshotOnFailure && e.sb != nil && s.snapperOf(e) != nil {
		if e.unchangedSince(pre) {
			// The run changed nothing (settle.go): the failed state is pre's image,
			// so pre keeps it, without a checkpoint that would copy it.
			out.FailureSnapshotID = pre.ID
		} else if sn, err := e.snapshot(ctx, history.SnapshotFailure, out.ExecutionID, apiNoMeta); err != nil {
			out.Warnings = append(out.Warnings, "could not keep the failed state: "+err.Error())
		} else {
			out.FailureSnapshotID = sn.ID
		}
	}
	if !(pol.autoRollback || e.sb == nil) {
		if out.FailureSnapshotID == "" || out.FailureSnapshotID == pre.ID {
			e.keepPre(pre) // the failed state is pre's, if the run changed nothing
		}
		return
	}
	if pre.ID == "" {
		if e.sb == nil {
			out.Error += "; the next run starts in a fresh sandbox (no snapshot to restore)"
		}
		return
	}
	if e.keepPre(pre) {
		// The run changed nothing (settle.go): the live state is pre's already.
	} else if err := e.restore(ctx, pre); err != nil {
		out.Warnings = append(out.Warnings, "rollback failed: "+err.Error())
		if e.sb == nil {
			out.Error += "; the next run starts in a fresh sandbox"
		}
		return
	}
	out.RolledBack, out.RestoredSnapshotID = true, pre.ID
	out.ChangesUndone = len(out.Changes) > 0 || out.ChangesTruncated
	if out.SandboxLost {
		out.SandboxLost = false // restored: the agent's state survives
		out.Error += "; the sandbox was restored from the snapshot taken before the run"
	}
	s.recordRollback(ctx, e, pre.ID, "auto_rollback", out.ExecutionID)
}

// finishRecord writes the run's outcome to the history and applies retention. It
// uses a context of its own: the record must be written even if the caller left.
func (s *Service) finishRecord(e *entry, pol txPolicy, rec history.Run, out *api.ExecResult, runErr error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec.Status, rec.Verdict = history.StatusDone, out.Verdict
	if runErr != nil {
		rec.Status, rec.Verdict = history.StatusError, history.VerdictError
		rec.Metadata = history.WithMetadata(rec.Metadata, "error", runErr.Error())
	}
	rec.ExitCode = out.ExitCode
	var cut bool
	rec.Stdout, cut = history.Capped(out.Stdout, s.cfg.MaxStoredOutput)
	rec.StdoutTruncated = out.StdoutTruncated || cut
	rec.Stderr, cut = history.Capped(out.Stderr, s.cfg.MaxStoredOutput)
	rec.StderrTruncated = out.StderrTruncated || cut
	rec.FailureSnapshotID, rec.RestoredSnapshotID, rec.RolledBack = out.FailureSnapshotID, out.RestoredSnapshotID, out.RolledBack
	rec.CompletedAt, rec.DurationMS = out.CompletedAt, out.DurationMS
	rec.Changes, rec.ChangesTruncated, rec.ChangesUndone = changesRecord(out)
	if rec.CompletedAt.IsZero() {
		rec.CompletedAt = time.Now().UTC()
	}
	if err := s.hist.FinishRun(ctx, rec); err != nil {
		s.log.Error("recording run outcome", "run", rec.ID, "err", err)
	}
	s.retain(e, pol, "")
}

// text turns program output into valid UTF-8 for JSON.
func text(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
