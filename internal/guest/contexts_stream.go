package guest

// The output side of interpreter contexts (contexts.go): each of an interpreter's
// pipes is pumped into a ctxStream, which hands the running cell its output up to
// the cell's end marker and counts the sync markers the driver writes before results.

import (
	"bytes"
	"os"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// ctxStream is one of an interpreter's output pipes: what it reads goes to the running
// cell's sink, up to the cell's end marker. The cell's sync markers in between are
// counted and dropped: the driver writes one before each result it sends (see
// waitSynced). Another cell's markers, which came too late for it, are dropped too.
type ctxStream struct {
	mu     sync.Mutex
	sink   func([]byte) // nil between cells: output is dropped
	marker []byte
	sync   []byte
	synced int           // sync markers seen in this cell
	moved  chan struct{} // closed and replaced when synced grows or the stream ends
	held   []byte        // a tail that may be the start of a marker
	ended  chan struct{} // closed when the marker (or the end of the pipe) is seen
	eof    bool
}

// begin makes the stream pass output to sink until marker, counting syncs; it returns
// the channel closed when the marker is seen.
func (s *ctxStream) begin(marker, syncMarker []byte, sink func([]byte)) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink, s.marker, s.sync, s.held, s.ended = sink, marker, syncMarker, nil, make(chan struct{})
	s.synced, s.moved = 0, make(chan struct{})
	if s.eof {
		close(s.ended)
		s.sink = nil
	}
	return s.ended
}

// finish stops passing output (the cell is over).
func (s *ctxStream) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sink != nil && len(s.held) > 0 {
		s.sink(s.held)
	}
	s.sink, s.marker, s.sync, s.held = nil, nil, nil, nil
}

// waitSynced waits until the stream has passed n sync markers of the running cell (all
// it wrote before its nth result), or ended, for at most wait; it reports whether it
// got there.
func (s *ctxStream) waitSynced(n int, wait time.Duration) bool {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.mu.Lock()
		if s.synced >= n || s.sink == nil {
			s.mu.Unlock()
			return true
		}
		moved := s.moved
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-moved:
		case <-timer.C:
			return false
		}
	}
}

func (s *ctxStream) feed(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sink == nil {
		return
	}
	data := append(s.held, p...)
	s.held = nil
	for {
		i := bytes.Index(data, s.marker)
		j, k := -1, len(s.sync)
		if k > 0 {
			j = bytes.Index(data, s.sync)
		}
		// Another cell's marker (late: its waits gave up on it) is dropped.
		if l, n := findMarker(data); l >= 0 && (i < 0 || l < i) && (j < 0 || l < j) {
			if l > 0 {
				s.sink(data[:l])
			}
			data = data[l+n:]
			continue
		}
		if j >= 0 && (i < 0 || j < i) {
			if j > 0 {
				s.sink(data[:j])
			}
			data = data[j+k:]
			s.synced++
			close(s.moved)
			s.moved = make(chan struct{})
			continue
		}
		if i >= 0 {
			if i > 0 {
				s.sink(data[:i])
			}
			s.stop()
			return
		}
		break
	}
	k := max(partialSuffix(data, s.marker), partialMarker(data))
	if len(s.sync) > 0 {
		k = max(k, partialSuffix(data, s.sync))
	}
	if n := len(data) - k; n > 0 {
		s.sink(data[:n])
	}
	s.held = append([]byte(nil), data[len(data)-k:]...)
}

// stop ends the cell's part of the stream: the marker or the end of the pipe.
func (s *ctxStream) stop() {
	s.sink, s.marker, s.sync, s.held = nil, nil, nil, nil
	close(s.ended)
	close(s.moved)
}

func (s *ctxStream) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eof = true
	if s.sink != nil {
		if len(s.held) > 0 {
			s.sink(s.held)
		}
		s.stop()
	}
}

// partialSuffix is the length of the longest tail of data that is a proper prefix of
// marker.
func partialSuffix(data, marker []byte) int {
	for k := min(len(marker)-1, len(data)); k > 0; k-- {
		if bytes.HasPrefix(marker, data[len(data)-k:]) {
			return k
		}
	}
	return 0
}

// A cell's markers are one of markerKinds, markerHex lowercase hex digits (the cell's
// own) and '\x1e'.
var markerKinds = [][]byte{[]byte("\x1evmexec-cell-end-"), []byte("\x1evmexec-cell-sync-")}

const (
	markerHex = 24
	markerMax = len("\x1evmexec-cell-sync-") + markerHex + 1 // the longest marker
)

// markerAt is the length of the marker data starts with (0 for none), and whether data
// is instead a proper prefix of one.
func markerAt(data []byte) (n int, partial bool) {
	for _, kind := range markerKinds {
		if len(data) < len(kind) {
			if bytes.HasPrefix(kind, data) {
				return 0, true
			}
			continue
		}
		if !bytes.HasPrefix(data, kind) {
			continue
		}
		for i := len(kind); ; i++ {
			switch {
			case i == len(data):
				return 0, true
			case i == len(kind)+markerHex:
				if data[i] == '\x1e' {
					return i + 1, false
				}
				return 0, false
			case !('0' <= data[i] && data[i] <= '9' || 'a' <= data[i] && data[i] <= 'f'):
				return 0, false
			}
		}
	}
	return 0, false
}

// findMarker finds the first marker of any cell in data: its index (-1 for none) and
// length.
func findMarker(data []byte) (at, n int) {
	for off := 0; ; {
		i := bytes.IndexByte(data[off:], '\x1e')
		if i < 0 {
			return -1, 0
		}
		if n, _ := markerAt(data[off+i:]); n > 0 {
			return off + i, n
		}
		off += i + 1
	}
}

// partialMarker is the length of the longest tail of data that is a proper prefix of a
// cell's marker.
func partialMarker(data []byte) int {
	for i := max(0, len(data)-markerMax+1); i < len(data); i++ {
		if data[i] == '\x1e' {
			if _, partial := markerAt(data[i:]); partial {
				return len(data) - i
			}
		}
	}
	return 0
}

func (it *interp) pump(f *os.File, s *ctxStream) {
	defer f.Close()
	buf := make([]byte, agentproto.ChunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			s.feed(buf[:n])
		}
		if err != nil {
			s.end()
			return
		}
	}
}
