package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/vmexec/vmexec/api"
)

// ChatOutput receives a streamed chat turn's events; nil fields are skipped.
type ChatOutput struct {
	// Delta receives the model's text as it comes.
	Delta func(api.ChatDelta)
	// Stdout and Stderr receive a run's output as the program writes it.
	Stdout func(api.ChatOutput)
	Stderr func(api.ChatOutput)
	// Run receives each run's outcome, Step each step's.
	Run  func(api.ChatRun)
	Step func(api.ChatStep)
}

// Chat sends one message to agent agentID and returns the turn's outcome. It is not
// retried: a turn may have run code before it failed.
func (c *Client) Chat(ctx context.Context, agentID string, req api.ChatRequest) (api.ChatResult, error) {
	var res api.ChatResult
	body, err := json.Marshal(req)
	if err != nil {
		return res, fmt.Errorf("encode request: %w", err)
	}
	_, err = c.once(ctx, "POST", "/v1/agents/"+url.PathEscape(agentID)+"/chat", body, &res)
	return res, err
}

// ChatStream is Chat with the turn's events as they happen.
func (c *Client) ChatStream(ctx context.Context, agentID string, req api.ChatRequest, out ChatOutput) (api.ChatResult, error) {
	var res api.ChatResult
	err := c.Stream(ctx, "/v1/agents/"+url.PathEscape(agentID)+"/chat", req, func(ev Event) error {
		var err error
		switch ev.Name {
		case api.EventDelta:
			err = deliver(ev, out.Delta)
		case api.EventStdout, api.EventStderr:
			err = deliver(ev, pick(ev.Name, out.Stdout, out.Stderr))
		case api.EventRun:
			err = deliver(ev, out.Run)
		case api.EventStep:
			err = deliver(ev, out.Step)
		case api.EventResult:
			err = deliver(ev, func(r api.ChatResult) { res = r })
		}
		return err
	})
	return res, err
}

func deliver[T any](ev Event, f func(T)) error {
	if f == nil {
		return nil
	}
	var v T
	if err := json.Unmarshal(ev.Data, &v); err != nil {
		return fmt.Errorf("vmexec: decode %s event: %w", ev.Name, err)
	}
	f(v)
	return nil
}

// Conversation returns a stored conversation with an agent.
func (c *Client) Conversation(ctx context.Context, id string) (api.Conversation, error) {
	var out api.Conversation
	err := c.do(ctx, "GET", "/v1/conversations/"+url.PathEscape(id), nil, &out)
	return out, err
}
