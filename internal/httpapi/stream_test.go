package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/sandbox"
	"github.com/vmexec/vmexec/internal/template"
)

// A minimal in-memory backend (no snapshots) for the HTTP layer's tests. Programs are
// lines: "echo TEXT" (stdout), "warn TEXT" (stderr), "raw HEX-ESCAPED" (stdout, bytes
// as written, \xNN escapes), "wait" (until the run is cancelled).
type memBackend struct{}

type memSandbox struct {
	id    string
	mu    sync.Mutex
	files map[string][]byte
}

func (memBackend) Name() string { return "mem" }
func (memBackend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
	return &memSandbox{id: spec.ID, files: map[string][]byte{}}, nil
}
func (memBackend) List(ctx context.Context) ([]backend.Info, error) { return nil, nil }
func (memBackend) DestroyID(ctx context.Context, id string) error   { return nil }

func (s *memSandbox) ID() string                     { return s.id }
func (s *memSandbox) Ping(ctx context.Context) error { return nil }
func (s *memSandbox) Info(context.Context) backend.Info {
	return backend.Info{ID: s.id, Backend: "mem", Status: "running"}
}
func (s *memSandbox) Destroy(ctx context.Context) error { return nil }

func (s *memSandbox) Exec(ctx context.Context, req *agentproto.ExecRequest, out agentproto.OutputFunc) (*agentproto.ExecResult, error) {
	res := &agentproto.ExecResult{Verdict: agentproto.VerdictOK}
	emit := func(stream string, p []byte) {
		if stream == agentproto.StreamStderr {
			res.Stderr = append(res.Stderr, p...)
		} else {
			res.Stdout = append(res.Stdout, p...)
		}
		if out != nil {
			out(stream, p)
		}
	}
	for _, line := range strings.Split(req.Code, "\n") {
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd {
		case "echo":
			emit(agentproto.StreamStdout, []byte(arg+"\n"))
		case "warn":
			emit(agentproto.StreamStderr, []byte(arg+"\n"))
		case "raw":
			var b []byte
			fmt.Sscanf(`"`+arg+`"`, "%q", &b)
			emit(agentproto.StreamStdout, b)
		case "wait":
			<-ctx.Done()
			res.Verdict, res.ExitCode = agentproto.VerdictCanceled, -1
			return res, nil
		}
	}
	return res, nil
}

func memPath(p string) string {
	if !path.IsAbs(p) {
		p = path.Join("/home/user", p)
	}
	return path.Clean(p)
}

func (s *memSandbox) WriteFile(ctx context.Context, p string, mode uint32, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if memPath(p) == "/home/user" {
		return agentproto.ErrIsDir
	}
	s.files[memPath(p)] = b
	return nil
}

func (s *memSandbox) StatFile(ctx context.Context, p string) (agentproto.FileInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p = memPath(p)
	if p == "/home/user" {
		return agentproto.FileInfo{Name: "user", Path: p, Type: "dir", Mode: 0o755}, nil
	}
	b, ok := s.files[p]
	if !ok {
		return agentproto.FileInfo{}, fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
	}
	return agentproto.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: 0o644, MTime: time.Unix(1700000000, 0)}, nil
}

func (s *memSandbox) OpenFile(ctx context.Context, p string) (agentproto.FileInfo, io.ReadCloser, error) {
	fi, err := s.StatFile(ctx, p)
	if err == nil && fi.Type == "dir" {
		err = fmt.Errorf("%s: %w", p, agentproto.ErrIsDir)
	}
	if err != nil {
		return fi, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return fi, io.NopCloser(bytes.NewReader(s.files[fi.Path])), nil
}

func (s *memSandbox) ListFiles(ctx context.Context, p string, depth int) ([]agentproto.FileInfo, error) {
	if memPath(p) != "/home/user" {
		return nil, fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
	}
	s.mu.Lock()
	var names []string
	for n := range s.files {
		names = append(names, n)
	}
	s.mu.Unlock()
	var out []agentproto.FileInfo
	for _, n := range names {
		fi, _ := s.StatFile(ctx, n)
		out = append(out, fi)
	}
	return out, nil
}

func (s *memSandbox) MakeDir(ctx context.Context, p string) error { return nil }

func (s *memSandbox) RemoveFile(ctx context.Context, p string, recursive bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.files[memPath(p)]; !ok {
		return fmt.Errorf("%s: %w", p, agentproto.ErrNotExist)
	}
	delete(s.files, memPath(p))
	return nil
}

// newTestServer serves a service over the mem backend.
func newTestServer(t *testing.T, mod func(*sandbox.Config)) (*httptest.Server, *sandbox.Service) {
	t.Helper()
	dir := t.TempDir()
	hist, err := sqlite.Open(context.Background(), filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := sandbox.DefaultConfig()
	cfg.PoolSize = 0
	if mod != nil {
		mod(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := sandbox.New(cfg, sandbox.Deps{Backends: []backend.Backend{memBackend{}}, Template: template.Template{Name: "mem", RootFS: "/nonexistent"}, History: hist, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(svc, Options{Logger: log}))
	t.Cleanup(func() {
		srv.Close()
		svc.Close(context.Background())
		hist.Close()
	})
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
