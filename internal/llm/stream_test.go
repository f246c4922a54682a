package llm

import (
	"errors"
	"strings"
	"testing"
)

// Servers differ in how they stream tool calls: with an index on every piece
// (OpenAI, vLLM), or whole calls without one (some Ollama versions). Either way each
// call comes out whole, in order.
func TestReadStreamToolCalls(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []FunctionCall
	}{
		{"indexed pieces", `data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"run_code","arguments":"{\"la"}}]}}]}
data: {"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"run_code","arguments":"{}"}}]}}]}
data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"nguage\":1}"}}]}}]}
data: [DONE]
`, []FunctionCall{{"run_code", `{"language":1}`}, {"run_code", "{}"}}},
		{"whole calls without index", `data: {"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"run_code","arguments":"{\"x\":1}"}}]}}]}
data: {"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"run_code","arguments":"{\"x\":2}"}}]}}]}
data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}]}
`, []FunctionCall{{"run_code", `{"x":1}`}, {"run_code", `{"x":2}`}}},
		{"continuation without id or index", `data: {"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"run_code","arguments":"{\"x\""}}]}}]}
data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]}}]}
data: [DONE]
`, []FunctionCall{{"run_code", `{"x":1}`}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := readStream(strings.NewReader(tc.stream), func(string) {})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Message.ToolCalls) != len(tc.want) {
				t.Fatalf("calls %+v, want %+v", res.Message.ToolCalls, tc.want)
			}
			for i, w := range tc.want {
				if res.Message.ToolCalls[i].Function != w {
					t.Errorf("call %d: %+v, want %+v", i, res.Message.ToolCalls[i].Function, w)
				}
			}
		})
	}
}

// A stream cut off before [DONE], one that never ends, or a chunk that is not JSON is
// a malformed answer, not a short one.
func TestReadStreamMalformed(t *testing.T) {
	endless := strings.Repeat(`data: {"choices":[{"delta":{"content":"`+strings.Repeat("x", 1000)+`"}}]}`+"\n", 20000) + "data: [DONE]\n"
	for name, in := range map[string]string{
		"cut off":  `data: {"choices":[{"delta":{"content":"hi"}}]}` + "\n",
		"not json": "data: {oops\n",
		"endless":  endless,
		"error":    `data: {"error":{"message":"model crashed"}}` + "\n",
	} {
		if _, err := readStream(strings.NewReader(in), func(string) {}); !errors.Is(err, ErrBadResponse) {
			t.Errorf("%s: err %v, want ErrBadResponse", name, err)
		}
	}
}
