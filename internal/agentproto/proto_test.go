package agentproto

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"
)

// Guards the framing: what is sent is what is received, in order.
func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf, &buf)
	in := []*Envelope{
		{Type: TypeHello, Hello: &Hello{Version: Version}},
		{Type: TypeExec, ID: 7, Exec: &ExecRequest{Language: "python", Code: "print(1)", Stdin: []byte{0, 1, 2}}},
		{Type: TypeOutput, ID: 7, Stream: StreamStdout, Data: []byte("\xff\xfe not utf8")},
		{Type: TypeOutput, ID: 7, Stream: StreamStderr, Data: []byte{}},
		{Type: TypeResult, ID: 7, Result: &ExecResult{ExitCode: 3, Verdict: VerdictNonzeroExit}},
		{Type: TypeData, ID: 1 << 40, Data: []byte("body")},
		{Type: TypeData, ID: 9, EOF: true},
	}
	for _, e := range in {
		if err := c.Send(e); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range in {
		got, err := c.Recv()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || got.ID != want.ID || !bytes.Equal(got.Data, want.Data) || got.Stream != want.Stream || got.EOF != want.EOF {
			t.Fatalf("frame %d: got %s/%d/%q/%s/%v want %s/%d/%q/%s/%v", i, got.Type, got.ID, got.Data, got.Stream, got.EOF,
				want.Type, want.ID, want.Data, want.Stream, want.EOF)
		}
	}
	if got, _ := NewConn(&buf, io.Discard).Recv(); got != nil {
		t.Fatalf("expected EOF, got %v", got)
	}
}

// Guards against a hostile or corrupt peer making the reader allocate gigabytes, and
// against sending what the other side would refuse.
func TestOversizeFrame(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	_, err := NewConn(bytes.NewReader(hdr[:]), io.Discard).Recv()
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("recv: err = %v, want ErrFrameTooLarge", err)
	}
	var buf bytes.Buffer
	err = NewConn(nil, &buf).Send(&Envelope{Type: TypeExec, Exec: &ExecRequest{Code: strings.Repeat("x", MaxFrame)}})
	if !errors.Is(err, ErrFrameTooLarge) || buf.Len() != 0 {
		t.Fatalf("send: err = %v (%d bytes written), want ErrFrameTooLarge and nothing written", err, buf.Len())
	}

	// Through a client: an oversize request fails by itself, the connection goes on.
	g := newFakeGuest(t, Version)
	c := g.dial(t)
	if _, err := c.Exec(context.Background(), &ExecRequest{Code: strings.Repeat("x", MaxFrame)}, nil); !errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrClosed) {
		t.Fatalf("exec of an oversize request: %v, want ErrFrameTooLarge (not ErrClosed)", err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping after an oversize request: %v", err)
	}
	// A guest that sends an oversize frame ends the connection: the stream is out of step.
	g.raw(hdr[:])
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after an oversize frame from the guest: %v, want ErrClosed", err)
	}
}

// Guards the cost of bulk bytes: output and data go as binary frames (no base64), and
// a binary frame that cannot be decoded is malformed, not fatal.
func TestBinaryFrames(t *testing.T) {
	var buf bytes.Buffer
	data := bytes.Repeat([]byte{0xff}, ChunkSize)
	NewConn(nil, &buf).Send(&Envelope{Type: TypeOutput, ID: 3, Stream: StreamStdout, Data: data})
	if buf.Len() != 4+binaryHeader+ChunkSize {
		t.Errorf("a %d-byte output chunk took %d bytes on the wire", ChunkSize, buf.Len())
	}
	for _, frame := range [][]byte{
		{0x80, 0, 0, 3, 1, 2, 3},                   // shorter than its header
		{0x80, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 9}, // unknown kind
		{0, 0, 0, 3, 'x', 'y', 'z'},                // not JSON
	} {
		c := NewConn(bytes.NewReader(append(frame, buf.Bytes()...)), io.Discard)
		if _, err := c.Recv(); !errors.Is(err, ErrMalformed) {
			t.Errorf("frame % x: err = %v, want ErrMalformed", frame, err)
		}
		if e, err := c.Recv(); err != nil || e.ID != 3 || len(e.Data) != ChunkSize {
			t.Errorf("the frame after a malformed one: %v, %v", e, err)
		}
	}
}

// Guards the truncated-stream distinction the host uses to tell a dead guest.
func TestTruncatedFrame(t *testing.T) {
	var buf bytes.Buffer
	NewConn(nil, &buf).Send(&Envelope{Type: TypePing})
	b := buf.Bytes()[:buf.Len()-2]
	_, err := NewConn(bytes.NewReader(b), io.Discard).Recv()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want ErrUnexpectedEOF", err)
	}
}

// fakeGuest is a scriptable guest on in-memory pipes: handle answers each request (it
// runs on the guest's read loop; it may start goroutines that send later).
type fakeGuest struct {
	t       *testing.T
	version int
	conn    *Conn
	hostR   *io.PipeReader
	hostW   *io.PipeWriter
	guestW  *io.PipeWriter
	handle  func(g *fakeGuest, e *Envelope)

	mu     sync.Mutex
	files  map[string][]byte
	runs   map[uint64]chan string // an exec's cancel or signal, by ID
	writes map[uint64]string      // a write's path, by ID
}

func newFakeGuest(t *testing.T, version int) *fakeGuest {
	h2gR, h2gW := io.Pipe()
	g2hR, g2hW := io.Pipe()
	g := &fakeGuest{t: t, version: version, conn: NewConn(h2gR, g2hW), hostR: g2hR, hostW: h2gW, guestW: g2hW,
		files: map[string][]byte{}, runs: map[uint64]chan string{}, writes: map[uint64]string{}}
	g.handle = (*fakeGuest).serve
	go func() {
		for {
			e, err := g.conn.Recv()
			if err != nil {
				g2hW.CloseWithError(err)
				return
			}
			g.handle(g, e)
		}
	}()
	t.Cleanup(func() { h2gW.Close(); g2hR.Close() })
	return g
}

func (g *fakeGuest) dial(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(context.Background(), g.hostR, g.hostW, multiCloser{g.hostW, g.hostR})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (g *fakeGuest) send(e *Envelope) { g.conn.Send(e) }

// raw writes bytes as they are to the host.
func (g *fakeGuest) raw(b []byte) { g.guestW.Write(b) }

func (g *fakeGuest) fail(e *Envelope, code, msg string) {
	g.send(&Envelope{Type: TypeError, ID: e.ID, Code: code, Error: msg})
}

// serve is a small guest: "exec" runs are scripts of lines "out TEXT", "err TEXT",
// "big N" (N bytes of stdout in ChunkSize frames), "wait" (until a cancel: verdict
// canceled; a signal is printed to stdout and waited past); files live in a map.
func (g *fakeGuest) serve(e *Envelope) {
	switch e.Type {
	case TypeHello:
		g.send(&Envelope{Type: TypeHello, ID: e.ID, Hello: &Hello{Version: g.version, Agent: "fake"}})
	case TypePing:
		g.send(&Envelope{Type: TypePong, ID: e.ID})
	case TypeExec:
		ctl := make(chan string, 4)
		g.mu.Lock()
		g.runs[e.ID] = ctl
		g.mu.Unlock()
		go g.exec(e.ID, e.Exec, ctl)
	case TypeCancel, TypeSignal:
		g.mu.Lock()
		ctl := g.runs[e.ID]
		g.mu.Unlock()
		if ctl != nil {
			ctl <- e.Type + " " + e.Signal
		}
	case TypeStat, TypeRead:
		g.mu.Lock()
		data, ok := g.files[e.File.Path]
		g.mu.Unlock()
		switch {
		case e.File.Path == "/dir":
			g.fail(e, CodeIsDir, "/dir is a directory")
		case !ok:
			g.fail(e, CodeNotExist, e.File.Path+": no such file")
		default:
			g.send(&Envelope{Type: TypeInfo, ID: e.ID, Info: &FileInfo{Path: e.File.Path, Type: FileTypeFile, Size: int64(len(data))}})
			if e.Type == TypeRead {
				for len(data) > 0 {
					n := min(len(data), ChunkSize)
					g.send(&Envelope{Type: TypeData, ID: e.ID, Data: data[:n]})
					data = data[n:]
				}
				g.send(&Envelope{Type: TypeDone, ID: e.ID})
			}
		}
	case TypeWrite:
		if e.File.Path == "/dir" {
			g.fail(e, CodeIsDir, "/dir is a directory")
			return
		}
		g.mu.Lock()
		g.files["partial:"+e.File.Path] = nil
		g.writes[e.ID] = e.File.Path
		g.mu.Unlock()
	case TypeData:
		g.mu.Lock()
		path, ok := g.writes[e.ID]
		if ok {
			g.files["partial:"+path] = append(g.files["partial:"+path], e.Data...)
			if e.EOF {
				g.files[path] = g.files["partial:"+path]
				delete(g.files, "partial:"+path)
				delete(g.writes, e.ID)
			}
		}
		g.mu.Unlock()
		if ok && e.EOF {
			g.send(&Envelope{Type: TypeDone, ID: e.ID})
		}
	case TypeList:
		g.send(&Envelope{Type: TypeEntries, ID: e.ID, Entries: []FileInfo{{Name: "a"}, {Name: "b"}}})
		g.send(&Envelope{Type: TypeEntries, ID: e.ID, Entries: []FileInfo{{Name: "c"}}})
		g.send(&Envelope{Type: TypeDone, ID: e.ID})
	default:
		g.fail(e, "", "unknown type "+e.Type)
	}
}

func (g *fakeGuest) exec(id uint64, req *ExecRequest, ctl chan string) {
	res := &ExecResult{Verdict: VerdictOK}
	for _, line := range strings.Split(req.Code, "\n") {
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd {
		case "out", "err":
			stream := map[string]string{"out": StreamStdout, "err": StreamStderr}[cmd]
			g.send(&Envelope{Type: TypeOutput, ID: id, Stream: stream, Data: []byte(arg + "\n")})
		case "big":
			var n int
			fmt.Sscan(arg, &n)
			chunk := bytes.Repeat([]byte{'x'}, ChunkSize)
			for ; n > 0; n -= ChunkSize {
				g.send(&Envelope{Type: TypeOutput, ID: id, Stream: StreamStdout, Data: chunk[:min(n, ChunkSize)]})
			}
		case "wait":
			for m := range ctl {
				if m == TypeCancel+" " {
					res = &ExecResult{Verdict: VerdictCanceled, ExitCode: 137, Signal: "SIGKILL"}
					break
				}
				g.send(&Envelope{Type: TypeOutput, ID: id, Stream: StreamStdout, Data: []byte(m + "\n")})
			}
		case "hang":
			select {} // never answers, not even a cancel
		}
	}
	g.send(&Envelope{Type: TypeResult, ID: id, Result: res})
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	for _, c := range m {
		c.Close()
	}
	return nil
}

// Guards "handshake before trust": a guest of another version is refused at once, as
// is a guest that answers something else.
func TestHandshakeVersion(t *testing.T) {
	ctx := context.Background()
	c := newFakeGuest(t, Version).dial(t)
	if c.Guest.Version != Version || c.Guest.Agent != "fake" {
		t.Fatalf("guest hello %+v", c.Guest)
	}
	for _, v := range []int{1, Version + 1} {
		g := newFakeGuest(t, v)
		if _, err := Dial(ctx, g.hostR, g.hostW, g.hostW); !errors.Is(err, ErrVersion) {
			t.Errorf("guest version %d: err = %v, want ErrVersion", v, err)
		}
	}
	g := newFakeGuest(t, Version)
	g.handle = func(g *fakeGuest, e *Envelope) { g.send(&Envelope{Type: TypePong, ID: e.ID}) }
	if _, err := Dial(ctx, g.hostR, g.hostW, g.hostW); !errors.Is(err, ErrUnexpected) {
		t.Errorf("pong to hello: err = %v, want ErrUnexpected", err)
	}
	// A guest that never answers: the handshake ends with ctx, and the closer is closed.
	g = newFakeGuest(t, Version)
	g.handle = func(*fakeGuest, *Envelope) {}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := Dial(tctx, g.hostR, g.hostW, multiCloser{g.hostW, g.hostR}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent guest: err = %v, want deadline exceeded", err)
	}
}

// Guards multiplexing: many runs in flight on one connection, their output frames
// interleaved, each run gets exactly its own output, in order.
func TestMultiplexedRuns(t *testing.T) {
	c := newFakeGuest(t, Version).dial(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var code, want strings.Builder
			for j := 0; j < 30; j++ {
				fmt.Fprintf(&code, "out run %d line %d\n", i, j)
				fmt.Fprintf(&want, "run %d line %d\n", i, j)
			}
			code.WriteString("err done")
			var streamed strings.Builder
			res, err := c.Exec(context.Background(), &ExecRequest{Code: code.String()}, func(stream string, p []byte) {
				if stream == StreamStdout {
					streamed.Write(p)
				}
			})
			switch {
			case err != nil:
				errs <- err
			case string(res.Stdout) != want.String() || streamed.String() != want.String() || string(res.Stderr) != "done\n":
				errs <- fmt.Errorf("run %d: stdout %q streamed %q stderr %q", i, res.Stdout, streamed.String(), res.Stderr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Guards matching by ID: replies that come in another order than the requests still
// reach their callers, and a late reply to an abandoned request is dropped.
func TestOutOfOrderReplies(t *testing.T) {
	g := newFakeGuest(t, Version)
	var mu sync.Mutex
	var held []*Envelope
	g.handle = func(g *fakeGuest, e *Envelope) {
		if e.Type != TypeStat {
			g.serve(e)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		held = append(held, e)
		if len(held) == 3 { // answer the three stats last first
			for i := len(held) - 1; i >= 0; i-- {
				g.send(&Envelope{Type: TypeInfo, ID: held[i].ID, Info: &FileInfo{Path: held[i].File.Path}})
			}
		}
	}
	c := g.dial(t)
	ctx := context.Background()
	// An abandoned request first: its reply comes, late, among the others.
	actx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.StatFile(actx, "/abandoned"); !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned stat: %v", err)
	}
	var wg sync.WaitGroup
	for _, p := range []string{"/one", "/two"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fi, err := c.StatFile(ctx, p)
			if err != nil || fi.Path != p {
				t.Errorf("stat %s: got %+v, %v", p, fi, err)
			}
		}()
	}
	wg.Wait()
	if err := c.Ping(ctx); err != nil {
		t.Errorf("ping after: %v", err)
	}
}

// Guards the host side of streaming: output reaches the caller chunk by chunk while the
// run is going on (here the run waits for the host's signal after its first line), and
// the result holds the output up to the limit.
func TestStreamingAndLimit(t *testing.T) {
	c := newFakeGuest(t, Version).dial(t)
	r, err := c.Start(&ExecRequest{Code: "out first\nwait"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	r.out = func(stream string, p []byte) {
		got <- string(p)
		if string(p) == "first\n" {
			r.Signal("TERM") // answered by the fake with a line, once the first was seen
		}
		if strings.HasPrefix(string(p), "signal") {
			r.Cancel()
		}
	}
	res, err := r.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != VerdictCanceled || string(res.Stdout) != "first\nsignal TERM\n" {
		t.Fatalf("got %+v stdout %q", res, res.Stdout)
	}

	res, err = c.Exec(context.Background(), &ExecRequest{Code: "big 300000", Limits: Limits{MaxOutputBytes: 100000}}, nil)
	if err != nil || len(res.Stdout) != 100000 || !res.StdoutTruncated {
		t.Fatalf("over the host's limit: %d bytes, truncated %v, %v", len(res.Stdout), res.StdoutTruncated, err)
	}
	res, err = c.Exec(context.Background(), &ExecRequest{Code: "big 8388608", Limits: Limits{MaxOutputBytes: 16 << 20}}, nil)
	if err != nil || len(res.Stdout) != 8<<20 || res.StdoutTruncated || len(res.Stderr) != 0 || res.Stderr == nil {
		t.Fatalf("8 MiB under 16 MiB: %d bytes, truncated %v, %v", len(res.Stdout), res.StdoutTruncated, err)
	}
}

// Guards cancellation: a caller whose ctx ends gets the canceled result when the guest
// answers the cancel, ctx's error when it does not, and the client works on.
func TestExecCancel(t *testing.T) {
	c := newFakeGuest(t, Version).dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	res, err := c.Exec(ctx, &ExecRequest{Code: "out a\nwait\nout after"}, func(string, []byte) {
		calls++
		cancel() // the caller goes away after the first chunk
	})
	if err != nil || res.Verdict != VerdictCanceled {
		t.Fatalf("cancelled run: %+v, %v; want verdict canceled", res, err)
	}
	if calls != 1 || string(res.Stdout) != "a\nafter\n" {
		t.Errorf("out called %d times (want 1: not after the cancel); stdout %q", calls, res.Stdout)
	}

	old := CancelGrace
	defer func() { cancelGrace = old }()
	cancelGrace = 50 * time.Millisecond
	tctx, tcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer tcancel()
	if _, err := c.Exec(tctx, &ExecRequest{Code: "hang"}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung run: err = %v, want deadline exceeded", err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping after: %v", err)
	}
}

// Guards file streaming: a large file goes in and comes out byte-identical in bounded
// frames; errors the guest reports arrive as the sentinel errors.
func TestFileStreaming(t *testing.T) {
	g := newFakeGuest(t, Version)
	var maxFrame int
	var mu sync.Mutex
	g.handle = func(g *fakeGuest, e *Envelope) {
		mu.Lock()
		maxFrame = max(maxFrame, len(e.Data))
		mu.Unlock()
		g.serve(e)
	}
	c := g.dial(t)
	ctx := context.Background()
	data := make([]byte, 5<<20+12345)
	rand.New(rand.NewSource(1)).Read(data)
	if err := c.WriteFile(ctx, "/big", 0o600, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if maxFrame > ChunkSize {
		t.Errorf("a data frame of %d bytes, over ChunkSize", maxFrame)
	}
	fi, rc, err := c.OpenFile(ctx, "/big")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc)
	rc.Close()
	if err != nil || n != int64(len(data)) || fi.Size != int64(len(data)) {
		t.Fatalf("read back %d bytes (info %d), %v", n, fi.Size, err)
	}
	if sum := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Fatal("read back different bytes")
	}

	// Close before the end: the rest is discarded and the connection goes on.
	_, rc, err = c.OpenFile(ctx, "/big")
	if err != nil {
		t.Fatal(err)
	}
	rc.Read(make([]byte, 10))
	rc.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after an early close: %v", err)
	}

	errCases := []struct {
		name string
		call func() error
		want error
	}{
		{"stat missing", func() error { _, err := c.StatFile(ctx, "/missing"); return err }, ErrNotExist},
		{"open missing", func() error { _, _, err := c.OpenFile(ctx, "/missing"); return err }, ErrNotExist},
		{"open dir", func() error { _, _, err := c.OpenFile(ctx, "/dir"); return err }, ErrIsDir},
		{"write dir", func() error { return c.WriteFile(ctx, "/dir", 0, bytes.NewReader(data)) }, ErrIsDir},
	}
	for _, tc := range errCases {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	list, err := c.ListFiles(ctx, "/", 1)
	if err != nil || len(list) != 3 || list[2].Name != "c" {
		t.Errorf("list in two batches: %+v, %v", list, err)
	}
}

// Guards the end of the connection: every pending and later call fails with ErrClosed.
func TestConnectionLost(t *testing.T) {
	g := newFakeGuest(t, Version)
	c := g.dial(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), &ExecRequest{Code: "hang"}, nil)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the exec be sent; either order is fine
	g.guestW.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending exec: %v, want ErrClosed", err)
	}
	<-c.Done()
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("later ping: %v, want ErrClosed", err)
	}
}
