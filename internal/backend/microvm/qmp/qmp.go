// Package qmp is a client of the QEMU Machine Protocol, the JSON control channel of a
// QEMU process (its -qmp socket).
//
// # Protocol
//
// On connect QEMU sends a greeting ({"QMP": {...}}) and accepts only
// qmp_capabilities until that command leaves negotiation mode; [Dial] and [NewClient]
// do both before returning. After that the client sends commands
// ({"execute": name, "arguments": {...}, "id": "vmexec-N"}) and QEMU answers each with
// {"return": ...} or {"error": {"class", "desc"}} carrying the same id, while
// asynchronous events ({"event": name, "data": {...}, "timestamp": {...}}) may arrive at
// any moment, between or before replies.
//
// # Design
//
// One goroutine reads the socket. Replies are matched to their command by id, so
// commands may be issued concurrently and a command whose context ended can be
// abandoned (its late reply is dropped). Events go to the channel returned by
// [Client.Events], kept apart from replies; it is buffered, and events arriving while
// it is full are dropped rather than blocking replies. When the connection ends (QEMU
// exited, or Close), every pending and later command fails with an error wrapping
// [ErrClosed], and the events channel is closed.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrClosed means the QMP connection is closed (QEMU exited, or Close was called).
var ErrClosed = errors.New("qmp connection closed")

// Error is an error reply from QEMU.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
	// Time is when QEMU emitted the event.
	Time time.Time `json:"-"`
}

// Greeting is QEMU's greeting: its version and capabilities.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// EventBuffer is the capacity of the events channel.
const EventBuffer = 64

// Client is one QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn     net.Conn
	Greeting Greeting

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	err     error // set when the reader stops

	events    chan Event
	done      chan struct{}
	closeOnce sync.Once
}

// message is any object QEMU sends.
type message struct {
	QMP       *Greeting       `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to the QMP unix socket at path and negotiates capabilities. ctx bounds
// the connection and the negotiation, not the Client's life.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	return NewClient(ctx, conn)
}

// NewClient reads QEMU's greeting from conn and negotiates capabilities. On error it
// closes conn.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{conn: conn, pending: map[string]chan message{}, events: make(chan Event, EventBuffer), done: make(chan struct{})}
	dec := json.NewDecoder(conn)
	greeted := make(chan error, 1)
	go func() {
		var m message
		if err := dec.Decode(&m); err != nil {
			greeted <- fmt.Errorf("qmp greeting: %w", err)
			return
		}
		if m.QMP == nil {
			greeted <- errors.New("qmp greeting: not a QMP greeting")
			return
		}
		c.Greeting = *m.QMP
		greeted <- nil
	}()
	select {
	case err := <-greeted:
		if err != nil {
			conn.Close()
			return nil, err
		}
	case <-ctx.Done():
		conn.Close() // unblocks the greeting reader
		<-greeted
		return nil, fmt.Errorf("qmp greeting: %w", ctx.Err())
	}
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) readLoop(dec *json.Decoder) {
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case c.events <- ev:
			default: // the consumer is not keeping up: drop, never block replies
			}
		case m.ID != nil:
			var id string
			if json.Unmarshal(m.ID, &id) != nil {
				continue // not one of ours
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	} else {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.shutdown(err)
}

// shutdown fails every pending command and closes the events channel. Only the
// reader calls it, once.
func (c *Client) shutdown(err error) {
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		delete(c.pending, id)
		close(ch)
	}
	c.mu.Unlock()
	c.conn.Close()
	close(c.events)
	close(c.done)
}

// Execute runs one command with args (any JSON-encodable value, or nil) and decodes
// its return value into result (a pointer, or nil to ignore it). An error reply is an
// *Error. If ctx ends first the command is abandoned (QEMU may still carry it out).
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{Execute: command, Arguments: args}
	ch := make(chan message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	req.ID = "vmexec-" + strconv.FormatUint(c.nextID, 10)
	c.pending[req.ID] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}

	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: encode: %w", command, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	}
	_, err = c.conn.Write(append(b, '\n'))
	c.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		if m.Error != nil {
			m.Error.Command = command
			return m.Error
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decode return: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// Events returns the channel of asynchronous events. It is closed when the
// connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection. Pending commands fail with ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.conn.Close() })
	<-c.done
	return nil
}
