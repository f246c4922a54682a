package agentproto

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Interpreter contexts.
//
// A context is a long-lived interpreter (python or javascript) that the guest agent
// starts and keeps in the sandbox, so that a cell sees what earlier cells left: its
// variables, imports and open files. It lives in the sandbox's memory, so a snapshot
// holds it and a restored or forked sandbox has it, in the state it had.
//
//	host → guest                          guest → host
//	context {context: start, spec}        contexts {contexts: [the context]}
//	context {context: stop, id}           contexts {contexts: []}   (none by that id is fine)
//	context {context: list}               contexts {contexts: [...]}
//	exec {exec with context: spec}        output {stream, data}* then result {result with cell}
//
// A cell is an exec whose request names a context (ExecRequest.Context): its code runs
// in that context's interpreter, which the guest starts first if it has none by that
// id (the result says Started). Its stdout and stderr stream as for any run; each rich
// result (a final expression's value, a display() call, a figure) is one output frame
// of stream StreamResult whose data is one CellOutput as JSON, whole (it may be larger
// than ChunkSize: a figure, up to MaxResultBytes). The result carries the cell's
// outcome (CellOutcome): the exception it raised, its execution count.
//
// Verdicts of a cell: ok; error (the cell raised); timeout (the deadline passed: the
// guest interrupted the cell, SIGINT, and if it did not stop within InterruptGrace
// killed the interpreter and started a new one, Restarted); output_limit (a stream
// passed its limit: interrupted the same way); memory_limit (the interpreter's
// processes passed the memory limit: killed and restarted); canceled (the host
// cancelled: interrupted); killed (the interpreter died during the cell: restarted).

// Message types of contexts.
const (
	TypeContext  = "context"
	TypeContexts = "contexts"
)

// Context operations (ContextRequest.Op).
const (
	ContextStart = "start"
	ContextStop  = "stop"
	ContextList  = "list"
)

// StreamResult is the output stream of a cell's rich results (see above).
const StreamResult = "result"

// VerdictError is the verdict of a cell that raised an exception.
const VerdictError = "error"

// MaxResultBytes bounds one rich result's JSON; a bigger one is replaced by its text.
const MaxResultBytes = 8 << 20

// InterruptGrace is how long the guest waits for an interrupted cell to stop before it
// kills the interpreter.
const InterruptGrace = 3 * time.Second

// ContextSpec says which context a cell runs in, or which to start.
type ContextSpec struct {
	ID       string `json:"id"`
	Language string `json:"language"`          // python or javascript
	Cwd      string `json:"cwd,omitempty"`     // default: the run user's home
	Default  bool   `json:"default,omitempty"` // the sandbox's default context for Language
}

// ContextRequest is the body of a context message.
type ContextRequest struct {
	Op   string       `json:"op"`
	Spec *ContextSpec `json:"spec,omitempty"` // start
	ID   string       `json:"id,omitempty"`   // stop
}

// ContextInfo describes a live context.
type ContextInfo struct {
	ID       string    `json:"id"`
	Language string    `json:"language"`
	Cwd      string    `json:"cwd"`
	Default  bool      `json:"default,omitempty"`
	Created  time.Time `json:"created"`
	PID      int       `json:"pid"` // the interpreter's, inside the sandbox
	Count    int       `json:"execution_count"`
}

// CellOutput is one rich result of a cell. Text is the plain form (repr); the other
// fields are set where the object offers that representation; PNG and JPEG are base64.
type CellOutput struct {
	Text         string         `json:"text,omitempty"`
	HTML         string         `json:"html,omitempty"`
	Markdown     string         `json:"markdown,omitempty"`
	SVG          string         `json:"svg,omitempty"`
	PNG          string         `json:"png,omitempty"`
	JPEG         string         `json:"jpeg,omitempty"`
	LaTeX        string         `json:"latex,omitempty"`
	JSON         any            `json:"json,omitempty"`
	JavaScript   string         `json:"javascript,omitempty"`
	Extra        map[string]any `json:"extra,omitempty"`
	IsMainResult bool           `json:"is_main_result"` // the final expression's value
}

// CellError is the exception a cell raised.
type CellError struct {
	Name      string `json:"name"`      // e.g. "ValueError", "ReferenceError"
	Value     string `json:"value"`     // the message
	Traceback string `json:"traceback"` // formatted, newline-separated
}

// CellOutcome is what an ExecResult of a cell adds.
type CellOutcome struct {
	Context        string     `json:"context"` // the context's id (the default's, when asked for it)
	ExecutionCount int        `json:"execution_count"`
	Error          *CellError `json:"error,omitempty"`
	// Started: the guest had no interpreter for the context and started one for this
	// cell. Restarted: the interpreter did not survive the cell (killed after an
	// interrupt it ignored, a memory limit, or it died) and a new one was started:
	// the context's state is gone.
	Started   bool `json:"started,omitempty"`
	Restarted bool `json:"restarted,omitempty"`
}

// StartContext starts a context in the guest (one by that id already running is
// returned as it is).
func (c *Client) StartContext(ctx context.Context, spec ContextSpec) (ContextInfo, error) {
	list, err := c.contextCall(ctx, ContextRequest{Op: ContextStart, Spec: &spec})
	if err == nil && len(list) != 1 {
		err = fmt.Errorf("start answered %d contexts: %w", len(list), ErrUnexpected)
	}
	if err != nil {
		return ContextInfo{}, fmt.Errorf("start context: %w", err)
	}
	return list[0], nil
}

// StopContext kills a context's interpreter; an unknown id is not an error.
func (c *Client) StopContext(ctx context.Context, id string) error {
	if _, err := c.contextCall(ctx, ContextRequest{Op: ContextStop, ID: id}); err != nil {
		return fmt.Errorf("stop context: %w", err)
	}
	return nil
}

// ListContexts lists the guest's live contexts, oldest first.
func (c *Client) ListContexts(ctx context.Context) ([]ContextInfo, error) {
	list, err := c.contextCall(ctx, ContextRequest{Op: ContextList})
	if err != nil {
		return nil, fmt.Errorf("list contexts: %w", err)
	}
	return list, nil
}

func (c *Client) contextCall(ctx context.Context, req ContextRequest) ([]ContextInfo, error) {
	e, err := c.call(ctx, &Envelope{Type: TypeContext, Context: &req}, TypeContexts)
	if err != nil {
		return nil, err
	}
	if e.Contexts == nil {
		return []ContextInfo{}, nil
	}
	return e.Contexts, nil
}

// DecodeResult decodes the data of a StreamResult output frame.
func DecodeResult(p []byte) (CellOutput, error) {
	var out CellOutput
	if err := json.Unmarshal(p, &out); err != nil {
		return CellOutput{}, fmt.Errorf("cell result: %w: %w", ErrMalformed, err)
	}
	return out, nil
}
