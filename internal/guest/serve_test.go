package guest

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// The handshake is what the host checks before trusting the guest.
func TestHandshake(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	if c.Guest.Version != agentproto.Version {
		t.Errorf("version %d, want %d", c.Guest.Version, agentproto.Version)
	}
	if c.Guest.Agent != "vmexec-agent/test" {
		t.Errorf("agent %q, want vmexec-agent/test", c.Guest.Agent)
	}
	for _, l := range []string{"python", "bash"} {
		if !slices.Contains(c.Guest.Languages, l) {
			t.Errorf("languages %v lack %s", c.Guest.Languages, l)
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Errorf("ping: %v", err)
	}
}

// A host speaking something the agent does not understand gets an error reply with
// the request's ID, and the agent keeps serving.
func TestUnknownMessages(t *testing.T) {
	guestR, hostW := io.Pipe()
	hostR, guestW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), guestR, guestW, testOptions(t, sandboxUser())) }()
	conn := agentproto.NewConn(hostR, hostW)
	roundTrip := func(e *agentproto.Envelope) *agentproto.Envelope {
		t.Helper()
		if err := conn.Send(e); err != nil {
			t.Fatal(err)
		}
		reply, err := conn.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return reply
	}
	if r := roundTrip(&agentproto.Envelope{Type: "bogus", ID: 7}); r.Type != agentproto.TypeError || r.ID != 7 || r.Error == "" {
		t.Errorf("unknown type: got %+v, want an error with id 7", r)
	}
	if r := roundTrip(&agentproto.Envelope{Type: agentproto.TypeExec, ID: 8}); r.Type != agentproto.TypeError || r.ID != 8 {
		t.Errorf("exec without payload: got %+v, want an error with id 8", r)
	}
	// A frame that is not JSON: the stream stays in step, so the agent goes on.
	hostW.Write([]byte{0, 0, 0, 3, 'x', 'y', 'z'})
	if r, err := conn.Recv(); err != nil || r.Type != agentproto.TypeError {
		t.Errorf("garbage frame: got %+v, %v; want an error reply", r, err)
	}
	if r := roundTrip(&agentproto.Envelope{Type: agentproto.TypePing, ID: 9}); r.Type != agentproto.TypePong || r.ID != 9 {
		t.Errorf("ping after errors: got %+v", r)
	}
	hostW.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// As PID 1 the agent must survive the end of its input: a restored sandbox's agent
// reads its next hello from new pipes.
func TestPersistentAcrossReattach(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	opts.Persistent = true
	var stdio reattachable
	hostR, hostW := stdio.attach()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, &stdio, &stdio, opts) }()

	c, err := agentproto.Dial(ctx, hostR, hostW, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: "echo one > state.txt; echo one"}); string(r.Stdout) != "one\n" {
		t.Fatalf("first connection: %s", describe(r))
	}
	// The host goes away: EOF. A frame cut in half first, for good measure.
	hostW.Write([]byte{0, 0})
	hostW.Close()
	time.Sleep(300 * time.Millisecond) // the agent sees EOF and keeps retrying
	select {
	case err := <-done:
		t.Fatalf("persistent Serve returned at EOF: %v", err)
	default:
	}

	hostR2, hostW2 := stdio.attach()
	start := time.Now()
	c2, err := agentproto.Dial(ctx, hostR2, hostW2, nil)
	if err != nil {
		t.Fatalf("handshake on the new connection: %v", err)
	}
	t.Logf("handshake on the reattached input after %v", time.Since(start))
	if r := run(t, c2, &agentproto.ExecRequest{Language: "bash", Code: "cat state.txt"}); string(r.Stdout) != "one\n" {
		t.Errorf("second connection: %s", describe(r))
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Serve after cancel: %v, want context.Canceled", err)
	}
}

// An oversize frame length desynchronises the stream: a non-persistent agent gives up.
func TestOversizeFrame(t *testing.T) {
	guestR, hostW := io.Pipe()
	hostR, guestW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), guestR, guestW, testOptions(t, nil)) }()
	go io.Copy(io.Discard, hostR)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], agentproto.MaxFrame+1)
	hostW.Write(hdr[:])
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve returned nil after an oversize frame")
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after an oversize frame")
	}
	hostW.Close()
}

// The real binary, built static as the backends use it, serves over its stdin/stdout.
func TestAgentBinary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	opts := testOptions(t, sandboxUser())
	bin := filepath.Join(filepath.Dir(filepath.Dir(opts.Home)), "vmexec-agent")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/vmexec-agent")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	t.Logf("built in %v", time.Since(start))

	cmd := exec.Command(bin, "--home", opts.Home, "--run-dir", opts.RunBase,
		"--uid", strconv.Itoa(int(opts.RunUser.UID)), "--gid", strconv.Itoa(int(opts.RunUser.GID)))
	cmd.Env = []string{"PATH=" + DefaultPath}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agentproto.Dial(ctx, stdout, stdin, nil)
	if err != nil {
		t.Fatalf("dial: %v\nagent stderr:\n%s", err, stderr.String())
	}
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: `echo "hi $(id -u) $PWD"`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "hi " + strconv.Itoa(int(opts.RunUser.UID)) + " " + opts.Home + "\n"
	if res.Verdict != agentproto.VerdictOK || string(res.Stdout) != want {
		t.Errorf("got %s; want stdout %q", describe(res), want)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("agent exit: %v\n%s", err, stderr.String())
	}
}
