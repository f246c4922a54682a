package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
)

// Guards the caps of /v1/parse-execute: a reply too large or nested too deeply is a
// 400-class error that names the cap (before the caps, 250,000 '>' took 15 s of CPU
// and answered 200), at most MaxReplyBlocks blocks run, and a request whose client
// left runs nothing.
func TestParseExecuteCaps(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()

	for _, tt := range []struct{ name, text, want string }{
		{"deep blockquotes", strings.Repeat(">", 250_000) + "\n```bash\necho x\n```\n", "deeper than 32 levels"},
		{"too large", "```bash\necho x\n```\n" + strings.Repeat("word ", 300_000), "over the limit of 1048576 bytes"},
	} {
		_, err := h.svc.ParseExecute(ctx, api.ParseExecuteRequest{AgentID: "a", Text: tt.text})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error = %v, want ErrInvalid saying %q", tt.name, err, tt.want)
		}
	}

	reply := strings.Repeat("```bash\necho x\n```\n", MaxReplyBlocks+3)
	res, err := h.svc.ParseExecute(ctx, api.ParseExecuteRequest{AgentID: "a", Text: reply})
	if err != nil {
		t.Fatal(err)
	}
	if res.Executed != MaxReplyBlocks || res.Skipped != 3 || len(res.Blocks) != MaxReplyBlocks+3 {
		t.Fatalf("executed %d, skipped %d of %d blocks; want %d run and 3 skipped", res.Executed, res.Skipped, len(res.Blocks), MaxReplyBlocks)
	}
	if last := res.Blocks[len(res.Blocks)-1]; last.Status != api.BlockSkipped || !strings.Contains(last.Reason, "only the first 50 blocks") {
		t.Errorf("last block: %s %q", last.Status, last.Reason)
	}

	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := h.svc.ParseExecute(gone, api.ParseExecuteRequest{AgentID: "b", Text: "```bash\necho x\n```\n"}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled request: error = %v, want context.Canceled", err)
	}
	if n := h.be.count(); n != 1 {
		t.Errorf("%d sandboxes live, want only agent a's", n)
	}
}
