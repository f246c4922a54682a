package api

import "time"

// The agent routes: POST /v1/agents/{id}/chat, GET /v1/conversations/{id}, and the
// seed's POST /chat.

// Chat modes.
const (
	ChatModeChat    = "chat"    // ask the LLM; run the code it writes; show it the results; repeat
	ChatModeExecute = "execute" // run the message's own code blocks, without the LLM
)

// Why a chat turn stopped.
const (
	StopAnswered        = "answered"         // the model answered without code
	StopMaxSteps        = "max_steps"        // the step cap was reached with code still coming
	StopRepeatedFailure = "repeated_failure" // the model repeated a failure identical to the last
	StopExecuted        = "executed"         // execute mode: the message's blocks ran
)

// Statuses of a ChatRun.
const (
	ChatRunExecuted = "executed" // it ran: see result
	ChatRunBlocked  = "blocked"  // the policy refused it before it ran: see result
	ChatRunRefused  = "refused"  // not run (bad tool arguments, a language the agent may not use, too long): see reason
)

// ChatRequest is one user message to an agent.
type ChatRequest struct {
	Message string `json:"message"`
	// ConversationID continues a stored conversation; empty starts one.
	ConversationID string `json:"conversation_id,omitempty"`
	// Mode is chat (the default) or execute.
	Mode string `json:"mode,omitempty"`
	// MaxSteps lowers the agent's step cap for this message.
	MaxSteps int `json:"max_steps,omitempty"`
	// Model overrides the agent's model for this message.
	Model string `json:"model,omitempty"`
}

// ChatResult is the outcome of one user message.
type ChatResult struct {
	ConversationID string `json:"conversation_id"`
	AgentID        string `json:"agent_id"`
	Model          string `json:"model,omitempty"`
	// Message is the model's last text (execute mode: a summary of the runs).
	Message string     `json:"message"`
	Steps   []ChatStep `json:"steps"`
	// Success: the turn ended as it should (the model answered without code, or in
	// execute mode every block ran ok) and the last step's runs all succeeded.
	Success    bool   `json:"success"`
	StopReason string `json:"stop_reason"`
}

// ChatStep is one LLM answer (execute mode: the message itself) and the runs of the
// code in it.
type ChatStep struct {
	Index   int       `json:"index"`
	Content string    `json:"content"`
	Runs    []ChatRun `json:"runs"`
}

// ChatRun is one piece of code of a step: a fenced block or a run_code tool call.
type ChatRun struct {
	Step  int `json:"step"`
	Index int `json:"index"`
	// Source is "block" or "tool_call".
	Source     string      `json:"source"`
	ToolCallID string      `json:"tool_call_id,omitempty"`
	Language   string      `json:"language"`
	Code       string      `json:"code"`
	Status     string      `json:"status"`
	Reason     string      `json:"reason,omitempty"`
	Result     *ExecResult `json:"result,omitempty"`
}

// ChatDelta is the data of a streamed chat's delta event: model text as it comes.
type ChatDelta struct {
	Step int    `json:"step"`
	Text string `json:"text"`
}

// ChatOutput is the data of a streamed chat's stdout and stderr events.
type ChatOutput struct {
	Step int    `json:"step"`
	Run  int    `json:"run"`
	Data string `json:"data"`
}

// Events of a streamed chat (Accept: text/event-stream), besides stdout, stderr,
// result and error: delta (ChatDelta), run (ChatRun, when a run is done) and step
// (ChatStep, when a step is done). result carries the ChatResult.
const (
	EventDelta = "delta"
	EventRun   = "run"
	EventStep  = "step"
)

// Conversation is a stored conversation with an agent.
type Conversation struct {
	ID        string                `json:"id"`
	AgentID   string                `json:"agent_id"`
	CreatedAt time.Time             `json:"created_at"`
	UpdatedAt time.Time             `json:"updated_at"`
	Messages  []ConversationMessage `json:"messages"`
}

// ConversationMessage is one message of a conversation, as the model saw it.
type ConversationMessage struct {
	Seq        int            `json:"seq"`
	Role       string         `json:"role"`
	Content    string         `json:"content"`
	ToolCalls  []ChatToolCall `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
	// Step is the step of the turn the message belongs to (0 for a user message).
	Step int `json:"step"`
	// RunIDs are the history rows (execution ids) of the runs it reports.
	RunIDs    []string  `json:"run_ids,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// ChatToolCall is a tool call an assistant message made.
type ChatToolCall struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// CompatChatRequest is the seed's POST /chat body.
type CompatChatRequest struct {
	Role           string              `json:"role"`
	Messages       []CompatChatMessage `json:"messages"`
	ConversationID string              `json:"conversation_id,omitempty"`
	Model          string              `json:"model,omitempty"`
}

// CompatChatMessage is one message of the seed's chat.
type CompatChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// CompatChatResponse is the seed's answer: status success with message (the reply,
// then "\n\n--- VM Execution Results ---\n" and each run's output) and model_used,
// or status error with error.
type CompatChatResponse struct {
	Status         string `json:"status"`
	Message        string `json:"message,omitempty"`
	ModelUsed      string `json:"model_used,omitempty"`
	ConversationID string `json:"conversation_id,omitempty"`
	Error          string `json:"error,omitempty"`
	// Code is the error's class, as Error.Code.
	Code string `json:"code,omitempty"`
}
