package agent_test

import (
	"context"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/llm/llmtest"
)

// BenchmarkStep is the loop's own cost per step with a fake model and a fake sandbox
// (both near zero): extraction, the conversation's SQLite writes, the feedback.
// bench/ measures it against the real daemon.
func BenchmarkStep(b *testing.B) {
	srv := llmtest.Start(llmtest.Forever(llmtest.Turn{Content: "Again:\n\n```bash\necho step\n```\n"}))
	defer srv.Close()
	r, _ := newRunnerB(b, coder("dev", srv.URL))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "go", MaxSteps: 5}, agent.Events{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*5), "µs/step")
}
