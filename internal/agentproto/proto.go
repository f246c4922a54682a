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
// Every message is one frame: a 4-byte big-endian length word followed by that many
// bytes. If the word's top bit is clear, the bytes are JSON encoding an [Envelope]. If
// it is set, the frame is a binary data frame, which carries the bulk of the bytes
// (output and file contents) without JSON's base64: the operation ID (8 bytes, big
// endian), a kind byte — 1 output on stdout, 2 output on stderr, 3 data, 4 data that
// ends a write's body — and the data; it decodes to the same Envelope (type output or
// data). Frames longer than [MaxFrame] are refused by both sides; the reader treats an
// oversize length as a fatal protocol error rather than allocating. Only the handshake
// must be JSON, so a peer of another version never sees a binary frame.
//
// Each frame belongs to one operation, named by the frame's ID (see below). A frame's
// data is bounded by [ChunkSize]: output and file contents travel as a sequence of
// chunks, never as one whole frame, so neither side ever holds a whole output or file
// in one message.
//
// # Handshake
//
// The host speaks first. Each new connection (a new sandbox, or the new pipes of a
// restored sandbox) begins with a handshake, in which each side says the version it
// speaks:
//
//	host → guest  {"type":"hello","id":1,"hello":{"version":2,"entropy":"<base64>"}}
//	guest → host  {"type":"hello","id":1,"hello":{"version":2,"agent":"vmexec-agent/…","languages":[…]}}
//
// The guest always answers with its own version; the host checks it before sending
// anything else and fails fast on a mismatch ([ErrVersion]) — a version 1 guest
// answers a version 2 hello with version 1, and the other way round. A hello also
// starts a new session in the guest: operations of an earlier connection are cancelled
// and nothing more is sent for them. The host's hello carries fresh entropy, which
// the guest mixes into its kernel's random state before it answers: a restored
// sandbox's programs never see the random state of the image it came from.
//
// # Operations and multiplexing
//
// After the handshake the host may have many operations in flight at once. It gives
// each a fresh ID (increasing, unique on the connection); every frame of an operation,
// in both directions, carries it. Frames of different operations interleave freely;
// frames of one operation keep their order. (The guest serves operations concurrently
// but runs one program at a time: a second exec waits for the first.) The host client
// ([Client]; [Run] for a run's Signal and Cancel) has a single reader
// goroutine that hands each frame to the operation waiting for its ID (a frame for an
// ID nobody waits for, say a late reply to an abandoned operation, is dropped).
//
//	host → guest                    guest → host
//	ping                            pong
//	exec {exec}                     output {stream, data}* then result {result}
//	cancel (ID of a running op)     — (the op ends early: a run with verdict canceled)
//	signal {signal} (ID of a run)   — (the signal goes to the run's process group)
//	stat {file}                     info {info}
//	list {file: path, depth}        entries {entries}* then done
//	read {file}                     info {info}, data {data}* then done
//	write {file: path, mode},       done (when the file is in place)
//	  data {data}*, data {eof}
//	mkdir {file}                    done
//	remove {file: path, recursive}  done
//
// Any operation may instead end with an error frame {error, code}: code names one of
// the sentinel errors ([ErrNotExist], [ErrIsDir], [ErrNotDir], [ErrFileTooLarge],
// [ErrInvalidPath], [ErrInvalidRequest]) or is empty; the client returns a
// [*GuestError] wrapping that sentinel. An exec the guest refuses (a missing working
// directory, an invalid environment variable name, an empty PATH) is an error frame
// with code invalid_request, not a result. A malformed frame gets an error frame with
// ID 0.
//
// # Runs
//
// A run's output streams as output frames while it runs, each stream's chunks in
// order, all of them before the result frame, which carries no output (only the
// truncation flags). The guest counts what it sends: a stream passes its
// max_output_bytes limit → the chunk is cut at the limit, nothing more is sent for that
// stream, the process group is killed and the verdict is output_limit. The client
// accumulates the chunks into ExecResult.Stdout/Stderr and hands them to the caller's
// [OutputFunc] as they come. Stdin travels whole in the exec request and is closed
// after it is written. cancel kills the run's process group; its result follows with
// verdict canceled. signal sends a signal to the run's process group and nothing else.
// An exec with changes set also gets the run's change set in its result: the paths
// under the areas named that the run created, modified and deleted, found from
// metadata only (see internal/guest/changes.go).
//
// # Files
//
// Paths are absolute or relative to the run user's home. read answers with the file's
// info, then its content as data frames and done; a cancel stops the stream early
// (done or error follows; the client discards it). write sends the file's body as data
// frames after the request, the last with eof set; the guest writes it to a temporary
// file next to the target, renamed into place when the body is complete (a failed or
// cancelled write leaves nothing). If the guest fails early it answers with an error
// frame at once and drops the rest of the body.
//
// # Flow control
//
// There are no credits or windows: back-pressure is the transport's. A sender whose
// frame the other side does not read blocks in its write (pipes and virtio-serial
// ports have small buffers), and the guest's output pump blocks with it, and with the
// pump the program writing to its stdout. So a slow host makes a chatty program wait
// rather than making the guest buffer its output; likewise the guest reads a write's
// body only as fast as it can write it to the file. The host's reader hands each
// operation its frames through a small buffer, and blocks when it is full: a caller
// that stops taking its frames (an OpenFile reader neither read nor closed, an
// OutputFunc that blocks) stalls the whole connection, and with it the guest. That is
// the price of having no per-operation windows, and why an OutputFunc should return
// promptly (and wait for another call on the same connection only while its run
// writes nothing more).
//
// # Checkpoint and restore
//
// A sandbox is checkpointed only while no operation is in flight: the guest is blocked
// reading the next frame. Restored onto new pipes (or a new virtio-serial connection),
// it reads the host's next hello from there, which starts a fresh session.
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
const Version = 2

// MaxFrame bounds a frame's payload. Only a host's exec request (code and stdin) can
// come near it; every frame the guest sends is at most a ChunkSize chunk (or a batch of
// directory entries) plus JSON overhead.
const MaxFrame = 16 << 20

// ChunkSize bounds the data of one output or file data frame.
const ChunkSize = 64 << 10

// MaxOutputBytes is what the Client keeps of one output stream of a run whose request
// sets no limit (the guest's own default is lower): a bound on the host's memory.
const MaxOutputBytes = 16 << 20

// Errors returned by this package.
var (
	ErrFrameTooLarge = errors.New("frame exceeds size limit")
	ErrVersion       = errors.New("protocol version mismatch")
	ErrUnexpected    = errors.New("unexpected message")
	// ErrMalformed means a frame's content could not be decoded.
	ErrMalformed = errors.New("malformed frame")
	// ErrClosed means the connection to the guest ended or failed: the guest (or its
	// sandbox) may have died. Every transport failure the Client returns wraps it.
	ErrClosed = errors.New("agent connection closed")
)

// Errors the guest reports about a request, returned (wrapped) by the Client so that
// errors.Is works on them. On the wire they are the Code of an error frame.
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

// Error codes of error frames, one per sentinel error above.
const (
	CodeInvalidRequest = "invalid_request"
	CodeNotExist       = "not_exist"
	CodeIsDir          = "is_dir"
	CodeNotDir         = "not_dir"
	CodeFileTooLarge   = "file_too_large"
	CodeInvalidPath    = "invalid_path"
)

var codes = []struct {
	code string
	err  error
}{
	{CodeInvalidRequest, ErrInvalidRequest},
	{CodeNotExist, ErrNotExist},
	{CodeIsDir, ErrIsDir},
	{CodeNotDir, ErrNotDir},
	{CodeFileTooLarge, ErrFileTooLarge},
	{CodeInvalidPath, ErrInvalidPath},
}

// CodeOf returns the error code of err (one wrapping a sentinel error of this
// package), or "" for any other error.
func CodeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// GuestError is an error frame from the guest. It wraps the sentinel error of its Code
// (none for an unknown or empty code).
type GuestError struct {
	Code string
	Msg  string
}

func (e *GuestError) Error() string { return "guest: " + e.Msg }

// Unwrap returns the sentinel error of e.Code, or nil.
func (e *GuestError) Unwrap() error {
	for _, c := range codes {
		if c.code == e.Code {
			return c.err
		}
	}
	return nil
}

// Message types. See the package doc for who sends which, and the replies.
const (
	TypeHello   = "hello"
	TypePing    = "ping"
	TypePong    = "pong"
	TypeExec    = "exec"
	TypeOutput  = "output"
	TypeResult  = "result"
	TypeCancel  = "cancel"
	TypeSignal  = "signal"
	TypeRead    = "read"
	TypeWrite   = "write"
	TypeData    = "data"
	TypeStat    = "stat"
	TypeList    = "list"
	TypeMkdir   = "mkdir"
	TypeRemove  = "remove"
	TypeInfo    = "info"
	TypeEntries = "entries"
	TypeDone    = "done"
	TypeError   = "error"
)

// Envelope is the JSON body of every frame. Type says which of the other fields are set.
type Envelope struct {
	Type string `json:"type"`
	// ID names the operation the frame belongs to: chosen by the host, unique on the
	// connection, carried by every frame of the operation in both directions.
	ID      uint64       `json:"id,omitempty"`
	Hello   *Hello       `json:"hello,omitempty"`   // hello
	Exec    *ExecRequest `json:"exec,omitempty"`    // exec
	Result  *ExecResult  `json:"result,omitempty"`  // result
	File    *FileRequest `json:"file,omitempty"`    // read, write, stat, list, mkdir, remove
	Info    *FileInfo    `json:"info,omitempty"`    // info
	Entries []FileInfo   `json:"entries,omitempty"` // entries
	Stream  string       `json:"stream,omitempty"`  // output: StreamStdout or StreamStderr
	Data    []byte       `json:"data,omitempty"`    // output, data: at most ChunkSize bytes
	EOF     bool         `json:"eof,omitempty"`     // data: the last frame of a write's body
	Signal  string       `json:"signal,omitempty"`  // signal: a name, "SIGTERM" or "TERM"
	Error   string       `json:"error,omitempty"`   // error
	Code    string       `json:"code,omitempty"`    // error: one of the Code constants, or ""
	// Context and Contexts: see contexts.go.
	Context  *ContextRequest `json:"context,omitempty"`  // context
	Contexts []ContextInfo   `json:"contexts,omitempty"` // contexts
}

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

// FileRequest names the file of a file operation.
type FileRequest struct {
	Path      string `json:"path"`                // absolute, or relative to the run user's home
	Mode      uint32 `json:"mode,omitempty"`      // write: permission bits (0 = 0o644)
	Depth     int    `json:"depth,omitempty"`     // list: levels (0 or 1 = entries only)
	Recursive bool   `json:"recursive,omitempty"` // remove: a directory with its content
}

// Hello is the handshake payload, sent by the host first and answered by the guest.
type Hello struct {
	Version   int      `json:"version"`
	Agent     string   `json:"agent,omitempty"`     // guest: agent name and build
	Languages []string `json:"languages,omitempty"` // guest: languages it can run
	// Entropy (host): fresh random bytes the guest mixes into its kernel's random
	// state before it answers, so that sandboxes restored from one image do not share
	// it (see internal/guest/reseed.go). Dial sends 32.
	Entropy []byte `json:"entropy,omitempty"`
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
	// Changes asks the guest for the run's change set (see ChangeScan); nil: none.
	Changes *ChangeScan `json:"changes,omitempty"`
	// Context makes the exec a cell of that interpreter context (see contexts.go):
	// Language must be the context's, Stdin and Changes are not used.
	Context *ContextSpec `json:"context,omitempty"`
	// Trace asks the guest for the run's phases in ExecResult.Trace (for bench).
	Trace bool `json:"trace,omitempty"`
}

// ChangeScan asks the guest to compare the metadata (type, size, mode, mtime, ctime,
// inode) of the files under Paths before and after the run, without reading their
// contents, and to report what the run created, modified and deleted.
type ChangeScan struct {
	// Paths are the areas scanned: absolute, or relative to the run user's home.
	// Empty: the home, /tmp and the run's working directory. The agent's own run
	// directories are never scanned.
	Paths []string `json:"paths,omitempty"`
	// MaxEntries bounds the changes reported (default 1000); MaxScan bounds the entries
	// one scan visits (default 20000). Past either bound the result says
	// ChangesTruncated.
	MaxEntries int `json:"max_entries,omitempty"`
	MaxScan    int `json:"max_scan,omitempty"`
}

// Change kinds. A rename is a delete of the old path and a create of the new one.
const (
	ChangeCreated  = "created"
	ChangeModified = "modified"
	ChangeDeleted  = "deleted"
)

// Change is one path a run created, modified or deleted. Size and Mode are the
// file's after the run (before it, for a deleted file).
type Change struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // ChangeCreated, ChangeModified, ChangeDeleted
	Type string `json:"type"` // FileTypeFile, FileTypeDir, FileTypeSymlink, FileTypeOther
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"` // permission bits
}

// Limits bound one run inside the guest.
type Limits struct {
	TimeoutMS      int64 `json:"timeout_ms,omitempty"`       // wall clock, compile included
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"` // per stream; output past it is cut and the run killed
	MaxFileBytes   int64 `json:"max_file_bytes,omitempty"`   // largest file a run may write (RLIMIT_FSIZE)
	MaxProcs       int64 `json:"max_procs,omitempty"`        // processes of the sandbox user (RLIMIT_NPROC)
	MemoryBytes    int64 `json:"memory_bytes,omitempty"`     // resident memory of the run's processes together (see guest's memwatch.go)
}

// ExecResult is the guest's answer to an ExecRequest.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	// Stdout and Stderr are not sent in the result frame (the output came before it,
	// in output frames): the Client fills them in from those.
	Stdout          []byte `json:"stdout,omitempty"`
	Stderr          []byte `json:"stderr,omitempty"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	DurationMS      int64  `json:"duration_ms"`
	Verdict         string `json:"verdict"`
	// Error reports a failure to start the program at all (unknown language, no
	// toolchain); the run then has exit code -1 and verdict killed. (A request the
	// guest refuses, such as a missing working directory, gets no result but an error
	// frame: ErrInvalidRequest.)
	Error string `json:"error,omitempty"`
	// Changes is the run's change set when the request asked for one, sorted by path;
	// ChangesTruncated says it is incomplete (over a bound); ChangesScanUS is what the
	// two scans and their comparison cost, in microseconds.
	Changes          []Change `json:"changes,omitempty"`
	ChangesTruncated bool     `json:"changes_truncated,omitempty"`
	ChangesScanUS    int64    `json:"changes_scan_us,omitempty"`
	// Cell is a cell's outcome (an exec with a context).
	Cell *CellOutcome `json:"cell,omitempty"`
	// Settled (with a change set only) says that after the run nothing but the
	// agent's own processes runs in the sandbox, no System V IPC object exists and the
	// writable areas the change set did not scan are empty (see the guest's
	// settled.go): with an empty, whole change set, the run left the sandbox's state
	// as it found it.
	Settled bool `json:"settled,omitempty"`
	// Trace is the run's phases when the request asked for them: the moments the guest
	// agent reached each, in order, from the start of its handling of the request.
	Trace []TracePoint `json:"trace,omitempty"`
	// TraceStartUS is when the guest began handling the traced request (Unix time,
	// microseconds; gVisor's clock is the host's), to place the trace on the host's
	// time line.
	TraceStartUS int64 `json:"trace_start_us,omitempty"`
}

// TracePoint is one phase of a traced run: its name and when the guest reached it,
// in microseconds since the guest began handling the request.
type TracePoint struct {
	Name string `json:"name"`
	US   int64  `json:"us"`
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

// Binary frames: the length word's top bit set, then the operation ID (8 bytes, big
// endian), a kind byte and the data.
const (
	binaryFlag   = 1 << 31
	binaryHeader = 9
)

// Kinds of binary frames.
const (
	kindStdout  = 1 // output, stream stdout
	kindStderr  = 2 // output, stream stderr
	kindData    = 3 // data
	kindDataEOF = 4 // data, the last of a write's body
)

// binaryKind returns the kind byte e is sent as, or 0 to send it as JSON.
func binaryKind(e *Envelope) byte {
	switch {
	case e.Type == TypeOutput && e.Stream == StreamStdout:
		return kindStdout
	case e.Type == TypeOutput && e.Stream == StreamStderr:
		return kindStderr
	case e.Type == TypeData && e.EOF:
		return kindDataEOF
	case e.Type == TypeData:
		return kindData
	}
	return 0
}

// Send writes one envelope as a frame: output and data envelopes as binary frames,
// anything else as JSON.
func (c *Conn) Send(e *Envelope) error {
	var buf []byte
	if kind := binaryKind(e); kind != 0 {
		n := binaryHeader + len(e.Data)
		if n > MaxFrame {
			return fmt.Errorf("send %s (%d bytes): %w", e.Type, n, ErrFrameTooLarge)
		}
		buf = make([]byte, 4+n)
		binary.BigEndian.PutUint32(buf, uint32(n)|binaryFlag)
		binary.BigEndian.PutUint64(buf[4:], e.ID)
		buf[12] = kind
		copy(buf[13:], e.Data)
	} else {
		b, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode %s: %w", e.Type, err)
		}
		if len(b) > MaxFrame {
			return fmt.Errorf("send %s (%d bytes): %w", e.Type, len(b), ErrFrameTooLarge)
		}
		buf = make([]byte, 4+len(b))
		binary.BigEndian.PutUint32(buf, uint32(len(b)))
		copy(buf[4:], b)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.w.Write(buf); err != nil {
		return fmt.Errorf("send %s: %w", e.Type, err)
	}
	return nil
}

// Recv reads one frame. It returns io.EOF only when the stream ends cleanly between
// frames; a stream that ends inside a frame is io.ErrUnexpectedEOF. A frame whose
// content cannot be decoded is an error wrapping ErrMalformed (the stream is still in
// step); an oversize length is ErrFrameTooLarge (it is not).
func (c *Conn) Recv() (*Envelope, error) {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return nil, err
	}
	word := binary.BigEndian.Uint32(c.hdr[:])
	n := word &^ binaryFlag
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
	if word&binaryFlag != 0 {
		if n < binaryHeader {
			return nil, fmt.Errorf("binary frame of %d bytes: %w", n, ErrMalformed)
		}
		e := &Envelope{ID: binary.BigEndian.Uint64(b), Data: b[binaryHeader:]}
		switch b[8] {
		case kindStdout:
			e.Type, e.Stream = TypeOutput, StreamStdout
		case kindStderr:
			e.Type, e.Stream = TypeOutput, StreamStderr
		case kindData:
			e.Type = TypeData
		case kindDataEOF:
			e.Type, e.EOF = TypeData, true
		default:
			return nil, fmt.Errorf("binary frame of kind %d: %w", b[8], ErrMalformed)
		}
		return e, nil
	}
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode frame: %w: %w", ErrMalformed, err)
	}
	return &e, nil
}
