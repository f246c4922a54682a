// Package agentproto is the host↔guest protocol spoken between vmexec and the guest
// agent (cmd/vmexec-agent) that runs as PID 1 inside every sandbox.
//
// # Transport
//
// The protocol runs over any pair of byte streams (an io.Reader and an io.Writer): the
// gVisor backend uses the container init's stdin/stdout pipes, the microVM backend a
// virtio-serial port. The transport never appears in this package.
//
// # Framing
//
// Every message is one frame: a 4-byte big-endian length followed by that many bytes of
// JSON encoding an [Envelope]. Frames longer than [MaxFrame] are refused by both sides;
// the reader treats an oversize length as a fatal protocol error rather than allocating.
//
// # Conversation
//
// The host speaks first. Each new connection (a new sandbox, or the new pipes of a
// restored sandbox) begins with a handshake:
//
//	host → guest  {"type":"hello","hello":{"version":1}}
//	guest → host  {"type":"hello","hello":{"version":1,"agent":"vmexec-agent/…","languages":[…]}}
//
// The host checks Version before sending anything else and fails fast on a mismatch
// ([ErrVersion]). After the handshake the host sends requests one at a time, each with a
// fresh ID, and the guest answers each with exactly one reply carrying the same ID:
//
//	exec  → result   run a program (see [ExecRequest], [ExecResult])
//	ping  → pong     liveness check
//
// The guest holds no per-connection state beyond the handshake, so a sandbox that is
// checkpointed while idle (blocked reading the next frame) and restored onto new pipes
// simply reads the next hello from the new connection.
package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Version is the protocol version. Host and guest must agree exactly.
const Version = 1

// MaxFrame bounds a frame's payload: two capped output streams plus JSON overhead.
const MaxFrame = 16 << 20

// Errors returned by this package.
var (
	ErrFrameTooLarge = errors.New("frame exceeds size limit")
	ErrVersion       = errors.New("protocol version mismatch")
	ErrUnexpected    = errors.New("unexpected message")
	// ErrClosed means the connection to the guest ended or failed: the guest (or its
	// sandbox) may have died. Every transport failure the Client returns wraps it.
	ErrClosed = errors.New("agent connection closed")
)

// Errors the guest reports about a request, returned (wrapped) by the Client so that
// errors.Is works on them.
var (
	// ErrInvalidRequest: the guest refused the exec request itself (a working directory
	// that is missing or not a directory, an invalid environment variable name, an empty
	// PATH); the program never ran.
	ErrInvalidRequest = errors.New("invalid request")
	ErrNotExist       = errors.New("no such file or directory")
	ErrIsDir          = errors.New("is a directory")
	ErrNotDir         = errors.New("not a directory")
	ErrFileTooLarge   = errors.New("file too large")
	ErrInvalidPath    = errors.New("invalid path")
)

// Output streams.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// OutputFunc receives a run's output while it runs: stream is StreamStdout or
// StreamStderr; chunks of one stream arrive in order. It must not retain p.
type OutputFunc func(stream string, p []byte)

// FileInfo describes one file in a sandbox.
type FileInfo struct {
	Name  string    `json:"name"`
	Path  string    `json:"path"` // absolute, inside the sandbox
	Type  string    `json:"type"` // file, dir, symlink, other
	Size  int64     `json:"size"`
	Mode  uint32    `json:"mode"` // permission bits (0o777 mask)
	MTime time.Time `json:"mtime"`
}

// File types of FileInfo.Type.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// Message types.
const (
	TypeHello  = "hello"
	TypeExec   = "exec"
	TypeResult = "result"
	TypePing   = "ping"
	TypePong   = "pong"
	TypeError  = "error"
)

// Envelope is the JSON body of every frame. Exactly one payload field matching Type is set.
type Envelope struct {
	Type   string       `json:"type"`
	ID     uint64       `json:"id,omitempty"`
	Hello  *Hello       `json:"hello,omitempty"`
	Exec   *ExecRequest `json:"exec,omitempty"`
	Result *ExecResult  `json:"result,omitempty"`
	Error  string       `json:"error,omitempty"`
}

// Hello is the handshake payload, sent by the host first and answered by the guest.
type Hello struct {
	Version   int      `json:"version"`
	Agent     string   `json:"agent,omitempty"`     // guest: agent name and build
	Languages []string `json:"languages,omitempty"` // guest: languages it can run
}

// Verdicts: how a run ended. Every ExecResult carries exactly one.
const (
	VerdictOK          = "ok"           // exited 0
	VerdictNonzeroExit = "nonzero_exit" // exited with a non-zero status (includes compile errors)
	VerdictTimeout     = "timeout"      // wall-clock limit reached; the process group was killed
	VerdictOutputLimit = "output_limit" // an output stream passed its limit; the process group was killed
	VerdictMemoryLimit = "memory_limit" // memory limit reached
	VerdictKilled      = "killed"       // ended by a signal it did not choose (or the sandbox died)
	VerdictCanceled    = "canceled"     // the host cancelled the run (its caller went away)
)

// ExecRequest asks the guest to run one program. Zero limits mean the guest's defaults.
type ExecRequest struct {
	Language string            `json:"language"` // python, javascript, bash, rust, go
	Code     string            `json:"code"`
	Stdin    []byte            `json:"stdin,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	WorkDir  string            `json:"workdir,omitempty"` // default /home/user
	Limits   Limits            `json:"limits"`
}

// Limits bound one run inside the guest.
type Limits struct {
	TimeoutMS      int64 `json:"timeout_ms,omitempty"`       // wall clock, compile included
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"` // per stream
	MaxFileBytes   int64 `json:"max_file_bytes,omitempty"`   // largest file a run may write (RLIMIT_FSIZE)
	MaxProcs       int64 `json:"max_procs,omitempty"`        // processes of the sandbox user (RLIMIT_NPROC)
	MemoryBytes    int64 `json:"memory_bytes,omitempty"`     // address-space cap where the language tolerates it
}

// ExecResult is the guest's answer to an ExecRequest.
type ExecResult struct {
	ExitCode        int    `json:"exit_code"`
	Signal          string `json:"signal,omitempty"`
	Stdout          []byte `json:"stdout"`
	Stderr          []byte `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	DurationMS      int64  `json:"duration_ms"`
	Verdict         string `json:"verdict"`
	// Error reports a failure to start the program at all (unknown language, no
	// toolchain); the run then has exit code -1 and verdict killed.
	Error string `json:"error,omitempty"`
}

// Conn frames envelopes over a reader and a writer. Reads and writes are each safe
// for one goroutine at a time; Send may be called concurrently with Recv.
type Conn struct {
	r   io.Reader
	w   io.Writer
	wmu sync.Mutex
	hdr [4]byte
}

// NewConn returns a Conn reading frames from r and writing them to w.
func NewConn(r io.Reader, w io.Writer) *Conn { return &Conn{r: r, w: w} }

// Send writes one envelope as a frame.
func (c *Conn) Send(e *Envelope) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode %s: %w", e.Type, err)
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("send %s (%d bytes): %w", e.Type, len(b), ErrFrameTooLarge)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.w.Write(buf); err != nil {
		return fmt.Errorf("send %s: %w", e.Type, err)
	}
	return nil
}

// Recv reads one frame. It returns io.EOF only when the stream ends cleanly between
// frames; a stream that ends inside a frame is io.ErrUnexpectedEOF.
func (c *Conn) Recv() (*Envelope, error) {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(c.hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("recv frame of %d bytes: %w", n, ErrFrameTooLarge)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode frame: %w", err)
	}
	return &e, nil
}
