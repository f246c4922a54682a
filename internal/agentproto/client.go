package agentproto

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// CancelGrace is how long Exec waits for a cancelled run's result (the guest kills the
// run's process group and answers) before it gives up and returns ctx's error.
const CancelGrace = 5 * time.Second

var cancelGrace = CancelGrace // tests shorten it

// opBuffer is how many frames of one operation the reader queues before it blocks.
const opBuffer = 8

// Client is the host's side of one connection to a guest agent. Its methods are safe
// for concurrent use: each call is one operation with its own ID, multiplexed on the
// connection (see the package doc).
//
// One goroutine reads the connection and hands every frame to the operation waiting
// for its ID. When the connection ends, every pending and later call fails with an
// error wrapping ErrClosed.
type Client struct {
	conn   *Conn
	closer io.Closer
	Guest  Hello // the guest's handshake reply

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*op
	err     error         // why the reader stopped; set before done closes
	done    chan struct{} // closed when the reader stops
}

// op is one operation in flight: the reader delivers its frames to ch, in order, and
// closes ch when the connection ends. gone closes when the caller abandons it.
type op struct {
	id       uint64
	ch       chan *Envelope
	gone     chan struct{}
	goneOnce sync.Once
}

// Dial performs the handshake over r/w and returns a ready Client. closer (may be nil)
// is closed if the handshake fails (say ctx ends first), which unblocks the reader;
// Close closes it too. ctx bounds the handshake only.
func Dial(ctx context.Context, r io.Reader, w io.Writer, closer io.Closer) (*Client, error) {
	c := &Client{conn: NewConn(r, w), closer: closer, pending: map[uint64]*op{}, done: make(chan struct{})}
	go c.readLoop()
	hello, err := c.handshake(ctx)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	c.Guest = *hello
	return c, nil
}

func (c *Client) handshake(ctx context.Context) (*Hello, error) {
	entropy := make([]byte, 32)
	rand.Read(entropy)
	o, err := c.start(&Envelope{Type: TypeHello, Hello: &Hello{Version: Version, Entropy: entropy}})
	if err != nil {
		return nil, err
	}
	defer c.finish(o)
	reply, err := c.next(ctx, o)
	if err != nil {
		return nil, err
	}
	if reply.Type != TypeHello || reply.Hello == nil {
		return nil, fmt.Errorf("got %q: %w", reply.Type, ErrUnexpected)
	}
	if reply.Hello.Version != Version {
		return nil, fmt.Errorf("guest speaks version %d, host %d: %w", reply.Hello.Version, Version, ErrVersion)
	}
	return reply.Hello, nil
}

// Close closes the connection's closer (if any); pending calls then fail with ErrClosed
// once the reader sees the end.
func (c *Client) Close() error {
	if c.closer != nil {
		return c.closer.Close()
	}
	return nil
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) readLoop() {
	var err error
	for {
		var e *Envelope
		if e, err = c.conn.Recv(); err != nil {
			break
		}
		c.mu.Lock()
		o := c.pending[e.ID]
		c.mu.Unlock()
		if o == nil {
			continue // a late frame of an abandoned operation
		}
		select {
		case o.ch <- e:
		case <-o.gone:
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the guest never ends a connection by itself
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	for id, o := range c.pending {
		delete(c.pending, id)
		close(o.ch)
	}
	c.mu.Unlock()
	close(c.done)
}

// start registers a new operation, gives e its ID and sends it.
func (c *Client) start(e *Envelope) (*op, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	o := &op{id: c.nextID, ch: make(chan *Envelope, opBuffer), gone: make(chan struct{})}
	c.pending[o.id] = o
	c.mu.Unlock()
	e.ID = o.id
	if err := c.send(e); err != nil {
		c.finish(o)
		return nil, err
	}
	return o, nil
}

// finish abandons o: its later frames are dropped.
func (c *Client) finish(o *op) {
	o.goneOnce.Do(func() {
		close(o.gone)
		c.mu.Lock()
		if c.pending[o.id] == o {
			delete(c.pending, o.id)
		}
		c.mu.Unlock()
	})
}

func (c *Client) send(e *Envelope) error {
	if err := c.conn.Send(e); err != nil {
		if errors.Is(err, ErrFrameTooLarge) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return nil
}

// cancel abandons o and asks the guest to stop it (best effort). Abandoning first
// matters: the reader must not block handing o a frame nobody will take while the
// cancel waits for the guest to read it.
func (c *Client) cancel(o *op) {
	c.finish(o)
	c.send(&Envelope{Type: TypeCancel, ID: o.id})
}

// next returns o's next frame; an error frame is returned as a *GuestError.
func (c *Client) next(ctx context.Context, o *op) (*Envelope, error) {
	select {
	case e, ok := <-o.ch:
		return c.frame(e, ok)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Client) frame(e *Envelope, ok bool) (*Envelope, error) {
	if !ok {
		<-c.done
		return nil, c.err
	}
	if e.Type == TypeError {
		return nil, &GuestError{Code: e.Code, Msg: e.Error}
	}
	return e, nil
}

// call runs an operation that has a single reply of type want.
func (c *Client) call(ctx context.Context, e *Envelope, want string) (*Envelope, error) {
	o, err := c.start(e)
	if err != nil {
		return nil, err
	}
	defer c.finish(o)
	reply, err := c.next(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			c.cancel(o)
		}
		return nil, err
	}
	if reply.Type != want {
		return nil, fmt.Errorf("got %q, want %q: %w", reply.Type, want, ErrUnexpected)
	}
	return reply, nil
}

// Ping checks that the guest answers.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.call(ctx, &Envelope{Type: TypePing}, TypePong); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Exec runs one program in the guest and waits for its result: Start, then Wait.
// The guest enforces req.Limits; ctx is the host's own bound. out (may be nil)
// receives the output as it comes, on the caller's goroutine; the result carries it
// all as well, up to the stream limit (req.Limits.MaxOutputBytes, or MaxOutputBytes
// when it is zero).
//
// If ctx ends first, Exec sends the guest a cancel, stops calling out, and waits up to
// CancelGrace for the result (verdict canceled, unless the run ended by itself
// first), which it returns with a nil error; if none comes it returns ctx's error. A request the guest refuses is an error wrapping
// ErrInvalidRequest.
func (c *Client) Exec(ctx context.Context, req *ExecRequest, out OutputFunc) (*ExecResult, error) {
	r, err := c.Start(req, out)
	if err != nil {
		return nil, err
	}
	return r.Wait(ctx)
}

// Run is a program started by Start: Wait for its result, and meanwhile Signal or
// Cancel it.
type Run struct {
	c              *Client
	o              *op
	out            OutputFunc
	stdout, stderr capped
}

// Start sends an exec request and returns the run; its output goes to out (may be
// nil) from within Wait, which must be called.
func (c *Client) Start(req *ExecRequest, out OutputFunc) (*Run, error) {
	o, err := c.start(&Envelope{Type: TypeExec, Exec: req})
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	limit := req.Limits.MaxOutputBytes
	if limit <= 0 {
		limit = MaxOutputBytes
	}
	r := &Run{c: c, o: o, out: out}
	r.stdout.limit, r.stderr.limit = limit, limit
	return r, nil
}

// Signal sends a signal ("SIGTERM", "TERM", "INT", ...) to the run's process group.
// A run that has ended, or an unknown name, is ignored by the guest.
func (r *Run) Signal(sig string) error {
	return r.c.send(&Envelope{Type: TypeSignal, ID: r.o.id, Signal: sig})
}

// Cancel asks the guest to kill the run; Wait then returns its result, with verdict
// canceled.
func (r *Run) Cancel() error {
	return r.c.send(&Envelope{Type: TypeCancel, ID: r.o.id})
}

// Wait collects the run's output and returns its result; see Exec for ctx.
func (r *Run) Wait(ctx context.Context) (*ExecResult, error) {
	defer r.c.finish(r.o)
	done := ctx.Done() // nil once cancelled (and for a ctx that never ends)
	cancelled := false
	var grace <-chan time.Time
	for {
		select {
		case e, ok := <-r.o.ch:
			e, err := r.c.frame(e, ok)
			if err != nil {
				return nil, fmt.Errorf("exec: %w", err)
			}
			switch e.Type {
			case TypeOutput:
				if e.Stream == StreamResult { // a cell's rich result: not output
					if r.out != nil && !cancelled {
						r.out(e.Stream, e.Data)
					}
					break
				}
				s := &r.stdout
				if e.Stream == StreamStderr {
					s = &r.stderr
				}
				s.add(e.Data)
				if r.out != nil && !cancelled {
					r.out(e.Stream, e.Data)
				}
			case TypeResult:
				if e.Result == nil {
					return nil, fmt.Errorf("exec: result without a payload: %w", ErrUnexpected)
				}
				res := e.Result
				res.Stdout, res.Stderr = r.stdout.bytes(), r.stderr.bytes()
				res.StdoutTruncated = res.StdoutTruncated || r.stdout.truncated
				res.StderrTruncated = res.StderrTruncated || r.stderr.truncated
				return res, nil
			default:
				return nil, fmt.Errorf("exec: got %q: %w", e.Type, ErrUnexpected)
			}
		case <-done:
			done, cancelled = nil, true
			go r.Cancel() // the frames keep coming meanwhile: go on taking them
			t := time.NewTimer(cancelGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			return nil, fmt.Errorf("exec: %w (the guest did not answer the cancel)", ctx.Err())
		}
	}
}

// capped accumulates one output stream up to limit bytes.
type capped struct {
	buf       []byte
	limit     int64
	truncated bool
}

func (c *capped) add(p []byte) {
	room := c.limit - int64(len(c.buf))
	if int64(len(p)) > room {
		p, c.truncated = p[:max(room, 0)], true
	}
	c.buf = append(c.buf, p...)
}

func (c *capped) bytes() []byte {
	if c.buf == nil {
		return []byte{}
	}
	return c.buf
}

// WriteFile writes r's content to path in the guest (mode 0 means 0o644), streaming
// it in ChunkSize frames. The file appears whole when the body is complete, or not at
// all. Errors the guest reports wrap the sentinel errors of this package.
func (c *Client) WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) error {
	if err := c.writeFile(ctx, path, mode, r); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func (c *Client) writeFile(ctx context.Context, path string, mode uint32, r io.Reader) error {
	o, err := c.start(&Envelope{Type: TypeWrite, File: &FileRequest{Path: path, Mode: mode}})
	if err != nil {
		return err
	}
	defer c.finish(o)
	buf := make([]byte, ChunkSize)
	for eof := false; !eof; {
		// The guest answers early only to refuse: stop sending then.
		select {
		case e, ok := <-o.ch:
			if _, err := c.frame(e, ok); err != nil {
				return err
			}
			return fmt.Errorf("got %q before the body was sent: %w", e.Type, ErrUnexpected)
		default:
		}
		if err := ctx.Err(); err != nil {
			c.cancel(o)
			return err
		}
		n, rerr := io.ReadFull(r, buf)
		switch {
		case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
			eof = true
		case rerr != nil:
			c.cancel(o)
			return fmt.Errorf("read the body: %w", rerr)
		}
		if err := c.send(&Envelope{Type: TypeData, ID: o.id, Data: buf[:n], EOF: eof}); err != nil {
			return err
		}
	}
	e, err := c.next(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			c.cancel(o)
		}
		return err
	}
	if e.Type != TypeDone {
		return fmt.Errorf("got %q: %w", e.Type, ErrUnexpected)
	}
	return nil
}

// OpenFile opens path in the guest for reading and returns its info and a reader that
// streams its content; the caller must Close it. Reads are bounded by ctx too. A
// directory is ErrIsDir.
func (c *Client) OpenFile(ctx context.Context, path string) (FileInfo, io.ReadCloser, error) {
	o, err := c.start(&Envelope{Type: TypeRead, File: &FileRequest{Path: path}})
	if err != nil {
		return FileInfo{}, nil, fmt.Errorf("read %s: %w", path, err)
	}
	e, err := c.next(ctx, o)
	if err == nil && (e.Type != TypeInfo || e.Info == nil) {
		err = fmt.Errorf("got %q: %w", e.Type, ErrUnexpected)
	}
	if err != nil {
		c.cancel(o)
		c.finish(o)
		return FileInfo{}, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return *e.Info, &fileReader{c: c, o: o, ctx: ctx, path: path}, nil
}

// fileReader is the content of a file being read from the guest.
type fileReader struct {
	c    *Client
	o    *op
	ctx  context.Context
	path string
	buf  []byte
	err  error // sticky: io.EOF at the end
}

func (f *fileReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 && f.err == nil {
		e, err := f.c.next(f.ctx, f.o)
		switch {
		case err != nil:
			f.err = fmt.Errorf("read %s: %w", f.path, err)
		case e.Type == TypeDone:
			f.err = io.EOF
		case e.Type == TypeData:
			f.buf = e.Data
		default:
			f.err = fmt.Errorf("read %s: got %q: %w", f.path, e.Type, ErrUnexpected)
		}
	}
	if len(f.buf) > 0 {
		n := copy(p, f.buf)
		f.buf = f.buf[n:]
		return n, nil
	}
	return 0, f.err
}

// Close stops the stream: before its end, the guest is told to stop sending.
func (f *fileReader) Close() error {
	if f.err == nil {
		f.err = errors.New("read after close")
		f.c.cancel(f.o)
	}
	f.c.finish(f.o)
	return nil
}

// StatFile describes path in the guest; a symlink is described, not followed.
func (c *Client) StatFile(ctx context.Context, path string) (FileInfo, error) {
	e, err := c.call(ctx, &Envelope{Type: TypeStat, File: &FileRequest{Path: path}}, TypeInfo)
	if err == nil && e.Info == nil {
		err = fmt.Errorf("info without a payload: %w", ErrUnexpected)
	}
	if err != nil {
		return FileInfo{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return *e.Info, nil
}

// ListFiles lists the directory path in the guest: its entries, and theirs down to
// depth levels (depth 1 or less: the entries only). Entries are not followed through
// symlinks. Not a directory is ErrNotDir.
func (c *Client) ListFiles(ctx context.Context, path string, depth int) ([]FileInfo, error) {
	list, err := c.list(ctx, path, depth)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	return list, nil
}

func (c *Client) list(ctx context.Context, path string, depth int) ([]FileInfo, error) {
	o, err := c.start(&Envelope{Type: TypeList, File: &FileRequest{Path: path, Depth: depth}})
	if err != nil {
		return nil, err
	}
	defer c.finish(o)
	list := []FileInfo{}
	for {
		e, err := c.next(ctx, o)
		if err != nil {
			if ctx.Err() != nil {
				c.cancel(o)
			}
			return nil, err
		}
		switch e.Type {
		case TypeEntries:
			list = append(list, e.Entries...)
		case TypeDone:
			return list, nil
		default:
			return nil, fmt.Errorf("got %q: %w", e.Type, ErrUnexpected)
		}
	}
}

// MakeDir creates the directory path in the guest with its missing parents; one that
// exists is fine. Something else in the way is ErrNotDir.
func (c *Client) MakeDir(ctx context.Context, path string) error {
	if _, err := c.call(ctx, &Envelope{Type: TypeMkdir, File: &FileRequest{Path: path}}, TypeDone); err != nil {
		return fmt.Errorf("mkdir %s: %w", path, err)
	}
	return nil
}

// RemoveFile removes path in the guest: a file, a symlink, an empty directory, or with
// recursive any directory. A non-empty directory without recursive is ErrIsDir.
func (c *Client) RemoveFile(ctx context.Context, path string, recursive bool) error {
	if _, err := c.call(ctx, &Envelope{Type: TypeRemove, File: &FileRequest{Path: path, Recursive: recursive}}, TypeDone); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
