package codeblock

import (
	"errors"
	"fmt"

	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/parser"
	"github.com/yuin/goldmark/text"
)

// goldmark's block parser is quadratic in the nesting depth of containers
// (250,000 ">" took 15 s of CPU, 2,000 nested list levels in 4 MB took 8 s)
// and cannot be interrupted. Extract bounds it in three ways:
//
//   - a text longer than Options.MaxBytes is refused before parsing;
//   - the blockquote and list parsers are wrapped: a container that would
//     nest deeper than Options.MaxDepth is not opened (its line is left to
//     the paragraph parser, which is linear), and the document is refused;
//   - the line reader is wrapped: once the context is done or the depth cap
//     was hit, it reports the end of the input at the next line, so goldmark
//     closes its blocks and returns without reading the rest.
//
// With both caps the worst case is linear in the text with a factor of the
// depth cap; BenchmarkPathological measures it.

// Defaults of the caps; Options fields at zero take them.
const (
	// DefaultMaxBytes is the longest text Extract parses: 1 MiB.
	DefaultMaxBytes = 1 << 20
	// DefaultMaxDepth is the deepest nesting of blockquotes and lists
	// Extract accepts: 32 levels.
	DefaultMaxDepth = 32
)

var (
	// ErrTooLarge is wrapped by the error of Extract for a text longer than
	// Options.MaxBytes.
	ErrTooLarge = errors.New("text too large")
	// ErrTooDeep is wrapped by the error of Extract for a text whose
	// blockquotes and lists nest deeper than Options.MaxDepth.
	ErrTooDeep = errors.New("text nested too deeply")
)

func (o Options) maxBytes() int {
	if o.MaxBytes > 0 {
		return o.MaxBytes
	}
	return DefaultMaxBytes
}

func (o Options) maxDepth() int {
	if o.MaxDepth > 0 {
		return o.MaxDepth
	}
	return DefaultMaxDepth
}

func tooLarge(n, limit int) error {
	return fmt.Errorf("the text is %d bytes, over the limit of %d bytes: %w", n, limit, ErrTooLarge)
}

func tooDeep(limit int) error {
	return fmt.Errorf("blockquotes and lists nest deeper than %d levels: %w", limit, ErrTooDeep)
}

// depthLimiter wraps a container parser (blockquote, list): a container it
// would open under parent past the recording's depth cap is dropped and the
// cap reported. The wrapped parser is asked first, since it declines most
// lines (a list parser is tried again right under the list it opened); when
// it has consumed a marker before being overruled, the line is left in an
// odd state, which does not matter: the parse stops at the next line and
// the text is refused.
type depthLimiter struct{ parser.BlockParser }

func (d depthLimiter) Open(parent ast.Node, reader text.Reader, pc parser.Context) (ast.Node, parser.State) {
	node, state := d.BlockParser.Open(parent, reader, pc)
	if rec := recordingOf(pc); node != nil && rec != nil && rec.maxDepth > 0 && depth(parent) >= rec.maxDepth {
		rec.tooDeep = true
		return nil, parser.NoChildren
	}
	return node, state
}

// depth counts the blockquotes and lists n is in, n included. The cap keeps
// the walk short: no container deeper than the cap is ever opened.
func depth(n ast.Node) int {
	d := 0
	for ; n != nil; n = n.Parent() {
		switch n.(type) {
		case *ast.Blockquote, *ast.List:
			d++
		}
	}
	return d
}

// stoppingReader is the line reader given to goldmark: when stop reports
// true at a line boundary, it moves to the end of the input, which goldmark
// takes as the end of the document.
type stoppingReader struct {
	text.Reader
	stop func() bool // cheap: called once a line
}

func (r *stoppingReader) AdvanceLine() {
	r.Reader.AdvanceLine()
	if r.stop() {
		r.toEnd()
	}
}

func (r *stoppingReader) toEnd() {
	n := len(r.Source())
	line, _ := r.Position()
	r.SetPosition(line, text.NewSegment(n, n))
}
