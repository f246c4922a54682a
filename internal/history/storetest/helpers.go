package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/history"
)

// t0 has a nanosecond part, so round trips prove nothing is rounded.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)

// openTest opens a store on a fresh database and closes it when the test ends; the
// returned Open opens other stores on the same database.
func openTest(t *testing.T, newDB NewDB) (history.Store, Open) {
	t.Helper()
	open := newDB(t)
	s, err := open(context.Background())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, open
}

// conversations is the agent loop's store (internal/agent.Store), which the daemon
// gets from the same object as the history.
type conversations interface {
	history.Store
	CreateConversation(ctx context.Context, id, agentID string) error
	AppendMessages(ctx context.Context, id string, msgs []api.ConversationMessage) error
	GetConversation(ctx context.Context, id string) (api.Conversation, error)
}

func convStore(t *testing.T, s history.Store) conversations {
	t.Helper()
	c, ok := s.(conversations)
	if !ok {
		t.Fatalf("%T does not keep conversations (internal/agent.Store), which the daemon needs of its history", s)
	}
	return c
}

func keyStore(t *testing.T, s history.Store) auth.Store {
	t.Helper()
	k, ok := s.(auth.Store)
	if !ok {
		t.Fatalf("%T does not keep API keys (auth.Store), which the daemon needs of its history", s)
	}
	return k
}

// finishedRun returns a complete run of sandbox sb, started i seconds
// after t0.
func finishedRun(id, agent, sb string, i int, verdict string) history.Run {
	status := history.StatusDone
	if verdict == history.VerdictBlocked {
		status = history.StatusBlocked
	}
	return history.Run{
		ID:          id,
		AgentID:     agent,
		SandboxID:   sb,
		Language:    "python",
		Code:        fmt.Sprintf("print(%d)", i),
		Status:      status,
		Verdict:     verdict,
		Stdout:      fmt.Sprintf("%d\n", i),
		StartedAt:   t0.Add(time.Duration(i) * time.Second),
		CompletedAt: t0.Add(time.Duration(i)*time.Second + 500*time.Millisecond),
		DurationMS:  500,
	}
}

// mustRecord stores complete runs.
func mustRecord(t *testing.T, s history.Store, runs ...history.Run) {
	t.Helper()
	for _, r := range runs {
		if err := s.RecordRun(context.Background(), r); err != nil {
			t.Fatalf("RecordRun(%s): %v", r.ID, err)
		}
	}
}

// ids returns the IDs of runs, in order.
func ids(runs []history.Run) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.ID
	}
	return out
}

// The helpers the stores' own tests share with this suite.
var (
	// T0 has a nanosecond part, so round trips prove nothing is rounded.
	T0 = t0
	// FinishedRun returns a complete run of sandbox sb, started i seconds after T0.
	FinishedRun = finishedRun
	// MustRecord stores complete runs, failing the test on an error.
	MustRecord = mustRecord
	// IDs returns the IDs of runs, in order.
	IDs = ids
)
