// Package agent is vmexec's LLM agent: a loop that asks a model (any
// OpenAI-compatible server, internal/llm), runs the code of its answer in the agent's
// sandbox through the sandbox service, shows the model the results, and repeats.
//
// Terms:
//
//   - An agent is a Config: an id (its runs are the runs of that agent id, in its own
//     sandbox), a system prompt, an LLM and the seed's vm_execution block.
//   - A turn is one user message and everything it causes; a step is one answer of
//     the model (execute mode: the message itself) with the runs of its code.
//   - Code is either the run_code tool calls of an answer (for models that call
//     tools) or, failing those, its fenced code blocks (internal/codeblock).
//   - A conversation is the stored thread of a turn's messages, as the model saw them
//     (Store); a later turn continues it by id. Each run is an ordinary history row
//     whose metadata names its conversation_id, step and run.
//
// The loop of a chat turn: send the system prompt (the agent's own plus a short
// description of its sandbox), the conversation and the message; run each piece of
// code of the answer as its own transaction (ExecStream, under the agent's
// transaction policy; a failed run is rolled back by the service); send the results
// (verdict, exit code, output cut to Config.FeedbackBytes per stream, rollback) back
// as tool results or as one user message; repeat until the model answers without
// code (stop_reason answered), the step cap (max_steps), or a step whose failures are
// identical to the step before it (repeated_failure: the model is stuck).
//
// Failure semantics: an LLM that cannot be reached or answers an error ends the turn
// with an error wrapping ErrLLM (the messages of the steps already done are kept).
// A program that fails is a result the model sees, never an error. A request the
// sandbox service refuses as invalid (ErrInvalid) is shown to the model as a refused
// run; any other service error (busy, at capacity, shutting down) ends the turn with
// that error. The caller going away (ctx) stops the run in progress, which is rolled
// back.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/llm"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// ErrLLM classes errors of the model's server: unreachable, or an error answer.
var ErrLLM = errors.New("llm request failed")

// Executor is what the loop needs of the sandbox service; *sandbox.Service is one.
type Executor interface {
	ExecStream(ctx context.Context, req api.ExecRequest, out sandbox.OutputFunc) (*api.ExecResult, error)
}

// Store keeps conversations; *sqlite.Store is one. Get returns an error wrapping
// history.ErrNotFound for an unknown id.
type Store interface {
	CreateConversation(ctx context.Context, id, agentID string) error
	AppendMessages(ctx context.Context, id string, msgs []api.ConversationMessage) error
	GetConversation(ctx context.Context, id string) (api.Conversation, error)
}

// Deps are the Runner's parts.
type Deps struct {
	Exec   Executor
	Store  Store
	Logger *slog.Logger
	// HTTP is the client for the LLM servers (http.DefaultClient when nil).
	HTTP *http.Client
}

// Runner runs the turns of its agents. It is safe for concurrent use; turns of one
// conversation take turns.
type Runner struct {
	deps   Deps
	log    *slog.Logger
	agents map[string]*agentState
	locks  keyedMutex
}

type agentState struct {
	cfg Config
	llm *llm.Client
	// noTools is set once the model has said it cannot call tools.
	noTools atomic.Bool
}

// New returns a Runner for agents (ids must be unique).
func New(agents []Config, deps Deps) (*Runner, error) {
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	r := &Runner{deps: deps, log: deps.Logger.With("component", "agent"), agents: map[string]*agentState{}}
	for _, c := range agents {
		if err := c.Validate(); err != nil {
			return nil, err
		}
		if _, dup := r.agents[c.ID]; dup {
			return nil, fmt.Errorf("agent %s is configured twice", c.ID)
		}
		a := &agentState{cfg: c, llm: &llm.Client{Config: c.LLM, HTTP: deps.HTTP}}
		if c.Tools == "off" {
			a.noTools.Store(true)
		}
		r.agents[c.ID] = a
	}
	return r, nil
}

// Agents lists the configured agents, by id.
func (r *Runner) Agents() []Config {
	var out []Config
	for _, a := range r.agents {
		out = append(out, a.cfg)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Agent returns the agent named id.
func (r *Runner) Agent(id string) (Config, bool) {
	a, ok := r.agents[id]
	if !ok {
		return Config{}, false
	}
	return a.cfg, true
}

// Model is the model agent id uses by default.
func (r *Runner) Model(id string) string {
	if a, ok := r.agents[id]; ok {
		return a.llm.ModelName()
	}
	return ""
}

// Events receives a turn's progress; nil fields are not called. They are called
// from the turn's goroutine, or the run's, one at a time, never after Chat returns.
type Events struct {
	Delta  func(api.ChatDelta)
	Output func(stream string, o api.ChatOutput)
	Run    func(api.ChatRun)
	Step   func(api.ChatStep)
}

// Conversation returns a stored conversation.
func (r *Runner) Conversation(ctx context.Context, id string) (api.Conversation, error) {
	c, err := r.deps.Store.GetConversation(ctx, id)
	if errors.Is(err, history.ErrNotFound) {
		return c, fmt.Errorf("%w: %w", err, sandbox.ErrNotFound)
	}
	return c, err
}

// turn is the state of one Chat call.
type turn struct {
	r     *Runner
	a     *agentState
	conv  string
	ev    Events
	res   api.ChatResult
	model string
}

// Chat runs one user message of agent agentID (see the package doc).
func (r *Runner) Chat(ctx context.Context, agentID string, req api.ChatRequest, ev Events) (api.ChatResult, error) {
	return r.ChatWithHistory(ctx, agentID, req, nil, ev)
}

// ChatWithHistory is Chat for a client that keeps the conversation itself (the
// seed's POST /chat sends all of it): a new conversation starts with earlier (user
// and assistant messages), stored, before the message. With req.ConversationID,
// earlier is ignored.
func (r *Runner) ChatWithHistory(ctx context.Context, agentID string, req api.ChatRequest, earlier []api.CompatChatMessage, ev Events) (api.ChatResult, error) {
	a, ok := r.agents[agentID]
	if !ok {
		if len(r.ids()) == 0 {
			return api.ChatResult{}, fmt.Errorf("no agent %q: this server has no agents configured; add an agents: block to its config file or start it with --agents-config ROLES.json: %w", agentID, sandbox.ErrNotFound)
		}
		return api.ChatResult{}, fmt.Errorf("no agent %q (configured: %s): %w", agentID, strings.Join(r.ids(), ", "), sandbox.ErrNotFound)
	}
	mode := req.Mode
	switch mode {
	case "", api.ChatModeChat:
		mode = api.ChatModeChat
	case api.ChatModeExecute:
		if !a.cfg.runs() {
			return api.ChatResult{}, fmt.Errorf("agent %s does not run code (its vm_execution is not enabled): %w", agentID, sandbox.ErrInvalid)
		}
	default:
		return api.ChatResult{}, fmt.Errorf("mode %q: want chat or execute: %w", req.Mode, sandbox.ErrInvalid)
	}
	if strings.TrimSpace(req.Message) == "" {
		return api.ChatResult{}, fmt.Errorf("message is empty: %w", sandbox.ErrInvalid)
	}
	if req.MaxSteps < 0 {
		return api.ChatResult{}, fmt.Errorf("max_steps %d: want a positive number: %w", req.MaxSteps, sandbox.ErrInvalid)
	}
	t := &turn{r: r, a: a, ev: ev, model: req.Model}
	if t.model == "" {
		t.model = a.llm.ModelName()
	}
	prior, err := t.open(ctx, req.ConversationID)
	if err != nil {
		return api.ChatResult{}, err
	}
	defer r.locks.lock(t.conv)()
	if req.ConversationID != "" { // re-read under the lock: a turn may have just ended
		if prior, err = t.messages(ctx); err != nil {
			return api.ChatResult{}, err
		}
	}
	t.res = api.ChatResult{ConversationID: t.conv, AgentID: agentID, Steps: []api.ChatStep{}}
	if req.ConversationID == "" && len(earlier) > 0 {
		for _, m := range earlier {
			if m.Role != "user" && m.Role != "assistant" {
				continue // the agent's own system prompt applies
			}
			prior = append(prior, api.ConversationMessage{Role: m.Role, Content: m.Content})
		}
		if err := t.store(ctx, prior...); err != nil {
			return t.res, err
		}
	}
	if err := t.store(ctx, api.ConversationMessage{Role: "user", Content: req.Message}); err != nil {
		return t.res, err
	}
	if mode == api.ChatModeExecute {
		return t.execute(ctx, req.Message)
	}
	t.res.Model = t.model
	steps := a.cfg.maxSteps()
	if req.MaxSteps > 0 {
		steps = min(steps, req.MaxSteps)
	}
	return t.chat(ctx, prior, req.Message, steps)
}

func (r *Runner) ids() []string {
	var ids []string
	for id := range r.agents {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// open finds or creates the turn's conversation and returns its messages.
func (t *turn) open(ctx context.Context, id string) ([]api.ConversationMessage, error) {
	if id == "" {
		t.conv = "conv-" + randHex(8)
		if err := t.r.deps.Store.CreateConversation(ctx, t.conv, t.a.cfg.ID); err != nil {
			return nil, fmt.Errorf("start conversation: %w", err)
		}
		return nil, nil
	}
	t.conv = id
	return t.messages(ctx)
}

func (t *turn) messages(ctx context.Context) ([]api.ConversationMessage, error) {
	c, err := t.r.Conversation(ctx, t.conv)
	if err != nil {
		return nil, err
	}
	if c.AgentID != t.a.cfg.ID {
		return nil, fmt.Errorf("conversation %s is agent %s's, not %s's: %w", t.conv, c.AgentID, t.a.cfg.ID, sandbox.ErrInvalid)
	}
	return c.Messages, nil
}

func (t *turn) store(ctx context.Context, msgs ...api.ConversationMessage) error {
	// Its own context: what happened is recorded even if the caller went away.
	if err := t.r.deps.Store.AppendMessages(context.WithoutCancel(ctx), t.conv, msgs); err != nil {
		return fmt.Errorf("store conversation %s: %w", t.conv, err)
	}
	return nil
}

// chat is the loop of a chat turn.
func (t *turn) chat(ctx context.Context, prior []api.ConversationMessage, message string, maxSteps int) (api.ChatResult, error) {
	msgs := []llm.Message{{Role: "system", Content: t.systemPrompt()}}
	for _, m := range prior {
		msgs = append(msgs, toLLM(m))
	}
	msgs = append(msgs, llm.Message{Role: "user", Content: message})
	lastFailure := ""
	for step := 1; ; step++ {
		if step > maxSteps {
			t.res.StopReason = api.StopMaxSteps
			break
		}
		resp, err := t.ask(ctx, msgs, step)
		if err != nil {
			return t.res, err
		}
		asst := resp.Message
		asst.Role = "assistant"
		msgs = append(msgs, asst)
		t.res.Message = asst.Content
		st := api.ChatStep{Index: step, Content: asst.Content, Runs: []api.ChatRun{}}
		stored := []api.ConversationMessage{fromLLM(asst, step)}
		var codes []code
		if t.a.cfg.runs() {
			codes = t.codeOf(ctx, asst)
		}
		if len(codes) == 0 {
			if err := t.store(ctx, stored...); err != nil {
				return t.res, err
			}
			t.endStep(st)
			t.res.StopReason = api.StopAnswered
			break
		}
		for i, c := range codes {
			run, err := t.run(ctx, step, i, c)
			if err != nil {
				t.store(ctx, stored...)
				return t.res, err
			}
			st.Runs = append(st.Runs, run)
		}
		fb, fbStored := t.feedback(asst, st)
		msgs = append(msgs, fb...)
		if err := t.store(ctx, append(stored, fbStored...)...); err != nil {
			return t.res, err
		}
		t.endStep(st)
		sig := failureSignature(st.Runs)
		if sig != "" && sig == lastFailure {
			t.res.StopReason = api.StopRepeatedFailure
			break
		}
		lastFailure = sig
	}
	t.res.Success = t.res.StopReason == api.StopAnswered && lastOK(t.res.Steps)
	return t.res, nil
}

func (t *turn) endStep(st api.ChatStep) {
	t.res.Steps = append(t.res.Steps, st)
	if t.ev.Step != nil {
		t.ev.Step(st)
	}
}

// lastOK reports whether the last runs of the turn (the latest step that ran code)
// all succeeded.
func lastOK(steps []api.ChatStep) bool {
	for i := len(steps) - 1; i >= 0; i-- {
		if len(steps[i].Runs) > 0 {
			return failureSignature(steps[i].Runs) == ""
		}
	}
	return true
}

// ask sends msgs to the model; with tools when the agent runs code and the model can
// call them.
func (t *turn) ask(ctx context.Context, msgs []llm.Message, step int) (llm.Response, error) {
	req := llm.Request{Model: t.model, Messages: msgs}
	if t.ev.Delta != nil {
		req.OnDelta = func(s string) { t.ev.Delta(api.ChatDelta{Step: step, Text: s}) }
	}
	useTools := t.a.cfg.runs() && !t.a.noTools.Load()
	if useTools {
		req.Tools = []llm.Tool{runCodeTool(t.a.cfg.languages())}
	}
	resp, err := t.a.llm.Chat(ctx, req)
	if err != nil && useTools && t.a.cfg.Tools != "on" && llm.ToolsUnsupported(err) {
		t.r.log.Info("the model cannot call tools; using fenced code blocks", "agent", t.a.cfg.ID, "model", t.model)
		t.a.noTools.Store(true)
		req.Tools = nil
		resp, err = t.a.llm.Chat(ctx, req)
	}
	if err != nil {
		if ctx.Err() != nil {
			return resp, fmt.Errorf("agent %s: %w", t.a.cfg.ID, ctx.Err())
		}
		return resp, fmt.Errorf("agent %s, model %s: %w: %w", t.a.cfg.ID, t.model, ErrLLM, err)
	}
	if resp.Model != "" {
		t.res.Model = resp.Model
	}
	return resp, nil
}

func toLLM(m api.ConversationMessage) llm.Message {
	out := llm.Message{Role: m.Role, Content: m.Content, ToolCallID: m.ToolCallID}
	for _, c := range m.ToolCalls {
		out.ToolCalls = append(out.ToolCalls, llm.ToolCall{ID: c.ID, Type: "function", Function: llm.FunctionCall{Name: c.Name, Arguments: c.Arguments}})
	}
	return out
}

func fromLLM(m llm.Message, step int) api.ConversationMessage {
	out := api.ConversationMessage{Role: m.Role, Content: m.Content, ToolCallID: m.ToolCallID, Step: step}
	for _, c := range m.ToolCalls {
		out.ToolCalls = append(out.ToolCalls, api.ChatToolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments})
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// keyedMutex is one mutex per key, dropped when no one holds or waits for it.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyed
}

type keyed struct {
	sync.Mutex
	n int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyed{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyed{}
		k.m[key] = e
	}
	e.n++
	k.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		k.mu.Lock()
		if e.n--; e.n == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
