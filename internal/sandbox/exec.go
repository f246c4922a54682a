package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// aliases maps accepted language names to canonical ones.
var aliases = map[string]string{
	"python": "python", "py": "python", "python3": "python",
	"javascript": "javascript", "js": "javascript", "node": "javascript", "nodejs": "javascript",
	"bash": "bash", "sh": "bash", "shell": "bash",
	"rust": "rust", "rs": "rust",
	"go": "go", "golang": "go",
}

// CanonicalLanguage returns the canonical name of a supported language.
func CanonicalLanguage(lang string) (string, bool) {
	c, ok := aliases[strings.ToLower(strings.TrimSpace(lang))]
	return c, ok
}

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
	if strings.TrimSpace(req.Code) == "" {
		return api.Limits{}, fmt.Errorf("code is empty: %w", ErrInvalid)
	}
	if len(req.Code) > s.cfg.MaxCodeBytes {
		return api.Limits{}, fmt.Errorf("code is %d bytes, over the %d byte limit: %w", len(req.Code), s.cfg.MaxCodeBytes, ErrInvalid)
	}
	return s.cfg.resolve(req.Limits)
}

// Exec runs code for an agent: in req.SandboxID if given, else in the agent's own
// sandbox, created on first use. The program's failure is a result, not an error;
// errors are for requests that could not run (see the ErrX classes).
func (s *Service) Exec(ctx context.Context, req api.ExecRequest) (*api.ExecResult, error) {
	lim, err := s.validate(&req)
	if err != nil {
		return nil, err
	}
	e, err := s.entryFor(ctx, req, lim)
	if err != nil {
		return nil, err
	}
	if err := s.enqueue(ctx, e); err != nil {
		return nil, err
	}
	defer e.run.Unlock()
	if e.deleted {
		return nil, fmt.Errorf("sandbox %s was deleted: %w", e.id, ErrNotFound)
	}
	return s.execLocked(ctx, e, req, lim)
}

// entryFor finds the sandbox a request runs in, creating the agent's default sandbox
// on first use.
func (s *Service) entryFor(ctx context.Context, req api.ExecRequest, lim api.Limits) (*entry, error) {
	if req.SandboxID != "" {
		return s.lookup(req.SandboxID, req.AgentID)
	}
	s.mu.Lock()
	id, ok := s.byAgent[req.AgentID]
	s.mu.Unlock()
	if ok {
		if e, err := s.lookup(id, req.AgentID); err == nil {
			return e, nil
		}
	}
	return s.newEntry(ctx, req.AgentID, "", lim.MemoryMB, true)
}

// enqueue waits for e's turn, refusing past the queue bound.
func (s *Service) enqueue(ctx context.Context, e *entry) error {
	s.mu.Lock()
	if e.waiting >= s.cfg.QueueDepth {
		s.mu.Unlock()
		return fmt.Errorf("sandbox %s has %d requests waiting: %w", e.id, e.waiting, ErrBusy)
	}
	e.waiting++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		e.waiting--
		s.mu.Unlock()
	}()
	for !e.run.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for sandbox %s: %w", e.id, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// ensureAlive replaces a dead sandbox by a fresh one with the same id. It reports
// whether it did.
func (s *Service) ensureAlive(ctx context.Context, e *entry) (bool, error) {
	if e.sb != nil {
		return false, nil
	}
	sb, err := s.be.Create(ctx, s.spec(e.id, e.memoryMB))
	if err != nil {
		return false, fmt.Errorf("replace dead sandbox %s: %w", e.id, classifyBackend(err))
	}
	e.sb = sb
	s.log.Info("replaced dead sandbox", "id", e.id, "agent", e.agentID)
	return true, nil
}

func (s *Service) execLocked(ctx context.Context, e *entry, req api.ExecRequest, lim api.Limits) (*api.ExecResult, error) {
	recreated, err := s.ensureAlive(ctx, e)
	if err != nil {
		return nil, err
	}
	out := &api.ExecResult{
		ExecutionID: newExecutionID(), SandboxID: e.id, AgentID: req.AgentID, Language: req.Language,
		StartedAt: time.Now().UTC(), SandboxRecreated: recreated,
	}
	preq := &agentproto.ExecRequest{
		Language: req.Language, Code: req.Code, Stdin: []byte(req.Stdin), Env: req.Env, WorkDir: req.WorkDir,
		Limits: agentproto.Limits{
			TimeoutMS: lim.TimeoutMS, MaxOutputBytes: lim.MaxOutputBytes, MaxFileBytes: lim.MaxFileBytes,
			MaxProcs: lim.MaxProcs, MemoryBytes: lim.MemoryMB << 20,
		},
	}
	// The guest enforces the timeout; the host waits a little longer before it gives
	// up on the guest.
	rctx, cancel := context.WithTimeout(ctx, time.Duration(lim.TimeoutMS)*time.Millisecond+15*time.Second)
	defer cancel()
	res, err := e.sb.Exec(rctx, preq)
	out.CompletedAt = time.Now().UTC()
	e.lastUsed = time.Now()
	e.runs++
	var dead *backend.DeadError
	switch {
	case err == nil:
		out.ExitCode, out.Verdict, out.Signal = res.ExitCode, res.Verdict, res.Signal
		out.Stdout, out.Stderr = text(res.Stdout), text(res.Stderr)
		out.StdoutTruncated, out.StderrTruncated = res.StdoutTruncated, res.StderrTruncated
		out.DurationMS = res.DurationMS
		out.Error = res.Error
		return out, nil
	case errors.As(err, &dead):
		s.log.Warn("sandbox died during a run", "id", e.id, "agent", e.agentID, "verdict", dead.Verdict, "detail", dead.Detail)
		e.sb.Destroy(context.Background())
		e.sb = nil
		out.ExitCode, out.Verdict, out.SandboxLost = 137, dead.Verdict, true
		out.DurationMS = out.CompletedAt.Sub(out.StartedAt).Milliseconds()
		out.Error = "the run ended its sandbox (" + dead.Verdict + "); the next run starts in a fresh sandbox"
		return out, nil
	default:
		// The guest did not answer in time, or the caller went away mid-run: the
		// sandbox is in an unknown state, so it is replaced.
		e.sb.Destroy(context.Background())
		e.sb = nil
		if ctx.Err() != nil {
			return nil, fmt.Errorf("run cancelled: %w", ctx.Err())
		}
		out.ExitCode, out.Verdict, out.SandboxLost = 137, api.VerdictKilled, true
		out.DurationMS = out.CompletedAt.Sub(out.StartedAt).Milliseconds()
		out.Error = "the sandbox stopped answering and was replaced: " + err.Error()
		return out, nil
	}
}

// text turns program output into valid UTF-8 for JSON.
func text(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
