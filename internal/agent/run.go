package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/codeblock"
	"github.com/vmexec/vmexec/internal/llm"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// code is one piece of code of an answer, before it runs.
type code struct {
	source, toolCallID string
	language, code     string
	refused            string // why it is not run
}

// RunCodeTool is the name of the tool the model calls to run code.
const RunCodeTool = "run_code"

func runCodeTool(langs []string) llm.Tool {
	params, _ := json.Marshal(map[string]any{
		"type": "object", "required": []string{"language", "code"},
		"properties": map[string]any{
			"language": map[string]any{"type": "string", "enum": langs},
			"code":     map[string]any{"type": "string", "description": "the whole program or script"},
		},
	})
	return llm.Tool{Type: "function", Function: llm.ToolFunction{Name: RunCodeTool,
		Description: "Run code in your own persistent sandbox and get its verdict, exit code and output. " +
			"Files persist between runs; a run that fails is rolled back, so a bad run cannot break the sandbox.",
		Parameters: params}}
}

// systemPrompt is the agent's prompt and, when it runs code, what its sandbox is.
func (t *turn) systemPrompt() string {
	p := strings.TrimSpace(t.a.cfg.SystemPrompt)
	if p == "" {
		p = "You are a helpful assistant."
	}
	if !t.a.cfg.runs() {
		return p
	}
	how := "call the run_code tool, or write a fenced code block labelled with its language (```python)"
	if t.a.noTools.Load() {
		how = "write a fenced code block labelled with its language (```python ... ```); every such block is run, in order"
	}
	return p + "\n\nYou have a Linux sandbox of your own to run code in (" + strings.Join(t.a.cfg.languages(), ", ") + "). To run code, " + how +
		". Files you write under /home/user persist between runs and turns. Each run is a transaction: a run that fails " +
		"(non-zero exit, timeout, a limit) is rolled back, undoing its changes. After each run you are shown its verdict, " +
		"exit code and output; if it failed, fix the code and run it again. When the task is done, answer without code."
}

// codeOf returns the code of an answer: its run_code calls, else its fenced blocks.
func (t *turn) codeOf(ctx context.Context, m llm.Message) []code {
	var out []code
	if len(m.ToolCalls) > 0 {
		for _, c := range m.ToolCalls {
			out = append(out, t.check(toolCode(c)))
		}
		return out
	}
	blocks, err := codeblock.Extract(ctx, m.Content, codeblock.DefaultOptions())
	if err != nil {
		return []code{{source: "block", refused: "the answer could not be parsed for code blocks: " + err.Error()}}
	}
	for _, b := range blocks {
		if !b.Known { // output samples, JSON, unknown languages: not code to run
			continue
		}
		out = append(out, t.check(code{source: "block", language: b.Language, code: b.Code}))
	}
	return out
}

// toolCode reads a tool call's arguments; malformed ones are refused with a reason
// the model can act on.
func toolCode(c llm.ToolCall) code {
	out := code{source: "tool_call", toolCallID: c.ID}
	if c.Function.Name != RunCodeTool {
		out.refused = fmt.Sprintf("there is no tool %q; call %s with {\"language\": ..., \"code\": ...}", c.Function.Name, RunCodeTool)
		return out
	}
	var args struct {
		Language string `json:"language"`
		Code     string `json:"code"`
	}
	if err := json.Unmarshal([]byte(c.Function.Arguments), &args); err != nil {
		out.refused = fmt.Sprintf("the arguments are not valid JSON (%v); call %s with {\"language\": ..., \"code\": ...}", err, RunCodeTool)
		return out
	}
	out.language, out.code = args.Language, args.Code
	return out
}

// check applies the agent's own limits: its languages and max_code_length.
func (t *turn) check(c code) code {
	if c.refused != "" {
		return c
	}
	langs := t.a.cfg.languages()
	lang, ok := codeblock.Canonical(c.language)
	switch {
	case !ok || !slices.Contains(langs, lang):
		c.refused = fmt.Sprintf("language %q is not one this agent may run (%s)", c.language, strings.Join(langs, ", "))
	case strings.TrimSpace(c.code) == "":
		c.refused = "the code is empty"
	case t.a.cfg.VMExecution.MaxCodeLength > 0 && len(c.code) > t.a.cfg.VMExecution.MaxCodeLength:
		c.refused = fmt.Sprintf("the code is %d bytes, over this agent's max_code_length of %d", len(c.code), t.a.cfg.VMExecution.MaxCodeLength)
	default:
		c.language = lang
	}
	return c
}

// run runs one piece of code as a transaction in the agent's sandbox.
func (t *turn) run(ctx context.Context, step, i int, c code) (api.ChatRun, error) {
	run := api.ChatRun{Step: step, Index: i, Source: c.source, ToolCallID: c.toolCallID, Language: c.language, Code: c.code}
	defer func() {
		if t.ev.Run != nil {
			t.ev.Run(run)
		}
	}()
	if c.refused != "" {
		run.Status, run.Reason = api.ChatRunRefused, c.refused
		return run, nil
	}
	var out sandbox.OutputFunc
	if t.ev.Output != nil {
		out = func(stream string, p []byte) {
			t.ev.Output(stream, api.ChatOutput{Step: step, Run: i, Data: string(p)})
		}
	}
	vm := t.a.cfg.VMExecution
	res, err := t.r.deps.Exec.ExecStream(ctx, api.ExecRequest{AgentID: t.a.cfg.ID, Language: c.language, Code: c.code,
		Limits: api.Limits{TimeoutMS: vm.ExecutionTimeoutMS}, History: t.a.cfg.policy(),
		Metadata: map[string]any{"source": "agent", "conversation_id": t.conv, "step": step, "run": i}}, out)
	switch {
	case errors.Is(err, sandbox.ErrInvalid):
		run.Status, run.Reason = api.ChatRunRefused, err.Error()
		return run, nil
	case err != nil:
		return run, fmt.Errorf("agent %s, step %d: %w", t.a.cfg.ID, step, err)
	case res.Blocked:
		run.Status, run.Reason, run.Result = api.ChatRunBlocked, res.BlockedReason, res
	default:
		run.Status, run.Result = api.ChatRunExecuted, res
	}
	return run, nil
}

// ok reports whether a run succeeded.
func ok(r api.ChatRun) bool { return r.Status == api.ChatRunExecuted && r.Result.Success() }

// failureSignature identifies a step's failures ("" when every run succeeded), so
// that a model repeating the same failed code with the same outcome is caught.
func failureSignature(runs []api.ChatRun) string {
	h := sha256.New()
	failed := false
	for _, r := range runs {
		if ok(r) {
			continue
		}
		failed = true
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", r.Language, r.Code, r.Status, r.Reason)
		if r.Result != nil {
			fmt.Fprintf(h, "%s\x00%d\x00%s\x00%s\x00", r.Result.Verdict, r.Result.ExitCode, r.Result.Stdout, r.Result.Stderr)
		}
	}
	if !failed {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// feedback is what the model is told of a step's runs: a tool message per call, or
// one user message for the blocks.
func (t *turn) feedback(asst llm.Message, st api.ChatStep) ([]llm.Message, []api.ConversationMessage) {
	var msgs []llm.Message
	var stored []api.ConversationMessage
	limit := t.a.cfg.feedbackBytes()
	if len(asst.ToolCalls) > 0 {
		for _, r := range st.Runs {
			m := llm.Message{Role: "tool", ToolCallID: r.ToolCallID, Name: RunCodeTool, Content: toolResult(r, limit)}
			msgs = append(msgs, m)
			s := fromLLM(m, st.Index)
			s.RunIDs = runIDs(r)
			stored = append(stored, s)
		}
		return msgs, stored
	}
	var b strings.Builder
	b.WriteString("Results of running your code:\n")
	var ids []string
	allOK := true
	for _, r := range st.Runs {
		b.WriteString("\n")
		b.WriteString(describeRun(r, limit))
		ids = append(ids, runIDs(r)...)
		allOK = allOK && ok(r)
	}
	if allOK {
		b.WriteString("\nIf the task is done, answer without code.")
	} else {
		b.WriteString("\nFix the code and run it again, or answer without code if you cannot.")
	}
	m := llm.Message{Role: "user", Content: b.String()}
	s := fromLLM(m, st.Index)
	s.RunIDs = ids
	return []llm.Message{m}, []api.ConversationMessage{s}
}

func runIDs(r api.ChatRun) []string {
	if r.Result != nil && r.Result.ExecutionID != "" {
		return []string{r.Result.ExecutionID}
	}
	return nil
}

// toolResult is a run's result as a tool message: JSON.
func toolResult(r api.ChatRun, limit int) string {
	m := map[string]any{"status": r.Status}
	if r.Reason != "" {
		m["reason"] = r.Reason
	}
	if res := r.Result; res != nil && r.Status == api.ChatRunExecuted {
		m["verdict"], m["exit_code"] = res.Verdict, res.ExitCode
		m["stdout"], m["stderr"] = cut(res.Stdout, limit, res.StdoutTruncated), cut(res.Stderr, limit, res.StderrTruncated)
		m["rolled_back"] = res.RolledBack
		if res.RolledBack {
			m["note"] = "the run failed and the sandbox was rolled back to its state before it"
		}
		if res.Error != "" {
			m["error"] = res.Error
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// describeRun is a run's result as text.
func describeRun(r api.ChatRun, limit int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run %d (%s): ", r.Index+1, firstNonEmpty(r.Language, "no language"))
	switch r.Status {
	case api.ChatRunRefused:
		fmt.Fprintf(&b, "not run: %s\n", r.Reason)
		return b.String()
	case api.ChatRunBlocked:
		fmt.Fprintf(&b, "blocked by the sandbox's policy: %s\n", r.Reason)
		return b.String()
	}
	res := r.Result
	fmt.Fprintf(&b, "verdict %s, exit code %d.", res.Verdict, res.ExitCode)
	if res.RolledBack {
		b.WriteString(" The run failed and the sandbox was rolled back to its state before it.")
	}
	if res.Error != "" {
		fmt.Fprintf(&b, " %s.", res.Error)
	}
	b.WriteString("\n")
	for _, s := range []struct {
		name, text string
		trunc      bool
	}{{"stdout", res.Stdout, res.StdoutTruncated}, {"stderr", res.Stderr, res.StderrTruncated}} {
		if s.text == "" {
			continue
		}
		fmt.Fprintf(&b, "%s:\n```\n%s\n```\n", s.name, strings.TrimRight(cut(s.text, limit, s.trunc), "\n"))
	}
	return b.String()
}

// cut keeps the head and tail of s within limit bytes, saying what was cut.
func cut(s string, limit int, truncated bool) string {
	if len(s) <= limit {
		if truncated {
			return s + "\n[output truncated by the sandbox's output limit]"
		}
		return s
	}
	head, tail := limit*2/3, limit/3
	h, tl := strings.ToValidUTF8(s[:head], ""), strings.ToValidUTF8(s[len(s)-tail:], "")
	return fmt.Sprintf("%s\n[… %d bytes cut …]\n%s", h, len(s)-len(h)-len(tl), tl)
}

// execute runs the message's own code blocks, without the LLM: each known block, in
// order, each as its own transaction (a failed one is rolled back and the next still
// runs, as in the seed's Execute command).
func (t *turn) execute(ctx context.Context, message string) (api.ChatResult, error) {
	st := api.ChatStep{Index: 1, Content: message, Runs: []api.ChatRun{}}
	blocks, err := codeblock.Extract(ctx, message, codeblock.DefaultOptions())
	if err != nil {
		return t.res, fmt.Errorf("%w: %w", err, sandbox.ErrInvalid)
	}
	var codes []code
	for _, b := range blocks {
		c := code{source: "block", language: b.Language, code: b.Code}
		if !b.Known {
			c.language = firstNonEmpty(b.RawLanguage, b.Language)
			c.refused = fmt.Sprintf("language %q is not one vmexec runs (%s)", c.language, strings.Join(api.Languages, ", "))
		}
		codes = append(codes, t.check(c))
	}
	var ids []string
	for i, c := range codes {
		run, err := t.run(ctx, 1, i, c)
		if err != nil {
			return t.res, err
		}
		st.Runs = append(st.Runs, run)
		ids = append(ids, runIDs(run)...)
	}
	summary := ResultsText(st.Runs)
	if len(codes) == 0 {
		summary = "No code blocks found: put the code in fenced blocks labelled with their language (```python)."
	}
	t.res.Message = summary
	t.res.StopReason = api.StopExecuted
	t.res.Success = len(codes) > 0 && failureSignature(st.Runs) == ""
	if err := t.store(ctx, api.ConversationMessage{Role: "assistant", Content: summary, Step: 1, RunIDs: ids}); err != nil {
		return t.res, err
	}
	t.endStep(st)
	return t.res, nil
}

// ResultsText is runs' results as plain text, each run's header then its output:
// what the seed appends after "--- VM Execution Results ---".
func ResultsText(runs []api.ChatRun) string {
	var b strings.Builder
	for _, r := range runs {
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "[step %d, run %d: %s] ", r.Step, r.Index+1, firstNonEmpty(r.Language, "?"))
		switch r.Status {
		case api.ChatRunRefused:
			fmt.Fprintf(&b, "not run: %s\n", r.Reason)
		case api.ChatRunBlocked:
			fmt.Fprintf(&b, "blocked: %s\n", r.Reason)
		default:
			res := r.Result
			fmt.Fprintf(&b, "%s, exit code %d", res.Verdict, res.ExitCode)
			if res.RolledBack {
				b.WriteString(", rolled back")
			}
			b.WriteString("\n")
			b.WriteString(res.Stdout)
			if res.Stderr != "" {
				if res.Stdout != "" && !strings.HasSuffix(res.Stdout, "\n") {
					b.WriteString("\n")
				}
				b.WriteString(res.Stderr)
			}
			if res.Stdout+res.Stderr != "" && !strings.HasSuffix(res.Stdout+res.Stderr, "\n") {
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}
