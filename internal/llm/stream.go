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

// maxStreamLine bounds one line of a stream.
const maxStreamLine = 4 << 20

func readStream(r io.Reader, onDelta func(string)) (Response, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxStreamLine)
	var (
		out     Response
		content strings.Builder
		calls   = map[int]*ToolCall{}
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
			for i, td := range d.ToolCalls {
				idx := i
				if td.Index != nil {
					idx = *td.Index
				}
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
