package sandbox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
)

// waitingOn is how many requests are queued on sandbox id.
func (h *harness) waitingOn(id string) int {
	h.svc.mu.Lock()
	defer h.svc.mu.Unlock()
	return h.svc.sandboxes[id].waiting
}

func (h *harness) sandboxOf(t *testing.T, agent string) string {
	t.Helper()
	return h.run(t, agent, "echo up", nil).SandboxID
}

func (h *harness) readFile(t *testing.T, sb, p string) (api.FileInfo, string, error) {
	t.Helper()
	var info api.FileInfo
	var buf bytes.Buffer
	err := h.svc.OpenFile(context.Background(), sb, "", p, func(fi api.FileInfo, r io.Reader) error {
		info = fi
		_, err := io.Copy(&buf, r)
		return err
	})
	return info, buf.String(), err
}

// Guards the files API of the service: a file put in is what comes out, relative
// paths are from /home/user, parents are created, and listing and removal work.
func TestFilesRoundTrip(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	sb := h.sandboxOf(t, "a")
	info, err := h.svc.PutFile(ctx, sb, "a", "dir/sub/x.txt", 0, strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != "/home/user/dir/sub/x.txt" || info.Size != 5 || info.Type != api.FileTypeFile {
		t.Fatalf("put: %+v", info)
	}
	if _, got, err := h.readFile(t, sb, "/home/user/dir/sub/x.txt"); err != nil || got != "hello" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if got := h.run(t, "a", "print file:/home/user/dir/sub/x.txt", nil).Stdout; got != "hello\n" {
		t.Fatalf("a run sees %q", got)
	}
	l, err := h.svc.ListFiles(ctx, sb, "a", "dir", 2)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range l.Entries {
		names = append(names, e.Path+":"+e.Type)
	}
	if got := strings.Join(names, " "); got != "/home/user/dir/sub:dir /home/user/dir/sub/x.txt:file" {
		t.Fatalf("list: %s", got)
	}
	if err := h.svc.RemoveFile(ctx, sb, "a", "dir", true); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.StatFile(ctx, sb, "a", "dir/sub/x.txt"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stat after remove: %v; want ErrNotFound", err)
	}
}

// Guards the error classes the HTTP layer turns into 404, 400, 413 and 403.
func TestFilesErrors(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Max.MaxFileBytes, c.Defaults.MaxFileBytes = 10, 10 })
	ctx := context.Background()
	sb := h.sandboxOf(t, "a")
	if _, err := h.svc.PutFile(ctx, sb, "a", "f", 0, strings.NewReader("0123456789")); err != nil {
		t.Fatalf("a file of exactly the limit: %v", err)
	}
	read := func(p string) error { _, _, err := h.readFile(t, sb, p); return err }
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"missing file", read("nope"), ErrNotFound},
		{"a directory read as a file", read("/home/user"), ErrInvalid},
		{"a file listed as a directory", func() error { _, err := h.svc.ListFiles(ctx, sb, "a", "f", 1); return err }(), ErrInvalid},
		{"empty path", read(""), ErrInvalid},
		{"over the file limit", func() error {
			_, err := h.svc.PutFile(ctx, sb, "a", "big", 0, strings.NewReader("0123456789a"))
			return err
		}(), ErrTooLarge},
		{"another agent's sandbox", func() error { _, err := h.svc.StatFile(ctx, sb, "b", "f"); return err }(), ErrForbidden},
		{"no such sandbox", func() error { _, err := h.svc.StatFile(ctx, "sb-nope", "", "f"); return err }(), ErrNotFound},
		{"bad depth", func() error { _, err := h.svc.ListFiles(ctx, sb, "a", "", 99); return err }(), ErrInvalid},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: %v; want %v", tt.name, tt.err, tt.want)
		}
	}
	if _, err := h.svc.StatFile(ctx, sb, "a", "big"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the too-large file was left behind: %v", err)
	}
}

// Guards the transaction with files: a file put in after a run is part of the state
// the next run starts from, so a failing next run rolls back to a state that still has
// it (the snapshot taken after the earlier run must not be reused).
func TestPutFileIsInTheNextRunsSnapshot(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	sb := h.sandboxOf(t, "a")
	waitFor(t, "the background snapshot after the run", func() bool {
		l, err := h.svc.ListSnapshots(ctx, sb, "")
		return err == nil && len(l.Snapshots) == 2 // the run's pre-run one, and the one after it
	})
	if _, err := h.svc.PutFile(ctx, sb, "a", "data.csv", 0, strings.NewReader("1,2")); err != nil {
		t.Fatal(err)
	}
	if r := h.run(t, "a", "exit 1", nil); !r.RolledBack {
		t.Fatalf("failed run not rolled back: %+v", r)
	}
	if _, got, err := h.readFile(t, sb, "data.csv"); err != nil || got != "1,2" {
		t.Fatalf("after the rollback data.csv is %q, %v; want the file put in before the run", got, err)
	}
}

// Guards the queue: a file operation waits for the run in progress on its sandbox.
func TestFilesQueueWithRuns(t *testing.T) {
	h := newHarness(t, nil)
	sb := h.sandboxOf(t, "a")
	c := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		h.svc.ExecStream(ctx, api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo started\nwait"}, c.out)
	}()
	waitFor(t, "the run to start", func() bool { return c.text("stdout") != "" })
	putDone := make(chan error, 1)
	go func() {
		_, err := h.svc.PutFile(context.Background(), sb, "a", "x", 0, strings.NewReader("x"))
		putDone <- err
	}()
	waitFor(t, "the put to queue", func() bool { return h.waitingOn(sb) == 1 })
	select {
	case err := <-putDone:
		t.Fatalf("the put finished during the run: %v", err)
	default:
	}
	cancel()
	<-runDone
	if err := <-putDone; err != nil {
		t.Fatal(err)
	}
}
