package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/testenv"
)

// firstThenLater prints a line, sleeps a second, and prints the time (ns since the
// epoch, the host's clock as gVisor shows it) of its second write.
const firstThenLater = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint(time.time_ns(), flush=True)\n"

// lineWatch accumulates streamed text and notes when the first line was complete: a
// line may come in more than one chunk (a program that pauses mid-line, a loaded host).
type lineWatch struct {
	text    strings.Builder
	firstAt time.Time
}

func (w *lineWatch) add(s string) {
	w.text.WriteString(s)
	if w.firstAt.IsZero() && strings.Contains(w.text.String(), "\n") {
		w.firstAt = time.Now()
	}
}

// lines returns the first line and the rest.
func (w *lineWatch) lines() (first, rest string) {
	first, rest, _ = strings.Cut(w.text.String(), "\n")
	return first, rest
}

// received is an event and when the client got it.
type received struct {
	name, data string
	at         time.Time
}

// curlEvents runs curl -N against the streaming exec route, as a person would, and
// returns the events with their receipt times.
func curlEvents(t *testing.T, url string, body any) []received {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed: the raw-HTTP streaming case needs it")
	}
	b, _ := json.Marshal(body)
	cmd := exec.Command(curl, "-sSN", "-H", "Accept: text/event-stream", "-H", "Content-Type: application/json", "--data-binary", "@-", url)
	cmd.Stdin = strings.NewReader(string(b))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	var evs []received
	var ev received
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			ev = received{name: strings.TrimPrefix(line, "event: "), at: time.Now()}
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		case line == "" && ev.name != "":
			evs = append(evs, ev)
			ev = received{}
		}
	}
	return evs
}

// checkFirstBeforeSecondWrite asserts the ordering that proves streaming: the client
// had the first line before the program made its second write, and before the run
// ended — both compared on the host's one clock, no threshold.
func checkFirstBeforeSecondWrite(t *testing.T, firstAt time.Time, second string, res *api.ExecResult) {
	t.Helper()
	ns, err := strconv.ParseInt(strings.TrimSpace(second), 10, 64)
	if err != nil {
		t.Fatalf("second line %q is not a time", second)
	}
	secondWrite := time.Unix(0, ns)
	if !firstAt.Before(secondWrite) {
		t.Errorf("the first line reached the client at %s, after the program's second write at %s: not streamed",
			firstAt.Format(time.RFC3339Nano), secondWrite.Format(time.RFC3339Nano))
	}
	if !firstAt.Before(res.CompletedAt) {
		t.Errorf("the first line reached the client at %s, after the run ended at %s", firstAt.Format(time.RFC3339Nano), res.CompletedAt.Format(time.RFC3339Nano))
	}
	if res.Verdict != api.VerdictOK || !strings.HasPrefix(res.Stdout, "first\n") {
		t.Errorf("result: %s", describe(res))
	}
}

// Guards live output through raw HTTP (curl): stdout events as the program writes,
// then the result; the first line arrives before the program's second write.
func TestStreamThroughCurl(t *testing.T) {
	d := shared(t)
	evs := curlEvents(t, d.url+"/v1/exec", api.ExecRequest{AgentID: "stream-curl", Language: "python", Code: firstThenLater})
	if len(evs) < 3 || evs[len(evs)-1].name != "result" {
		t.Fatalf("events %+v; want stdout events, then a result", evs)
	}
	var w lineWatch
	for _, e := range evs[:len(evs)-1] {
		var c api.OutputChunk
		if e.name != "stdout" || json.Unmarshal([]byte(e.data), &c) != nil {
			t.Fatalf("event %q %s; want stdout", e.name, e.data)
		}
		w.text.WriteString(c.Data)
		if w.firstAt.IsZero() && strings.Contains(w.text.String(), "\n") {
			w.firstAt = e.at // when curl printed the event that completed the line
		}
	}
	var res api.ExecResult
	if err := json.Unmarshal([]byte(evs[len(evs)-1].data), &res); err != nil {
		t.Fatal(err)
	}
	first, rest := w.lines()
	if first != "first" {
		t.Fatalf("first line %q", first)
	}
	checkFirstBeforeSecondWrite(t, w.firstAt, rest, &res)
}

// Guards live output through the Go client, and on stderr.
func TestStreamThroughClient(t *testing.T) {
	d := shared(t)
	var w lineWatch
	var errText string
	code := "import sys\nprint('warn', file=sys.stderr, flush=True)\n" + firstThenLater
	res, err := d.client.ExecStream(context.Background(), api.ExecRequest{AgentID: "stream-client", Language: "python", Code: code}, client.Output{
		Stdout: w.add,
		Stderr: func(s string) { errText += s },
	})
	if err != nil {
		t.Fatal(err)
	}
	first, rest := w.lines()
	if first != "first" || errText != "warn\n" || res.Stderr != "warn\n" || res.Stdout != w.text.String() {
		t.Fatalf("stdout %q stderr %q; result %s", w.text.String(), errText, describe(res))
	}
	checkFirstBeforeSecondWrite(t, w.firstAt, rest, res)
}

// Guards a client that disconnects mid-run: the run ends canceled, its changes are
// rolled back, it is in the history, and the sandbox serves the next run. It also
// proves streaming: had the first line come only at the end, the run would have
// ended ok before the client could disconnect.
func TestStreamDisconnectCancels(t *testing.T) {
	d := shared(t)
	const agent = "stream-cancel"
	wantOK(t, d.exec(t, agent, "bash", "echo orig > ~/state.txt; cat ~/state.txt"), "orig")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := d.client.ExecStream(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Code: "echo changed > ~/state.txt; echo started; sleep 120"},
		client.Output{Stdout: func(string) { cancel() }})
	if err == nil {
		t.Fatal("the stream ended with a result although the client left")
	}
	var run api.Run
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		l, err := d.client.History(context.Background(), client.HistoryQuery{AgentID: agent, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Runs) == 1 && l.Runs[0].Status != "running" {
			run = l.Runs[0]
			break
		}
	}
	if run.Verdict != api.VerdictCanceled || !run.RolledBack || run.Stdout != "started\n" {
		t.Fatalf("history row: status %q verdict %q rolled back %v stdout %q", run.Status, run.Verdict, run.RolledBack, run.Stdout)
	}
	if run.CompletedAt.Sub(run.StartedAt) >= 120*time.Second {
		t.Fatalf("the run lasted %s: it was not stopped", run.CompletedAt.Sub(run.StartedAt))
	}
	wantOK(t, d.exec(t, agent, "bash", "cat ~/state.txt"), "orig")
}

// Guards the output limit enforced by counting: 8 MiB under a 16 MiB limit is ok and
// whole, streamed and in the result.
func TestStreamLargeOutput(t *testing.T) {
	d := shared(t)
	code := "import sys\nsys.stdout.write('x' * (8 << 20))\n"
	var streamed int
	res, err := d.client.ExecStream(context.Background(), api.ExecRequest{AgentID: "stream-big", Language: "python", Code: code,
		Limits: api.Limits{MaxOutputBytes: 16 << 20}}, client.Output{Stdout: func(s string) { streamed += len(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != api.VerdictOK || len(res.Stdout) != 8<<20 || res.StdoutTruncated || streamed != 8<<20 {
		t.Fatalf("verdict %s, %d bytes in the result (truncated %v), %d streamed; want ok and %d", res.Verdict, len(res.Stdout), res.StdoutTruncated, streamed, 8<<20)
	}
}

// Guards parse-execute streaming: output tagged with its block, a block event per
// block in order, then the result.
func TestStreamParseExecute(t *testing.T) {
	d := shared(t)
	text := "First:\n\n```python\nprint('one')\n```\n\nThen:\n\n```bash\necho two >&2\nexit 3\n```\n\n```python\nprint('three')\n```\n"
	var got []string
	res, err := d.client.ParseExecuteStream(context.Background(), api.ParseExecuteRequest{AgentID: "stream-reply", Text: text}, client.ParseOutput{
		Stdout: func(b int, s string) { got = append(got, fmt.Sprintf("out%d:%s", b, strings.TrimSpace(s))) },
		Stderr: func(b int, s string) { got = append(got, fmt.Sprintf("err%d:%s", b, strings.TrimSpace(s))) },
		Block:  func(b api.BlockResult) { got = append(got, fmt.Sprintf("block%d:%s", b.Block.Index, b.Status)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "out0:one block0:executed err1:two block1:executed block2:skipped"
	if strings.Join(got, " ") != want || res.Executed != 2 || res.Failed != 1 {
		t.Fatalf("events %q; want %q; result %+v", got, want, res)
	}
}

// Guards the CLI: `vmexec exec` prints the first line before the program's second
// write (it streams), and exits with the program's code.
func TestCLIExecStreams(t *testing.T) {
	d := shared(t)
	cmd := exec.Command(testenv.Vmexec(t), "--url", d.url, "exec", "--agent", "stream-cli", "--lang", "python", "-c", firstThenLater)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	first, _ := br.ReadString('\n')
	firstAt := time.Now()
	rest, _ := io.ReadAll(br)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("vmexec exec: %v", err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(rest)), 10, 64)
	if first != "first\n" || err != nil {
		t.Fatalf("output %q then %q", first, rest)
	}
	if !firstAt.Before(time.Unix(0, ns)) {
		t.Fatalf("vmexec exec printed the first line at %s, after the program's second write at %s", firstAt.Format(time.RFC3339Nano), time.Unix(0, ns).Format(time.RFC3339Nano))
	}
}

// Guards a request the guest refuses (a working directory that does not exist): a 400
// naming the cause, plain or streamed, and the sandbox is not rolled back for it.
func TestInvalidWorkDirIs400(t *testing.T) {
	d := shared(t)
	req := api.ExecRequest{AgentID: "stream-workdir", Language: "bash", Code: "pwd", WorkDir: "/no/such/dir"}
	_, plain := d.client.Exec(context.Background(), req)
	_, streamed := d.client.ExecStream(context.Background(), req, client.Output{})
	for name, err := range map[string]error{"plain": plain, "streamed": streamed} {
		if !isStatus(err, 400) || !strings.Contains(err.Error(), "/no/such/dir") {
			t.Errorf("%s: %v; want a 400 naming the directory", name, err)
		}
	}
	wantOK(t, d.exec(t, "stream-workdir", "bash", "pwd"), "/home/user")
}

// Guards streaming and files on the microVM backend: the same guest protocol over
// virtio-serial streams output as written and moves files both ways.
func TestMicroVMStreamAndFiles(t *testing.T) {
	testenv.MicroVM(t)
	d := startDaemon(t, daemonOpts{extra: []string{"--backends", "gvisor,microvm", "--pool-size", "0"}})
	ctx := context.Background()
	sb, err := d.client.CreateSandbox(ctx, api.CreateSandboxRequest{AgentID: "mv-stream", Backend: "microvm"})
	if err != nil {
		t.Fatal(err)
	}
	var w lineWatch
	res, err := d.client.ExecStream(ctx, api.ExecRequest{AgentID: "mv-stream", SandboxID: sb.ID, Language: "python", Code: firstThenLater,
		Limits: api.Limits{TimeoutMS: 120_000}}, client.Output{Stdout: w.add})
	if first, _ := w.lines(); err != nil || first != "first" {
		t.Fatalf("stream: %v, stdout %q", err, w.text.String())
	}
	// A microVM's clock is its own (it may lag after a restore): compare with the
	// run's end as the host saw it.
	if !w.firstAt.Before(res.CompletedAt) {
		t.Fatalf("the first line arrived at %s, after the run ended at %s", w.firstAt.Format(time.RFC3339Nano), res.CompletedAt.Format(time.RFC3339Nano))
	}
	data := strings.Repeat("microvm file\n", 1<<16)
	if _, err := d.client.PutFile(ctx, sb.ID, "in/m.txt", strings.NewReader(data), client.FileOptions{}); err != nil {
		t.Fatal(err)
	}
	body, _, err := d.client.GetFile(ctx, sb.ID, "in/m.txt", client.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if string(got) != data {
		t.Fatalf("got %d bytes back of %d", len(got), len(data))
	}
	r := d.execReq(t, api.ExecRequest{SandboxID: sb.ID, Language: "bash", Code: "stat -c %u in/m.txt; wc -c < in/m.txt", Limits: api.Limits{TimeoutMS: 120_000}})
	wantOK(t, r, fmt.Sprintf("1000\n%d", len(data)))
}

// Guards redaction of streamed output: a secret is redacted in the events as in the
// result (the unit tests cover one written in pieces).
func TestStreamRedacts(t *testing.T) {
	d := shared(t)
	code := "print('key=ghp_' + 'abcdefghijklmnopqrstuvwxyzABCDEF1234 done', flush=True)\n"
	var w lineWatch
	res, err := d.client.ExecStream(context.Background(), api.ExecRequest{AgentID: "stream-redact", Language: "python", Code: code}, client.Output{Stdout: w.add})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.text.String(); strings.Contains(got, "ghp_") || !strings.Contains(got, "[REDACTED:github]") || strings.Contains(res.Stdout, "ghp_") {
		t.Fatalf("streamed %q, result %q: the token leaked", got, res.Stdout)
	}
}
