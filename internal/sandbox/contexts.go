package sandbox

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// Interpreter contexts: long-lived python and javascript interpreters in a sandbox,
// whose cells are transactions like any run.
//
// # Terms
//
// A context is an interpreter process the guest agent keeps in the sandbox (see
// agentproto's contexts.go); a cell is code run in it, seeing what earlier cells left.
// The context lives in the sandbox's memory, so it is part of the sandbox's state:
// every snapshot holds it with its variables, and a rollback, a resume (after a
// suspension or a daemon restart) or a fork brings it back as the snapshot had it.
// The guest is the one home of which contexts exist — the daemon stores nothing of its
// own about them, so what a snapshot holds and what the API lists cannot disagree.
// Ids are unique within their sandbox; a fork's copies keep their ids.
//
// # Lifecycle
//
// Every call queues with the sandbox's runs (it holds the sandbox's turn) and resumes
// a suspended sandbox first. Creating, restarting and deleting a context change the
// sandbox's state: the next run takes a fresh pre-run snapshot, and one is taken in
// the background meanwhile (as after a run), so a crash keeps the context.
//
// A cell is a run (RunCell): validated, checked against the policy, recorded in the
// history (language, code, verdict, output; metadata names the context), run after the
// pre-run snapshot under the agent's transaction policy, with CellRequest.Rollback
// overriding auto-rollback. A cell that fails (raises, times out, passes a limit) with
// auto-rollback on is rolled back: the sandbox, the interpreter's memory included, is
// restored from the snapshot taken before it, so the context is exactly as it was.
//
// # Failure semantics
//
// An unknown sandbox or context is ErrNotFound, another agent's sandbox ErrForbidden,
// a language other than python or javascript and a malformed request ErrInvalid. A
// backend without contexts is ErrUnsupported. The cell's own failure is its verdict,
// never an error: "error" (it raised; Error says what), "timeout" (interrupted; if the
// interpreter ignored the interrupt it was killed and a fresh one started: Restarted),
// "output_limit", "memory_limit", "killed", "canceled".

// ContextSpec says what interpreter to start: Language "python" or "javascript"
// (aliases "js", "python3" accepted), Cwd the working directory ("" = the sandbox
// user's home, /home/user).
type ContextSpec struct {
	Language string
	Cwd      string
}

// Context is a live interpreter in a sandbox.
type Context struct {
	ID       string    `json:"id"`       // unique within its sandbox, e.g. "ctx_…"
	Language string    `json:"language"` // canonical: "python" | "javascript"
	Cwd      string    `json:"cwd"`
	Created  time.Time `json:"created"`
	// ExecutionCount is the number of cells the interpreter has run.
	ExecutionCount int `json:"execution_count"`
	// Default marks the sandbox's default context of its language (RunCell with no
	// context id).
	Default bool `json:"default,omitempty"`
}

// CellRequest is one cell to run in a context.
type CellRequest struct {
	Code      string
	Env       map[string]string // for this cell only
	TimeoutMS int               // 0 = the sandbox's default exec timeout
	// Rollback: nil = the agent's policy (auto-rollback as for /v1 runs); non-nil
	// forces it on/off for this cell.
	Rollback *bool
	// Language is used only when the context id is "": the default context of that
	// language (default "python").
	Language string
}

// CellOutput is one rich result (a final expression's value, a display() call, a
// figure): Text is its plain form, the others are set where the object offers them.
type CellOutput = agentproto.CellOutput

// CellError is the exception a cell raised.
type CellError = agentproto.CellError

// CellEvent is streamed while the cell runs, in order.
// Kind: "stdout" | "stderr" (Text set), "result" (Result set), "error" (Error set).
type CellEvent struct {
	Kind   string
	Text   string
	Result *CellOutput
	Error  *CellError
}

// CellResult is the whole outcome of a cell. Verdict as for runs ("ok", "error",
// "timeout", …).
type CellResult struct {
	RunID          string // the history run this cell was recorded as
	Stdout, Stderr string
	Results        []CellOutput
	Error          *CellError
	ExecutionCount int
	Verdict        string
	RolledBack     bool
	// ContextID is the context the cell ran in (the default one's, when none was named).
	ContextID string
	// Restarted: the interpreter did not survive the cell (killed after an interrupt
	// it ignored, a memory limit, it died) and a fresh one took its place; with a
	// rollback, the restored sandbox has the old one back.
	Restarted bool
	// Warnings are the run's warnings (a snapshot that could not be taken, …).
	Warnings []string
	// SnapshotID is the snapshot taken before the cell ("" if none).
	SnapshotID string
}

// Cell event kinds.
const (
	CellStdout      = "stdout"
	CellStderr      = "stderr"
	CellResultEvent = "result"
	CellErrorEvent  = "error"
)

// contextLanguage returns the canonical language of a context, or ErrInvalid.
func contextLanguage(lang string) (string, error) {
	if strings.TrimSpace(lang) == "" {
		return "", fmt.Errorf("language is required (python or javascript): %w", ErrInvalid)
	}
	c, ok := CanonicalLanguage(lang)
	if !ok || c != "python" && c != "javascript" {
		return "", fmt.Errorf("contexts run python or javascript, not %q: %w", lang, ErrInvalid)
	}
	return c, nil
}

// withInterpreters runs f on e's running sandbox, queued like a run, with its
// contexts capability.
func (s *Service) withInterpreters(ctx context.Context, sandboxID, agentID string, f func(e *entry, iv backend.Interpreters) error) error {
	return s.withFiles(ctx, sandboxID, agentID, func(e *entry) error {
		iv, ok := e.sb.(backend.Interpreters)
		if !ok {
			return fmt.Errorf("interpreter contexts in %s sandboxes: %w", e.backend, ErrUnsupported)
		}
		return f(e, iv)
	})
}

func contextOf(info agentproto.ContextInfo) Context {
	return Context{ID: info.ID, Language: info.Language, Cwd: info.Cwd, Created: info.Created.UTC(),
		ExecutionCount: info.Count, Default: info.Default}
}

// changedContexts records that e's state changed outside a run (a context started or
// stopped): the next run snapshots afresh, and a snapshot is taken in the background;
// turn held.
func (s *Service) changedContexts(e *entry) {
	e.cleanSnap = ""
	if s.snapperOf(e) != nil {
		s.snapshotAfter(e)
	}
}

// CreateContext starts an interpreter context in a sandbox.
func (s *Service) CreateContext(ctx context.Context, sandboxID, agentID string, spec ContextSpec) (Context, error) {
	lang, err := contextLanguage(spec.Language)
	if err != nil {
		return Context{}, err
	}
	if strings.ContainsRune(spec.Cwd, 0) {
		return Context{}, fmt.Errorf("cwd contains a NUL byte: %w", ErrInvalid)
	}
	var out Context
	err = s.withInterpreters(ctx, sandboxID, agentID, func(e *entry, iv backend.Interpreters) error {
		info, err := iv.StartContext(ctx, agentproto.ContextSpec{ID: randID("ctx_", 8), Language: lang, Cwd: spec.Cwd})
		if err != nil {
			return err
		}
		s.changedContexts(e)
		out = contextOf(info)
		return nil
	})
	return out, err
}

// ListContexts lists a sandbox's contexts, oldest first.
func (s *Service) ListContexts(ctx context.Context, sandboxID, agentID string) ([]Context, error) {
	out := []Context{}
	err := s.withInterpreters(ctx, sandboxID, agentID, func(e *entry, iv backend.Interpreters) error {
		list, err := iv.ListContexts(ctx)
		for _, info := range list {
			out = append(out, contextOf(info))
		}
		return err
	})
	return out, err
}

// findContext returns the context ctxID of iv's sandbox, or ErrNotFound.
func findContext(ctx context.Context, iv backend.Interpreters, sandboxID, ctxID string) (agentproto.ContextInfo, error) {
	list, err := iv.ListContexts(ctx)
	if err != nil {
		return agentproto.ContextInfo{}, err
	}
	for _, info := range list {
		if info.ID == ctxID {
			return info, nil
		}
	}
	return agentproto.ContextInfo{}, fmt.Errorf("context %s in sandbox %s: %w", ctxID, sandboxID, ErrNotFound)
}

// DeleteContext kills a context's interpreter and forgets it.
func (s *Service) DeleteContext(ctx context.Context, sandboxID, agentID, ctxID string) error {
	return s.withInterpreters(ctx, sandboxID, agentID, func(e *entry, iv backend.Interpreters) error {
		if _, err := findContext(ctx, iv, sandboxID, ctxID); err != nil {
			return err
		}
		if err := iv.StopContext(ctx, ctxID); err != nil {
			return err
		}
		s.changedContexts(e)
		return nil
	})
}

// RestartContext replaces a context's interpreter by a fresh one (same id, language
// and working directory): its state is gone.
func (s *Service) RestartContext(ctx context.Context, sandboxID, agentID, ctxID string) (Context, error) {
	var out Context
	err := s.withInterpreters(ctx, sandboxID, agentID, func(e *entry, iv backend.Interpreters) error {
		old, err := findContext(ctx, iv, sandboxID, ctxID)
		if err != nil {
			return err
		}
		if err := iv.StopContext(ctx, ctxID); err != nil {
			return err
		}
		s.changedContexts(e)
		info, err := iv.StartContext(ctx, agentproto.ContextSpec{ID: old.ID, Language: old.Language, Cwd: old.Cwd, Default: old.Default})
		if err != nil {
			return err
		}
		out = contextOf(info)
		return nil
	})
	return out, err
}

// cellRun is a cell travelling through the run machinery (execLocked, runLocked) in
// the context of its run: runLocked sends it to the guest as a cell of spec and hands
// its rich results to results.
type cellRun struct {
	spec    agentproto.ContextSpec
	mu      sync.Mutex // serialises results and the streamer's calls of emit
	emit    func(CellEvent)
	results []CellOutput
	outcome *agentproto.CellOutcome
	s       *Service
}

type cellKey struct{}

// cellOf returns the cell the run of ctx is, or nil for an ordinary run.
func cellOf(ctx context.Context) *cellRun {
	c, _ := ctx.Value(cellKey{}).(*cellRun)
	return c
}

// output wraps the run's output function: rich results are the cell's, the streams
// go on to out.
func (c *cellRun) output(out agentproto.OutputFunc) agentproto.OutputFunc {
	return func(stream string, p []byte) {
		if stream != agentproto.StreamResult {
			if out != nil {
				out(stream, p)
			}
			return
		}
		r, err := agentproto.DecodeResult(p)
		if err != nil {
			return
		}
		r.Text, _ = c.s.redactor.Redact(r.Text)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.results = append(c.results, r)
		if c.emit != nil {
			c.emit(CellEvent{Kind: CellResultEvent, Result: &r})
		}
	}
}

// prepare makes an exec request the cell's.
func (c *cellRun) prepare(req *agentproto.ExecRequest) {
	spec := c.spec
	req.Context, req.Changes, req.Stdin = &spec, nil, nil
}

// RunCell runs code in context ctxID of a sandbox; ctxID "" = the sandbox's default
// context for req.Language (created on first use). emit (may be nil) gets the cell's
// output and results as they come, from one goroutine at a time, in order, before
// RunCell returns.
func (s *Service) RunCell(ctx context.Context, sandboxID, agentID, ctxID string, req CellRequest, emit func(CellEvent)) (CellResult, error) {
	if strings.TrimSpace(req.Code) == "" {
		return CellResult{}, fmt.Errorf("code is empty: %w", ErrInvalid)
	}
	if req.TimeoutMS < 0 {
		return CellResult{}, fmt.Errorf("timeout_ms %d is negative: %w", req.TimeoutMS, ErrInvalid)
	}
	e, err := s.lookup(sandboxID, agentID)
	if err != nil {
		return CellResult{}, err
	}
	var spec agentproto.ContextSpec
	if ctxID == "" {
		lang := req.Language
		if lang == "" {
			lang = "python"
		}
		if lang, err = contextLanguage(lang); err != nil {
			return CellResult{}, err
		}
		spec = agentproto.ContextSpec{ID: randID("ctx_", 8), Language: lang, Default: true}
	} else {
		var info agentproto.ContextInfo
		err := s.withInterpreters(ctx, sandboxID, agentID, func(e *entry, iv backend.Interpreters) error {
			info, err = findContext(ctx, iv, sandboxID, ctxID)
			return err
		})
		if err != nil {
			return CellResult{}, err
		}
		spec = agentproto.ContextSpec{ID: info.ID, Language: info.Language, Cwd: info.Cwd, Default: info.Default}
	}
	owner := agentID
	if owner == "" {
		owner = e.agentID
	}
	areq := api.ExecRequest{AgentID: owner, SandboxID: sandboxID, Language: spec.Language, Code: req.Code, Env: req.Env,
		Limits:   api.Limits{TimeoutMS: int64(req.TimeoutMS)},
		Metadata: map[string]any{"context": spec.ID, "kind": "cell"}}
	lim, err := s.validate(&areq)
	if err != nil {
		return CellResult{}, err
	}
	c := &cellRun{spec: spec, s: s}
	if emit != nil {
		c.emit = emit
	}
	var out OutputFunc
	if emit != nil {
		out = func(stream string, p []byte) {
			c.mu.Lock()
			defer c.mu.Unlock()
			emit(CellEvent{Kind: stream, Text: string(p)})
		}
	}
	set := s.settingsFor(ctx, owner)
	if d := s.checkPolicy(areq, set); d.Blocked {
		res := s.blocked(ctx, areq, d)
		return CellResult{RunID: res.ExecutionID, Verdict: res.Verdict, ContextID: spec.ID,
			Error: &CellError{Name: "PolicyBlocked", Value: res.Error}}, nil
	}
	if err := s.acquire(ctx, e); err != nil {
		return CellResult{}, err
	}
	defer e.unlock()
	pol := s.policyFor(set, nil)
	if req.Rollback != nil {
		pol.autoRollback = *req.Rollback
	}
	res, err := s.execLocked(context.WithValue(ctx, cellKey{}, c), e, areq, lim, pol, newStreamer(s.redactor, out))
	if err != nil {
		return CellResult{}, err
	}
	if e.sb != nil && s.snapperOf(e) != nil && res.PreSnapshotID != "" && e.cleanSnap == "" {
		s.snapshotAfter(e)
	}
	cr := CellResult{RunID: res.ExecutionID, Stdout: res.Stdout, Stderr: res.Stderr, Results: c.results,
		Verdict: res.Verdict, RolledBack: res.RolledBack, ContextID: spec.ID, Warnings: res.Warnings, SnapshotID: res.PreSnapshotID}
	if cr.Results == nil {
		cr.Results = []CellOutput{}
	}
	if o := c.outcome; o != nil {
		cr.ExecutionCount, cr.Restarted, cr.ContextID = o.ExecutionCount, o.Restarted, o.Context
		if o.Error != nil {
			ce := *o.Error
			ce.Value, _ = s.redactor.Redact(ce.Value)
			ce.Traceback, _ = s.redactor.Redact(ce.Traceback)
			cr.Error = &ce
		}
	}
	if cr.Error == nil && res.Verdict != api.VerdictOK && res.Error != "" {
		cr.Error = &CellError{Name: cellErrorName(res.Verdict), Value: res.Error}
	}
	if cr.Error != nil && emit != nil {
		c.mu.Lock()
		emit(CellEvent{Kind: CellErrorEvent, Error: cr.Error})
		c.mu.Unlock()
	}
	return cr, nil
}

// cellErrorName names the error of a cell that failed without raising (the sandbox
// died, a limit killed the interpreter).
func cellErrorName(verdict string) string {
	switch verdict {
	case api.VerdictTimeout:
		return "TimeoutError"
	case api.VerdictMemoryLimit:
		return "MemoryError"
	case api.VerdictOutputLimit:
		return "OutputLimitError"
	case api.VerdictCanceled:
		return "Canceled"
	}
	return "SandboxError"
}
