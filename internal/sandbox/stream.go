package sandbox

import (
	"bytes"
	"regexp"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/redact"
)

// Streaming output: what a caller of ExecStream sees while a run runs.
//
// The backend hands the service raw chunks as the guest reads them from the program's
// pipes: a chunk may end in the middle of a line, of a secret, or of a UTF-8
// character. The streamer between the backend and the caller re-cuts them, per stream,
// so that every chunk it passes on
//
//   - ends at a UTF-8 character boundary (a character is never split across chunks),
//   - is redacted with the same rules as the final result, and
//   - ends at a line end, unless the program has paused mid-line for flushDelay (a
//     prompt, a progress bar) or the line has grown past maxLine.
//
// Redaction is per chunk, so a chunk can let through what redacting the whole output
// catches: a secret split across a mid-line pause or a line longer than maxLine, and a
// multi-line secret other than a PEM/PGP private key block. Private key blocks are held
// back from their BEGIN line until their END line (at most maxHold bytes, then what is
// held is redacted as a key without an end). The result, and the history, are redacted
// over the whole output and are always at least as clean as the stream.
//
// Lifecycle: newStreamer, write from the backend's output callback (any goroutine),
// close once the backend's Exec has returned. close flushes what is pending, and once it
// returns the caller's function is never called again. A nil *streamer is valid and
// streams nothing.

const (
	flushDelay = 50 * time.Millisecond // a mid-line pause this long flushes the partial line
	maxLine    = 8 << 10               // a partial line this long is flushed
	maxHold    = 64 << 10              // a private key block held longer than this is flushed
	maxKept    = 1 << 20               // what passed is kept, per stream, up to this
)

// keyBegin starts a private key block, as the redact package's private_key rule sees it.
var (
	keyBegin = regexp.MustCompile(`-----BEGIN[A-Z0-9 ]*PRIVATE KEY`)
	keyEnd   = []byte("-----END")
)

// OutputFunc receives a run's output while it runs: stream is "stdout" or "stderr";
// the chunks of one stream arrive in order. It must not retain p.
type OutputFunc = agentproto.OutputFunc

type streamer struct {
	red *redact.Redactor
	out OutputFunc

	mu      sync.Mutex
	pending map[string][]byte // per stream, not yet passed on
	kept    map[string][]byte // per stream, what passed (up to maxKept)
	order   []string          // streams in the order they first wrote
	timer   *time.Timer
	closed  bool
}

// newStreamer returns a streamer passing redacted chunks to out, or nil when out is nil.
func newStreamer(red *redact.Redactor, out OutputFunc) *streamer {
	if out == nil {
		return nil
	}
	return &streamer{red: red, out: out, pending: map[string][]byte{}, kept: map[string][]byte{}}
}

// output is the callback to hand the backend (nil for a nil streamer).
func (st *streamer) output() OutputFunc {
	if st == nil {
		return nil
	}
	return st.write
}

func (st *streamer) write(stream string, p []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed || len(p) == 0 {
		return
	}
	if _, ok := st.pending[stream]; !ok {
		st.order = append(st.order, stream)
	}
	st.pending[stream] = append(st.pending[stream], p...)
	st.emit(stream, cutLines)
	if len(st.pending[stream]) > 0 && st.timer == nil {
		st.timer = time.AfterFunc(flushDelay, st.tick)
	}
}

// tick flushes partial lines after a pause.
func (st *streamer) tick() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.timer = nil
	if st.closed {
		return
	}
	for _, s := range st.order {
		st.emit(s, cutPartial)
	}
}

// close flushes everything pending; st.out is not called after it returns.
func (st *streamer) close() {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return
	}
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
	for _, s := range st.order {
		st.emit(s, cutAll)
	}
	st.closed = true
}

// passed returns what was passed on (the first maxKept bytes of each stream): the
// output of a run whose guest never answered, so has no result of its own.
func (st *streamer) passed() (stdout, stderr string) {
	if st == nil {
		return "", ""
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return string(st.kept[agentproto.StreamStdout]), string(st.kept[agentproto.StreamStderr])
}

type cutMode int

const (
	cutLines   cutMode = iota // complete lines, and a partial line past maxLine
	cutPartial                // all but an incomplete trailing character
	cutAll                    // everything
)

// emit passes on what may go of stream's pending bytes; st.mu held.
func (st *streamer) emit(stream string, mode cutMode) {
	data := st.pending[stream]
	n := cut(data, mode)
	if n == 0 {
		return
	}
	text, _ := st.red.Redact(string(data[:n]))
	st.out(stream, []byte(text))
	if k := st.kept[stream]; len(k) < maxKept {
		st.kept[stream] = append(k, text[:min(len(text), maxKept-len(k))]...)
	}
	st.pending[stream] = append(data[:0], data[n:]...)
}

// cut returns how many leading bytes of data may be passed on in mode.
func cut(data []byte, mode cutMode) int {
	var n int
	switch {
	case mode == cutAll:
		return len(data)
	case mode == cutPartial || len(data)-(bytes.LastIndexByte(data, '\n')+1) >= maxLine:
		n = runeSafe(data)
	default:
		n = bytes.LastIndexByte(data, '\n') + 1
	}
	// Hold an unfinished private key block back from the start of its BEGIN line.
	if loc := lastIndex(keyBegin, data[:n]); loc >= 0 && !bytes.Contains(data[loc:n], keyEnd) && len(data)-loc < maxHold {
		n = bytes.LastIndexByte(data[:loc], '\n') + 1
	}
	return n
}

// lastIndex is the start of re's last match in b, or -1.
func lastIndex(re *regexp.Regexp, b []byte) int {
	if !bytes.Contains(b, []byte("PRIVATE KEY")) {
		return -1
	}
	all := re.FindAllIndex(b, -1)
	if len(all) == 0 {
		return -1
	}
	return all[len(all)-1][0]
}

// runeSafe returns the length of the longest prefix of b that does not end inside a
// UTF-8 character: an incomplete trailing sequence is left for the next chunk. Bytes that
// can never complete a character (invalid UTF-8) are not held.
func runeSafe(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if utf8.FullRune(b[i:]) {
				return len(b)
			}
			return i
		}
	}
	return len(b)
}
