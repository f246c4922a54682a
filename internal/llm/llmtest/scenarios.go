package llmtest

import (
	"fmt"
	"sort"
	"strings"
)

// Scenario code: the fix loop's first attempt fails with a NameError, its second
// (written once the model has been shown that error) prints the answer.
const (
	BrokenCode = "import math\nprint(math.factorial(n))\n"
	FixedCode  = "import math\nn = 10\nprint(math.factorial(n))\n"
	FixedOut   = "3628800"
	FinalText  = "The factorial of 10 is 3628800."
)

// sawError reports whether the model was told of a NameError since its last
// answer, and sawSuccess whether it was told of a successful run.
func sawError(r Request) bool { return strings.Contains(sinceAssistant(r), "NameError") }

func sawSuccess(r Request) bool {
	s := sinceAssistant(r)
	return strings.Contains(s, FixedOut) && !strings.Contains(s, "NameError")
}

// sinceAssistant is the text of the messages after the last assistant message.
func sinceAssistant(r Request) string {
	var b strings.Builder
	for i := len(r.Messages) - 1; i >= 0 && r.Messages[i].Role != "assistant"; i-- {
		b.WriteString(r.Messages[i].Content)
	}
	return b.String()
}

// FixFenced is a model writing fenced blocks: broken code, then (shown the error) a
// fix, then (shown the output) a final answer without code.
func FixFenced(r Request, _ int) Turn {
	switch {
	case sawSuccess(r):
		return Turn{Content: FinalText}
	case sawError(r):
		return Turn{Content: "I forgot to define n. Fixed:\n\n```python\n" + FixedCode + "```\n"}
	}
	return Turn{Content: "Let me compute it.\n\n```python\n" + BrokenCode + "```\n"}
}

// FixTools is FixFenced with run_code tool calls, their arguments streamed in
// 5-byte pieces.
func FixTools(r Request, _ int) Turn {
	switch {
	case sawSuccess(r):
		return Turn{Content: FinalText}
	case sawError(r):
		return Turn{Content: "Fixing it.", ToolCalls: []Call{RunCode("python", FixedCode)}, Chunk: 5}
	}
	return Turn{ToolCalls: []Call{RunCode("python", BrokenCode)}, Chunk: 5}
}

// scenarios are the named responders cmd serves.
var scenarios = map[string]Responder{
	"fix-fenced": FixFenced,
	"fix-tools":  FixTools,
	"forever":    Forever(Turn{Content: "Again:\n\n```bash\necho again\n```\n"}),
	"hello":      Forever(Turn{Content: "Hello! No code needed."}),
	"echo": func(r Request, _ int) Turn {
		return Turn{Content: "You said: " + r.Last().Content}
	},
	"rate-limited": func(_ Request, n int) Turn {
		if n%2 == 0 {
			return Turn{Status: 429, RetryAfter: "0", Content: "slow down"}
		}
		return Turn{Content: "Answered after a 429."}
	},
	"malformed-tool": Script(Turn{ToolCalls: []Call{{Name: "run_code", Arguments: `{"language": "python", "code": "print(1)"`}}},
		Turn{Content: "Sorry about that."}),
}

// Scenario returns the named responder.
func Scenario(name string) (Responder, error) {
	r, ok := scenarios[name]
	if !ok {
		return nil, fmt.Errorf("no scenario %q (have %s)", name, strings.Join(ScenarioNames(), ", "))
	}
	return r, nil
}

// ScenarioNames lists the scenarios.
func ScenarioNames() []string {
	var out []string
	for k := range scenarios {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
