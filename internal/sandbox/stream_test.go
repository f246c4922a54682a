package sandbox

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/redact"
)

// collector records what a streamer passes on.
type collector struct {
	mu     sync.Mutex
	chunks []string // "stream:text"
	notify chan struct{}
}

func newCollector() *collector { return &collector{notify: make(chan struct{}, 1000)} }

func (c *collector) out(stream string, p []byte) {
	c.mu.Lock()
	c.chunks = append(c.chunks, stream+":"+string(p))
	c.mu.Unlock()
	c.notify <- struct{}{}
}

func (c *collector) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.chunks...)
}

func (c *collector) text(stream string) string {
	var b strings.Builder
	for _, ch := range c.all() {
		if s, t, _ := strings.Cut(ch, ":"); s == stream {
			b.WriteString(t)
		}
	}
	return b.String()
}

func newRedactor(t *testing.T) *redact.Redactor {
	t.Helper()
	r, err := redact.New(redact.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const ghToken = "ghp_abcdefghijklmnopqrstuvwxyzABCDEF123456"

// Guards what a streaming client sees: chunks cut at line ends and never inside a
// UTF-8 character, secrets redacted even when the program wrote them in pieces, a
// private key held back until its end, and nothing lost at the end.
func TestStreamerChunks(t *testing.T) {
	key := "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\nabcdEFGH5678\n-----END RSA PRIVATE KEY-----\n"
	tests := []struct {
		name   string
		writes []string // all to stdout
		want   []string // the chunks passed on before close
		after  []string // and at close
	}{
		{"whole lines pass at once", []string{"a\nb\n"}, []string{"a\nb\n"}, nil},
		{"a partial line waits for its end", []string{"hel", "lo\nwor"}, []string{"hello\n"}, []string{"wor"}},
		{"a character split across writes is whole", []string{"caf\xc3", "\xa9\n"}, []string{"café\n"}, nil},
		{"a secret written in pieces is redacted", []string{"token=" + ghToken[:10], ghToken[10:] + "\n"},
			[]string{"token=[REDACTED:github]\n"}, nil},
		{"a private key is held to its END line", []string{"before\n" + key[:40], key[40:] + "after\n"},
			[]string{"before\n", "[REDACTED:private_key]\nafter\n"}, nil},
		{"an unfinished key is redacted at close", []string{key[:50]}, nil, []string{"[REDACTED:private_key]"}},
		{"a long line is cut at a character boundary", []string{strings.Repeat("é", maxLine)}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector()
			st := newStreamer(newRedactor(t), c.out)
			if strings.HasPrefix(tt.name, "a long line") {
				b := []byte(tt.writes[0])
				for len(b) > 0 { // odd-sized writes, splitting characters
					n := min(1001, len(b))
					st.output()("stdout", b[:n])
					b = b[n:]
				}
				st.close()
				got := c.all()
				if len(got) < 2 || c.text("stdout") != tt.writes[0] {
					t.Fatalf("a long line came as %d chunks, total %d bytes", len(got), len(c.text("stdout")))
				}
				for _, ch := range got {
					if !utf8.ValidString(ch) {
						t.Fatalf("chunk %.20q... is not valid UTF-8", ch)
					}
				}
				return
			}
			for _, w := range tt.writes {
				st.output()("stdout", []byte(w))
			}
			before := c.all()
			st.close()
			var want []string
			for _, w := range append(append([]string(nil), tt.want...), tt.after...) {
				want = append(want, "stdout:"+w)
			}
			if got := c.all(); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("chunks %q; want %q", got, want)
			}
			if len(before) > len(tt.want) {
				t.Errorf("before close %q; want only %q", before, tt.want)
			}
		})
	}
}

// Guards output written without a line end (a prompt, a progress bar): it reaches the
// client after a pause, without waiting for the line to end.
func TestStreamerFlushesAPartialLineAfterAPause(t *testing.T) {
	c := newCollector()
	st := newStreamer(newRedactor(t), c.out)
	defer st.close()
	st.output()("stderr", []byte("progress 50%"))
	select {
	case <-c.notify:
	case <-time.After(10 * time.Second):
		t.Fatal("the partial line was not passed on")
	}
	if got := c.all(); len(got) != 1 || got[0] != "stderr:progress 50%" {
		t.Fatalf("chunks %q", got)
	}
}

// Guards the stream's end: after close returns, nothing more is passed on, even from
// a write the backend makes late.
func TestStreamerNothingAfterClose(t *testing.T) {
	c := newCollector()
	st := newStreamer(newRedactor(t), c.out)
	st.output()("stdout", []byte("x"))
	st.close()
	st.output()("stdout", []byte("late\n"))
	time.Sleep(2 * flushDelay)
	if got := c.all(); len(got) != 1 || got[0] != "stdout:x" {
		t.Fatalf("chunks %q", got)
	}
}

// waitFor polls cond until it holds (no timing assertion: only a generous bound).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// Guards ExecStream: output arrives while the run runs, on its own stream, and the
// result still carries all of it.
func TestExecStreamDeliversOutputDuringTheRun(t *testing.T) {
	h := newHarness(t, nil)
	c := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *api.ExecResult, 1)
	go func() {
		res, err := h.svc.ExecStream(ctx, api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo first\nwarn careful\nwait"}, c.out)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	waitFor(t, "both streams", func() bool { return c.text("stdout") == "first\n" && c.text("stderr") == "careful\n" })
	select {
	case <-done:
		t.Fatal("the run ended before it was cancelled") // it waits for ctx
	default:
	}
	cancel()
	res := <-done
	if res.Stdout != "first\n" || res.Stderr != "careful\n" {
		t.Fatalf("result stdout %q stderr %q", res.Stdout, res.Stderr)
	}
}

// Guards a caller that goes away mid-run: the run ends canceled, its changes are
// rolled back like any failure, and the history has it.
func TestExecStreamCanceledIsRolledBackAndRecorded(t *testing.T) {
	for _, wait := range []string{"wait", "hang"} {
		t.Run(wait, func(t *testing.T) { testCanceled(t, wait) })
	}
}

// testCanceled cancels a run that waits with wait: a guest that answers the
// cancellation (wait) or one that does not (hang), whose sandbox is then replaced.
func testCanceled(t *testing.T, wait string) {
	h := newHarness(t, nil)
	h.run(t, "a", "set x before", nil)
	c := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *api.ExecResult, 1)
	go func() {
		res, err := h.svc.ExecStream(ctx, api.ExecRequest{AgentID: "a", Language: "bash", Code: "set x during\necho started\n" + wait}, c.out)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	waitFor(t, "the first output", func() bool { return c.text("stdout") == "started\n" })
	cancel()
	res := <-done
	if res.Verdict != api.VerdictCanceled || !res.RolledBack || res.Error == "" {
		t.Fatalf("canceled run: %+v", res)
	}
	if got := h.run(t, "a", "print x", nil).Stdout; got != "before\n" {
		t.Fatalf("after the canceled run x is %q; want it rolled back to before", got)
	}
	run, err := h.hist.GetRun(context.Background(), res.ExecutionID)
	if err != nil {
		t.Fatal(err)
	}
	if run.Verdict != history.VerdictCanceled || run.Status != history.StatusDone || !run.RolledBack || run.Stdout != "started\n" {
		t.Fatalf("history row: status %s verdict %s rolled back %v stdout %q", run.Status, run.Verdict, run.RolledBack, run.Stdout)
	}
}

// Guards parse-execute streaming: each block's output is tagged with its block, and
// each block's outcome is reported as soon as it is known, in order.
func TestParseExecuteStream(t *testing.T) {
	h := newHarness(t, nil)
	var mu sync.Mutex
	var events []string
	ev := ParseStream{
		Output: func(block int, stream string, p []byte) {
			mu.Lock()
			events = append(events, strings.TrimSpace(string(p))+"@"+string(rune('0'+block)))
			mu.Unlock()
		},
		Block: func(b api.BlockResult) {
			mu.Lock()
			events = append(events, "block"+string(rune('0'+b.Block.Index))+":"+b.Status)
			mu.Unlock()
		},
	}
	text := "```bash\necho one\n```\n\n```bash\necho two\nexit 1\n```\n\n```bash\necho three\n```\n"
	res, err := h.svc.ParseExecuteStream(context.Background(), api.ParseExecuteRequest{AgentID: "a", Text: text}, nil, ev)
	if err != nil {
		t.Fatal(err)
	}
	want := "one@0 block0:executed two@1 block1:executed block2:skipped"
	if got := strings.Join(events, " "); got != want {
		t.Fatalf("events %q; want %q", got, want)
	}
	if res.Executed != 2 || res.Failed != 1 || res.Skipped != 1 {
		t.Fatalf("result %+v", res)
	}
}

// Guards parse-execute when the caller goes away: the block running is canceled and
// the blocks after it do not run.
func TestParseExecuteStreamCanceled(t *testing.T) {
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 1)
	ev := ParseStream{Output: func(int, string, []byte) { started <- struct{}{} }}
	go func() { <-started; cancel() }()
	text := "```bash\necho one\nwait\n```\n\n```bash\nset y ran\n```\n"
	stop := false
	_, err := h.svc.ParseExecuteStream(ctx, api.ParseExecuteRequest{AgentID: "a", Text: text, StopOnFailure: &stop}, nil, ev)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v; want context.Canceled", err)
	}
	if got := h.run(t, "a", "print y", nil).Stdout; got != "\n" {
		t.Fatalf("the block after the canceled one ran: y=%q", got)
	}
}
