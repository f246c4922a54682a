package guest

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// capture collects one output stream of a run. It counts what passes through it: the
// first limit bytes are kept, the first byte past the limit calls over (once) and
// nothing more is kept. What is kept goes to emit as it is read (a streamed run: emit
// sends an output frame and blocks until it is written, so a slow host slows the
// program down rather than filling the agent's memory), or, with emit nil, into buf (a
// compile step, whose output is sent only if it fails). After detach it keeps draining
// the pipe and discards what it reads, until every writer has closed it.
//
// Draining rather than closing the read end matters for background processes: a server
// or counter the run left behind keeps the pipe as its stdout or stderr, and closing the
// read end would kill it with SIGPIPE (or an EPIPE error) at its next write, long after
// the run it belonged to has returned.
type capture struct {
	limit int64
	over  func()
	emit  func([]byte) // nil: keep in buf

	mu        sync.Mutex // held while emitting: detach waits for a send in progress
	buf       []byte
	tail      []byte // the last markerTail bytes kept, for the memory markers
	total     int64
	detached  bool
	truncated bool
	sendStart atomic.Int64  // when the emit in progress began (UnixNano), 0 if none
	stopping  atomic.Bool   // detach has begun: what is read from now on is dropped
	done      chan struct{} // closed at EOF
}

func newCapture(limit int64, over func(), emit func([]byte)) *capture {
	return &capture{limit: limit, over: over, emit: emit, done: make(chan struct{})}
}

// pump reads f until EOF or error, then closes it.
func (c *capture) pump(f *os.File) {
	defer close(c.done)
	defer f.Close()
	b := make([]byte, agentproto.ChunkSize)
	for {
		n, err := f.Read(b)
		if n > 0 {
			c.add(b[:n])
		}
		if err != nil {
			return
		}
	}
}

func (c *capture) add(p []byte) {
	if c.stopping.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.detached {
		return
	}
	room := c.limit - c.total
	c.total += int64(len(p))
	if keep := p[:max(0, min(int64(len(p)), room))]; len(keep) > 0 {
		c.keepTail(keep)
		if c.emit != nil {
			c.sendStart.Store(time.Now().UnixNano())
			c.emit(keep)
			c.sendStart.Store(0)
		} else {
			c.buf = append(c.buf, keep...)
		}
	}
	if c.total > c.limit && !c.truncated {
		c.truncated = true
		if c.over != nil {
			go c.over()
		}
	}
}

func (c *capture) keepTail(p []byte) {
	if len(p) >= markerTail {
		c.tail = append(c.tail[:0], p[len(p)-markerTail:]...)
		return
	}
	if drop := len(c.tail) + len(p) - markerTail; drop > 0 {
		c.tail = append(c.tail[:0], c.tail[drop:]...)
	}
	c.tail = append(c.tail, p...)
}

// tailNow is a copy of the end of the stream so far (see keepTail).
func (c *capture) tailNow() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.tail...)
}

// stalled reports whether an emit has been blocked for a while: the host is slow to
// take the output.
func (c *capture) stalled() bool {
	t := c.sendStart.Load()
	return t != 0 && time.Since(time.Unix(0, t)) >= stallTime
}

// detach stops collecting (after a send in progress) and returns what was kept in buf
// (nothing for a streamed capture), the tail and whether the stream was cut.
func (c *capture) detach() (data, tail []byte, truncated bool) {
	c.stopping.Store(true) // the pump must not slip in another chunk
	c.mu.Lock()
	defer c.mu.Unlock()
	c.detached = true
	return c.buf, c.tail, c.truncated
}
