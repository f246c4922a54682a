package guest

import (
	"os"
	"sync"
)

// capture collects one output stream of a run: at most limit bytes are kept, and the
// first byte past the limit calls over (once). After detach it keeps draining the pipe
// and discards what it reads, until every writer has closed it.
//
// Draining rather than closing the read end matters for background processes: a server
// or counter the run left behind keeps the pipe as its stdout or stderr, and closing the
// read end would kill it with SIGPIPE (or an EPIPE error) at its next write, long after
// the run it belonged to has returned.
type capture struct {
	limit int64
	over  func()

	mu        sync.Mutex
	buf       []byte
	total     int64
	detached  bool
	truncated bool
	done      chan struct{} // closed at EOF
}

func newCapture(limit int64, over func()) *capture {
	return &capture{limit: limit, over: over, done: make(chan struct{})}
}

// pump reads f until EOF or error, then closes it.
func (c *capture) pump(f *os.File) {
	defer close(c.done)
	defer f.Close()
	b := make([]byte, 32<<10)
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.detached {
		return
	}
	c.total += int64(len(p))
	if room := c.limit - int64(len(c.buf)); room > 0 {
		c.buf = append(c.buf, p[:min(int64(len(p)), room)]...)
	}
	if c.total > c.limit && !c.truncated {
		c.truncated = true
		if c.over != nil {
			go c.over()
		}
	}
}

// detach stops collecting and returns what was kept.
func (c *capture) detach() (data []byte, truncated bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.detached = true
	return c.buf, c.truncated
}
