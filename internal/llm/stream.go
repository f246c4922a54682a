package llm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// A streamed answer is Server-Sent Events whose data lines are JSON chunks
// ({choices:[{delta:{content, tool_calls:[{index, id, function:{name, arguments}}]},
// finish_reason}]}) and a last "data: [DONE]". Tool calls arrive in pieces: the first
// piece of a call carries its index, id and name, the next ones more of its arguments
// under the same index.

type delta struct {
	Role      string      `json:"role"`
	Content   string      `json:"content"`
	ToolCalls []toolDelta `json:"tool_calls"`
}

type toolDelta struct {
	Index    *int   `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// maxStreamLine bounds one line of a stream, maxAnswer a whole answer (its chunks'
// JSON): a server that streams without end is cut off there, not at the timeout.
const (
	maxStreamLine = 4 << 20
	maxAnswer     = 16 << 20
)

// callIndex is the index of the tool call a piece belongs to. Servers send an index;
// for those that do not, a piece with a new id starts a call and one without an id
// continues the last.
func callIndex(td toolDelta, calls map[int]*ToolCall, last int) int {
	if td.Index != nil {
		return *td.Index
	}
	if td.ID == "" && last >= 0 {
		return last
	}
	for i, c := range calls {
		if c.ID == td.ID && td.ID != "" {
			return i
		}
	}
	return len(calls)
}

func readStream(r io.Reader, onDelta func(string)) (Response, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxStreamLine)
	var (
		out     Response
		content strings.Builder
		calls   = map[int]*ToolCall{}
		last    = -1 // the index of the call the last piece belonged to
		size    int
		done    bool
	)
	out.Message.Role = "assistant"
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue // event:, id:, comments and blank lines
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			done = true
			break
		}
		if data == "" {
			continue
		}
		if size += len(data); size > maxAnswer {
			return Response{}, fmt.Errorf("%w: the streamed answer passed %d bytes", ErrBadResponse, maxAnswer)
		}
		var w wireResponse
		if err := json.Unmarshal([]byte(data), &w); err != nil {
			return Response{}, fmt.Errorf("%w: a stream chunk is not JSON: %.200s", ErrBadResponse, data)
		}
		if len(w.Error) > 0 && string(w.Error) != "null" {
			return Response{}, fmt.Errorf("%w: the server sent an error mid-stream: %s", ErrBadResponse, w.Error)
		}
		if w.Model != "" {
			out.Model = w.Model
		}
		for _, ch := range w.Choices {
			if ch.FinishReason != "" {
				out.FinishReason = ch.FinishReason
			}
			d := ch.Delta
			if d == nil && ch.Message != nil { // some servers send message, not delta
				d = &delta{Content: ch.Message.Content}
			}
			if d == nil {
				continue
			}
			if d.Content != "" {
				content.WriteString(d.Content)
				onDelta(d.Content)
			}
			for _, td := range d.ToolCalls {
				idx := callIndex(td, calls, last)
				last = idx
				c := calls[idx]
				if c == nil {
					c = &ToolCall{Type: "function"}
					calls[idx] = c
				}
				if td.ID != "" {
					c.ID = td.ID
				}
				if td.Function.Name != "" {
					c.Function.Name += td.Function.Name
				}
				c.Function.Arguments += td.Function.Arguments
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Response{}, fmt.Errorf("%w: reading the stream: %w", ErrBadResponse, err)
	}
	if !done && out.FinishReason == "" {
		return Response{}, fmt.Errorf("%w: the stream ended before [DONE]", ErrBadResponse)
	}
	out.Message.Content = content.String()
	idx := make([]int, 0, len(calls))
	for i := range calls {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for n, i := range idx {
		c := *calls[i]
		if c.ID == "" {
			c.ID = fmt.Sprintf("call_%d", n)
		}
		out.Message.ToolCalls = append(out.Message.ToolCalls, c)
	}
	return out, nil
}
