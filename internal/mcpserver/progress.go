package mcpserver

import (
	"context"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/client"
)

// Progress: while a run goes, each line it writes is sent as a progress notification
// (message: the line; stderr lines start with "stderr: "), when the call carries a
// progress token. The result still has the whole output; notifications are for a host
// to show life. A run that prints without end sends at most maxNotes of them.

const (
	maxNotes    = 2000
	maxLineRune = 4096 // a longer line without a line end goes out in pieces
)

type progress struct {
	emit func(n int, msg string) // sends one notification
	n    int
	done bool
	buf  [2]strings.Builder // stdout, stderr
}

// newProgress returns the call's progress reporter, or nil when the call has no
// progress token (every method is then a no-op).
func newProgress(ctx context.Context, req *mcp.CallToolRequest) *progress {
	if req == nil || req.Session == nil || req.Params == nil {
		return nil
	}
	token := req.Params.GetProgressToken()
	if token == nil {
		return nil
	}
	ss := req.Session
	// Errors (a client that went away) are ignored: the run's result decides the call.
	return &progress{emit: func(n int, msg string) {
		_ = ss.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: token, Progress: float64(n), Message: msg})
	}}
}

// output is the client callbacks feeding p.
func (p *progress) output() client.Output {
	if p == nil {
		return client.Output{}
	}
	return client.Output{Stdout: func(s string) { p.write(0, s) }, Stderr: func(s string) { p.write(1, s) }}
}

func (p *progress) write(stream int, s string) {
	b := &p.buf[stream]
	b.WriteString(s)
	rest := b.String()
	for {
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		p.line(stream, rest[:i])
		rest = rest[i+1:]
	}
	for len(rest) > maxLineRune {
		rest = p.piece(stream, rest)
	}
	b.Reset()
	b.WriteString(rest)
}

// flush sends what is left of unfinished lines.
func (p *progress) flush() {
	if p == nil {
		return
	}
	for i := range p.buf {
		if p.buf[i].Len() > 0 {
			p.line(i, p.buf[i].String())
			p.buf[i].Reset()
		}
	}
}

// line sends one line, in pieces of at most maxLineRune bytes.
func (p *progress) line(stream int, s string) {
	s = strings.TrimSuffix(s, "\r")
	for len(s) > maxLineRune {
		s = p.piece(stream, s)
	}
	p.send1(stream, s)
}

// piece sends s's first maxLineRune bytes (not cutting a character) and returns the rest.
func (p *progress) piece(stream int, s string) string {
	head := cutUTF8(s, maxLineRune)
	if head == "" {
		head = s[:maxLineRune]
	}
	p.send1(stream, head)
	return s[len(head):]
}

func (p *progress) send1(stream int, s string) {
	if stream == 1 {
		s = "stderr: " + s
	}
	p.send(s)
}

// send sends one notification, up to maxNotes and a last one saying there is more.
func (p *progress) send(msg string) {
	if p == nil || p.done {
		return
	}
	p.n++
	if p.n > maxNotes {
		p.done = true
		msg = "(more output: the result has all of it)"
	}
	p.emit(p.n, msg)
}
