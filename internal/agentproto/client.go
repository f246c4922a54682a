package agentproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Client is the host's side of one connection to a guest agent. It serialises requests:
// one request is in flight at a time, which is all the guest serves.
type Client struct {
	conn   *Conn
	closer io.Closer
	mu     sync.Mutex // one request at a time
	nextID uint64
	Guest  Hello // the guest's handshake reply
}

// Dial performs the handshake over r/w and returns a ready Client. closer (may be nil)
// is closed when a request's context ends before the guest answers, which unblocks the
// pending read; the Client is unusable afterwards.
func Dial(ctx context.Context, r io.Reader, w io.Writer, closer io.Closer) (*Client, error) {
	c := &Client{conn: NewConn(r, w), closer: closer}
	reply, err := c.roundTrip(ctx, &Envelope{Type: TypeHello, Hello: &Hello{Version: Version}})
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if reply.Type != TypeHello || reply.Hello == nil {
		return nil, fmt.Errorf("handshake: got %q: %w", reply.Type, ErrUnexpected)
	}
	if reply.Hello.Version != Version {
		return nil, fmt.Errorf("handshake: guest speaks version %d, host %d: %w", reply.Hello.Version, Version, ErrVersion)
	}
	c.Guest = *reply.Hello
	return c, nil
}

// Exec runs one program in the guest and waits for its result. The guest enforces
// req.Limits; ctx is the host's own bound (it should exceed the run's timeout).
// out (may be nil) receives the output.
func (c *Client) Exec(ctx context.Context, req *ExecRequest, out OutputFunc) (*ExecResult, error) {
	reply, err := c.roundTrip(ctx, &Envelope{Type: TypeExec, Exec: req})
	if err != nil {
		return nil, err
	}
	if reply.Type != TypeResult || reply.Result == nil {
		return nil, fmt.Errorf("exec: got %q: %w", reply.Type, ErrUnexpected)
	}
	if out != nil {
		if len(reply.Result.Stdout) > 0 {
			out(StreamStdout, reply.Result.Stdout)
		}
		if len(reply.Result.Stderr) > 0 {
			out(StreamStderr, reply.Result.Stderr)
		}
	}
	return reply.Result, nil
}

// WriteFile writes r's content to path in the guest.
func (c *Client) WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) error {
	return fmt.Errorf("write %s: %w", path, errors.ErrUnsupported)
}

// OpenFile opens path in the guest for reading.
func (c *Client) OpenFile(ctx context.Context, path string) (FileInfo, io.ReadCloser, error) {
	return FileInfo{}, nil, fmt.Errorf("read %s: %w", path, errors.ErrUnsupported)
}

// StatFile describes path in the guest.
func (c *Client) StatFile(ctx context.Context, path string) (FileInfo, error) {
	return FileInfo{}, fmt.Errorf("stat %s: %w", path, errors.ErrUnsupported)
}

// ListFiles lists the directory path in the guest, depth levels deep.
func (c *Client) ListFiles(ctx context.Context, path string, depth int) ([]FileInfo, error) {
	return nil, fmt.Errorf("list %s: %w", path, errors.ErrUnsupported)
}

// MakeDir creates the directory path in the guest, with its parents.
func (c *Client) MakeDir(ctx context.Context, path string) error {
	return fmt.Errorf("mkdir %s: %w", path, errors.ErrUnsupported)
}

// RemoveFile removes path in the guest.
func (c *Client) RemoveFile(ctx context.Context, path string, recursive bool) error {
	return fmt.Errorf("remove %s: %w", path, errors.ErrUnsupported)
}

// Ping checks that the guest answers.
func (c *Client) Ping(ctx context.Context) error {
	reply, err := c.roundTrip(ctx, &Envelope{Type: TypePing})
	if err != nil {
		return err
	}
	if reply.Type != TypePong {
		return fmt.Errorf("ping: got %q: %w", reply.Type, ErrUnexpected)
	}
	return nil
}

type recvResult struct {
	env *Envelope
	err error
}

func (c *Client) roundTrip(ctx context.Context, e *Envelope) (*Envelope, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	e.ID = c.nextID
	if err := c.conn.Send(e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClosed, err)
	}
	done := make(chan recvResult, 1)
	go func() {
		for {
			reply, err := c.conn.Recv()
			if err == nil && reply.ID != e.ID {
				continue // a stale reply to an abandoned request
			}
			done <- recvResult{reply, err}
			return
		}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("%s: %w: %w", e.Type, ErrClosed, r.err)
		}
		if r.env.Type == TypeError {
			return nil, fmt.Errorf("%s: guest error: %s", e.Type, r.env.Error)
		}
		return r.env, nil
	case <-ctx.Done():
		if c.closer != nil {
			c.closer.Close()
		}
		return nil, fmt.Errorf("%s: %w", e.Type, ctx.Err())
	}
}
