package api

// Server-Sent Events of the streaming routes (POST /v1/exec, POST
// /v1/sandboxes/{id}/exec and POST /v1/parse-execute with Accept: text/event-stream).
// Each event's data is one line of JSON:
//
//	stdout, stderr  an OutputChunk, as the program writes
//	block           a BlockResult, when a block of a parse-execute is done
//	result          exactly the body the non-streaming call answers with, last
//	error           an Error: the request failed before or outside the run, last
//
// A comment line (": keep-alive") is sent every 15 s while nothing else is.
const (
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventBlock  = "block"
	EventResult = "result"
	EventError  = "error"
)

// OutputChunk is the data of a stdout or stderr event: text the program wrote, in
// order. A chunk never ends inside a UTF-8 character, and ends at a line end unless a
// line is long or the program paused in mid-line; secrets are redacted per line (see
// the README's "Streaming" section for what a chunk can miss that the result catches).
type OutputChunk struct {
	Data string `json:"data"`
	// Block is the index of the parse-execute block that wrote it.
	Block *int `json:"block,omitempty"`
}
