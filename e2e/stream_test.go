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
	var names []string
	for _, e := range evs {
		names = append(names, e.name)
	}
	if strings.Join(names, ",") != "stdout,stdout,result" {
		t.Fatalf("events %v; want stdout,stdout,result (%+v)", names, evs)
	}
	var first, second api.OutputChunk
	var res api.ExecResult
	json.Unmarshal([]byte(evs[0].data), &first)
	json.Unmarshal([]byte(evs[1].data), &second)
	if err := json.Unmarshal([]byte(evs[2].data), &res); err != nil {
		t.Fatal(err)
	}
	if first.Data != "first\n" {
		t.Fatalf("first event %q", first.Data)
	}
	checkFirstBeforeSecondWrite(t, evs[0].at, second.Data, &res)
}

// Guards live output through the Go client, and on stderr.
func TestStreamThroughClient(t *testing.T) {
	d := shared(t)
	var firstAt time.Time
	var chunks []string
	var errText string
	code := "import sys\nprint('warn', file=sys.stderr, flush=True)\n" + firstThenLater
	res, err := d.client.ExecStream(context.Background(), api.ExecRequest{AgentID: "stream-client", Language: "python", Code: code}, client.Output{
		Stdout: func(s string) {
			if len(chunks) == 0 {
				firstAt = time.Now()
			}
			chunks = append(chunks, s)
		},
		Stderr: func(s string) { errText += s },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 2 || chunks[0] != "first\n" || errText != "warn\n" || res.Stderr != "warn\n" {
		t.Fatalf("stdout chunks %q stderr %q; result %s", chunks, errText, describe(res))
	}
	checkFirstBeforeSecondWrite(t, firstAt, chunks[1], res)
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
