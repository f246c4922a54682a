package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/llm"
	"github.com/vmexec/vmexec/internal/llm/llmtest"
)

// agentSteps is how many steps each measured chat turn takes.
const agentSteps = 5

// agentSeries measures the agent loop's own overhead per step: a chat turn against a
// fake model (internal/llm/llmtest) that writes one bash block per answer forever,
// capped at agentSteps steps, divided by its steps, less what a step is made of when
// measured alone in the same run: one call to the fake model and one warm run of the
// same code through /v1/exec. What is left is the loop: extracting the code, the
// conversation's SQLite writes, building the feedback, and the HTTP turn itself.
func agentSeries(tmp, runsc, tplDir string, n int) ([]series, time.Duration, error) {
	const code = "echo step"
	fake := llmtest.Start(llmtest.Forever(llmtest.Turn{Content: "Again:\n\n```bash\n" + code + "\n```\n"}))
	defer fake.Close()
	cfg := filepath.Join(tmp, "agents.yaml")
	yaml := fmt.Sprintf("agents:\n  - id: bench\n    tools: \"off\"\n    llm: {base_url: %q}\n    max_steps: 50\n    vm_execution: {enabled: true}\n", fake.URL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return nil, 0, err
	}
	d, err := startDaemon(tmp, runsc, tplDir, "--config", cfg)
	if err != nil {
		return nil, 0, err
	}
	defer d.stop()
	c := client.New(d.url)
	ctx := context.Background()
	run := func(int) error {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: "bench", Language: "bash", Code: code})
		if err == nil && strings.TrimSpace(r.Stdout) != "step" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
	for i := 0; i < 3; i++ { // create and warm the agent's sandbox
		if err := run(i); err != nil {
			return nil, 0, err
		}
	}
	model := llm.New(llm.Config{BaseURL: fake.URL})
	call, err := measure("agent: fake LLM call", n, func(int) error {
		_, err := model.Chat(ctx, llm.Request{Messages: []llm.Message{{Role: "user", Content: "go"}}})
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	warm, err := measure("agent: warm exec of its code", n, run)
	if err != nil {
		return nil, 0, err
	}
	turns, err := measure(fmt.Sprintf("agent: turn of %d steps", agentSteps), max(n/4, 3), func(int) error {
		res, err := c.Chat(ctx, "bench", api.ChatRequest{Message: "go", MaxSteps: agentSteps})
		if err == nil && (len(res.Steps) != agentSteps || res.StopReason != api.StopMaxSteps) {
			err = fmt.Errorf("unexpected turn: %d steps, %s", len(res.Steps), res.StopReason)
		}
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	step := series{name: "agent: per step (turn/steps)"}
	for _, t := range turns.d {
		step.d = append(step.d, t/agentSteps)
	}
	// Means, not medians: a turn's time is a sum of steps, so its share per step is a
	// mean, and warm runs are skewed (some wait for the previous run's background
	// snapshot), which puts a mean well above the median.
	overhead := mean(step.d) - mean(call.d) - mean(warm.d)
	return []series{call, warm, turns, step}, overhead, nil
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(max(len(d), 1))
}
