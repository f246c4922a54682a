package storetest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// A conversation comes back as stored, in order, across a reopen: it is continued by
// id after a daemon restart.
func testConversations(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	st, reopen := openTest(t, newDB)
	s := convStore(t, st)
	if err := s.CreateConversation(ctx, "conv-1", "dev"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateConversation(ctx, "conv-1", "dev"); !errors.Is(err, history.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	first := []api.ConversationMessage{{Role: "user", Content: "compute 10!"},
		{Role: "assistant", Step: 1, ToolCalls: []api.ChatToolCall{{ID: "call_0", Name: "run_code", Arguments: `{"language":"python"`}}}}
	second := []api.ConversationMessage{{Role: "tool", Step: 1, ToolCallID: "call_0", Content: `{"verdict":"ok"}`, RunIDs: []string{"ex-1"}},
		{Role: "assistant", Step: 2, Content: "3628800"}}
	if err := s.AppendMessages(ctx, "conv-1", first); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendMessages(ctx, "conv-1", second); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendMessages(ctx, "nope", first); !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("append to a missing conversation: %v, want ErrNotFound", err)
	}
	s.Close()
	st2, err := reopen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	s2 := convStore(t, st2)
	c, err := s2.GetConversation(ctx, "conv-1")
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]api.ConversationMessage{}, first...), second...)
	for i := range want {
		want[i].Seq = i + 1
	}
	if c.AgentID != "dev" || c.CreatedAt.IsZero() {
		t.Errorf("conversation %+v", c)
	}
	if diff := cmp.Diff(want, c.Messages, cmpopts.IgnoreFields(api.ConversationMessage{}, "CreatedAt")); diff != "" {
		t.Errorf("messages (-want +got):\n%s", diff)
	}
	if _, err := s2.GetConversation(ctx, "nope"); !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
}
