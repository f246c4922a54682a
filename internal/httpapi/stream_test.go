package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/memtest"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// newTestServer serves a service over the in-memory backend (internal/memtest).
func newTestServer(t *testing.T, mod func(*sandbox.Config)) (*httptest.Server, *sandbox.Service) {
	t.Helper()
	svc, _ := memtest.Service(t, mod)
	srv := httptest.NewServer(New(svc, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	return srv, svc
}

type sseEvent struct{ name, data string }

// openSSE posts body to path asking for events and returns a channel of them (closed
// at the end of the stream) and a function that disconnects.
func openSSE(t *testing.T, url, body string) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("answer %d %s", resp.StatusCode, ct)
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, ":"):
				ch <- sseEvent{name: "comment", data: line}
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			case line == "" && ev.name != "":
				ch <- ev
				ev = sseEvent{}
			}
		}
	}()
	return ch, cancel
}

// next returns the next event that is not a comment.
func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	for ev := range ch {
		if ev.name != "comment" {
			return ev
		}
	}
	t.Fatal("the stream ended")
	return sseEvent{}
}

// Guards the SSE answer of the exec routes: output events as written (a character
// split across the program's writes arrives whole), then one result event with the
// JSON the plain call answers.
func TestExecEvents(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	body := `{"agent_id":"a","language":"bash","code":"echo one\nwarn two\nraw caf\\xc3\nraw \\xa9\\n"}`
	ch, cancel := openSSE(t, srv.URL+"/v1/exec", body)
	defer cancel()
	var got []string
	for _, want := range []string{"stdout", "stderr", "stdout"} {
		ev := next(t, ch)
		var c api.OutputChunk
		if ev.name != want || json.Unmarshal([]byte(ev.data), &c) != nil {
			t.Fatalf("event %q %s; want %s", ev.name, ev.data, want)
		}
		got = append(got, c.Data)
	}
	if strings.Join(got, "|") != "one\n|two\n|café\n" {
		t.Fatalf("chunks %q", got)
	}
	ev := next(t, ch)
	var streamed map[string]any
	if ev.name != "result" || json.Unmarshal([]byte(ev.data), &streamed) != nil {
		t.Fatalf("last event %q %s", ev.name, ev.data)
	}
	resp, err := http.Post(srv.URL+"/v1/exec", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var plain map[string]any
	json.NewDecoder(resp.Body).Decode(&plain)
	for _, m := range []map[string]any{streamed, plain} {
		for _, k := range []string{"execution_id", "started_at", "completed_at", "duration_ms"} {
			delete(m, k)
		}
	}
	if a, b := fmt.Sprint(streamed), fmt.Sprint(plain); a != b {
		t.Fatalf("result event\n%s\nplain answer\n%s", a, b)
	}
}

// Guards failures before the run: they come as one error event with the body and
// code the plain call answers with.
func TestExecEventsError(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for body, code := range map[string]string{
		`{"agent_id":"a","language":"cobol","code":"x"}`: api.CodeBadRequest,
		`{"agent_id":`: api.CodeInvalidJSON,
	} {
		ch, cancel := openSSE(t, srv.URL+"/v1/exec", body)
		ev := next(t, ch)
		var e api.Error
		if ev.name != "error" || json.Unmarshal([]byte(ev.data), &e) != nil || e.Code != code || e.Error == "" {
			t.Errorf("%s: event %q %s; want error %s", body, ev.name, ev.data, code)
		}
		cancel()
	}
	ch, cancel := openSSE(t, srv.URL+"/v1/sandboxes/sb-nope/exec", `{"language":"bash","code":"echo"}`)
	defer cancel()
	if ev := next(t, ch); ev.name != "error" || !strings.Contains(ev.data, `"code":"not_found"`) {
		t.Errorf("unknown sandbox: %q %s", ev.name, ev.data)
	}
}

// Guards a client that disconnects mid-run: the run is canceled and recorded so, and
// the sandbox serves the next run.
func TestExecEventsDisconnectCancels(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	ch, cancel := openSSE(t, srv.URL+"/v1/exec", `{"agent_id":"a","language":"bash","code":"echo started\nwait"}`)
	if ev := next(t, ch); ev.name != "stdout" {
		t.Fatalf("first event %q", ev.name)
	}
	cancel()
	c := client.New(srv.URL)
	var runs []api.Run
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		l, err := c.History(context.Background(), client.HistoryQuery{AgentID: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if runs = l.Runs; len(runs) == 1 && runs[0].Status != "running" {
			break
		}
	}
	if len(runs) != 1 || runs[0].Verdict != api.VerdictCanceled {
		t.Fatalf("history %+v; want one canceled run", runs)
	}
	res, err := c.Exec(context.Background(), api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo again"})
	if err != nil || res.Stdout != "again\n" {
		t.Fatalf("next run: %v %+v", err, res)
	}
}

// Guards the keep-alive: an idle stream gets comments.
func TestExecEventsKeepAlive(t *testing.T) {
	old := keepAliveEvery
	keepAliveEvery = 5 * time.Millisecond
	defer func() { keepAliveEvery = old }()
	srv, _ := newTestServer(t, nil)
	ch, cancel := openSSE(t, srv.URL+"/v1/exec", `{"agent_id":"a","language":"bash","code":"wait"}`)
	defer cancel()
	for ev := range ch {
		if ev.data == ": keep-alive" {
			return
		}
	}
	t.Fatal("no keep-alive comment")
}

// Guards the Go client's streaming calls against the server: callbacks see the output
// in order, and the result is the plain call's.
func TestClientStreams(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	c := client.New(srv.URL)
	var out []string
	res, err := c.ExecStream(context.Background(), api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo 1\nwarn 2"}, client.Output{
		Stdout: func(s string) { out = append(out, "o:"+s) },
		Stderr: func(s string) { out = append(out, "e:"+s) },
	})
	if err != nil || res.Verdict != api.VerdictOK || strings.Join(out, "") != "o:1\ne:2\n" {
		t.Fatalf("ExecStream: %v %+v %q", err, res, out)
	}
	out = nil
	pr, err := c.ParseExecuteStream(context.Background(), api.ParseExecuteRequest{AgentID: "a", Text: "```bash\necho x\n```\n```bash\necho y\n```\n"}, client.ParseOutput{
		Stdout: func(b int, s string) { out = append(out, fmt.Sprintf("%d:%s", b, s)) },
		Block:  func(b api.BlockResult) { out = append(out, "block:"+b.Status) },
	})
	if err != nil || pr.Executed != 2 || strings.Join(out, "") != "0:x\nblock:executed1:y\nblock:executed" {
		t.Fatalf("ParseExecuteStream: %v %+v %q", err, pr, out)
	}
	_, err = c.ExecStream(context.Background(), api.ExecRequest{AgentID: "a", Language: "cobol", Code: "x"}, client.Output{})
	var ce *client.Error
	if !errorsAs(err, &ce) || ce.Status != http.StatusBadRequest || ce.Code != api.CodeBadRequest {
		t.Fatalf("error event: %v", err)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
