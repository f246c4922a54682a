package agentproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
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
		{Type: TypeResult, ID: 7, Result: &ExecResult{ExitCode: 3, Stdout: []byte("\xff\xfe not utf8"), Verdict: VerdictNonzeroExit}},
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
		if got.Type != want.Type || got.ID != want.ID {
			t.Fatalf("frame %d: got %s/%d want %s/%d", i, got.Type, got.ID, want.Type, want.ID)
		}
	}
	if got, _ := NewConn(&buf, io.Discard).Recv(); got != nil {
		t.Fatalf("expected EOF, got %v", got)
	}
	res := in[2].Result
	_ = res
}

// Guards against a hostile or corrupt peer making the reader allocate gigabytes.
func TestOversizeFrameRefused(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	_, err := NewConn(bytes.NewReader(hdr[:]), io.Discard).Recv()
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
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

// fakeGuest answers a handshake with the given version, then pings.
func fakeGuest(t *testing.T, version int) (hostR io.Reader, hostW io.Writer, closer io.Closer) {
	h2gR, h2gW := io.Pipe()
	g2hR, g2hW := io.Pipe()
	go func() {
		conn := NewConn(h2gR, g2hW)
		for {
			e, err := conn.Recv()
			if err != nil {
				g2hW.CloseWithError(err)
				return
			}
			switch e.Type {
			case TypeHello:
				conn.Send(&Envelope{Type: TypeHello, ID: e.ID, Hello: &Hello{Version: version, Agent: "fake"}})
			case TypePing:
				conn.Send(&Envelope{Type: TypePong, ID: e.ID})
			case TypeExec:
				// never answers: lets the test exercise cancellation
			}
		}
	}()
	return g2hR, h2gW, multiCloser{h2gW, g2hR}
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	for _, c := range m {
		c.Close()
	}
	return nil
}

// Guards "handshake before trust": a guest of another version is refused at once.
func TestHandshakeVersion(t *testing.T) {
	ctx := context.Background()
	r, w, cl := fakeGuest(t, Version)
	c, err := Dial(ctx, r, w, cl)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	r, w, cl = fakeGuest(t, Version+1)
	defer cl.Close()
	if _, err := Dial(ctx, r, w, cl); !errors.Is(err, ErrVersion) {
		t.Fatalf("err = %v, want ErrVersion", err)
	}
}

// Guards that a request whose context ends does not hang the caller.
func TestExecCancel(t *testing.T) {
	r, w, cl := fakeGuest(t, Version)
	defer cl.Close()
	c, err := Dial(context.Background(), r, w, cl)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Exec(ctx, &ExecRequest{Language: "bash", Code: "sleep 100"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}
