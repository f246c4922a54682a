package codeblock

import (
	"context"
	"sort"
	"strings"

	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/parser"
	"github.com/yuin/goldmark/text"
)

// FenceIndented is the Block.Fence value of an indented code block.
const FenceIndented = "indented"

// Block is one code block found in a Markdown document.
type Block struct {
	// Language is the canonical language (python, javascript, bash, rust,
	// go), the lower-cased first word of the info string when that is not
	// a known language, or "" when there is none and none was detected.
	Language string
	// RawLanguage is the first word of the info string as written.
	RawLanguage string
	// Info is the whole info string, trimmed (e.g. `python title="x"`).
	Info string
	// Code is the block's content with "\n" line endings and the container
	// prefix (list indentation, "> ") removed.
	Code string
	// Detected reports that Language was guessed from the code because the
	// fence had no info string.
	Detected bool
	// Known reports that Language is one of the five supported languages.
	Known bool
	// Index is the 0-based position of the block among those returned.
	Index int
	// StartLine is the 1-based line of the opening fence (for indented
	// blocks, of the first code line).
	StartLine int
	// EndLine is the 1-based line of the closing fence, or of the last line
	// of the block when it was never closed.
	EndLine int
	// Offset is the byte offset in the input of the opening fence's first
	// character (for indented blocks, of the first code line's first
	// non-blank character).
	Offset int
	// Fence is the opening fence as written ("```", "~~~~", ...) or
	// FenceIndented.
	Fence string
	// Closed is false when no closing fence was seen, as in a truncated
	// reply.
	Closed bool
}

// Options select what Extract returns. The zero value returns fenced blocks
// only and does not guess languages; DefaultOptions is what most callers
// want.
type Options struct {
	// IncludeIndented also returns indented (4-space) code blocks.
	IncludeIndented bool
	// DetectUnlabeled guesses the language of blocks without an info
	// string (including indented blocks) with Detect.
	DetectUnlabeled bool
	// MaxBytes refuses a longer text with ErrTooLarge; 0 means
	// DefaultMaxBytes (1 MiB).
	MaxBytes int
	// MaxDepth refuses a text whose blockquotes and lists nest deeper with
	// ErrTooDeep; 0 means DefaultMaxDepth (32).
	MaxDepth int
}

// DefaultOptions returns Options with DetectUnlabeled set and indented
// blocks excluded: prose indented by four spaces is common in model replies
// and rarely meant to be run.
func DefaultOptions() Options {
	return Options{DetectUnlabeled: true}
}

// Extract returns the code blocks of the Markdown document text in document
// order.
//
// It fails with an error wrapping ErrTooLarge or ErrTooDeep when text
// exceeds opt's caps, and with ctx.Err() when ctx ends first: parsing stops
// at the next line, the blocks found so far are dropped. The caps bound the
// work: parsing is linear in the text, with a factor of MaxDepth.
func Extract(ctx context.Context, text string, opt Options) ([]Block, error) {
	if n, limit := len(text), opt.maxBytes(); n > limit {
		return nil, tooLarge(n, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	src, shift := normalize(text)
	rec := &recording{meta: make(map[ast.Node]*blockMeta), maxDepth: opt.maxDepth()}
	pc := parser.NewContext()
	pc.Set(recordingKey, rec)
	done := ctx.Done()
	stop := func() bool {
		select {
		case <-done:
			return true
		default:
			return rec.tooDeep
		}
	}
	doc := mdParser().Parse(&stoppingReader{Reader: textReader(src), stop: stop}, parser.WithContext(pc))
	if rec.tooDeep {
		return nil, tooDeep(rec.maxDepth)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	lines := newLineIndex(src)
	var blocks []Block
	err := ast.Walk(doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if !entering {
			return ast.WalkContinue, nil
		}
		m := rec.meta[n]
		if m == nil {
			return ast.WalkContinue, nil
		}
		var b Block
		switch n := n.(type) {
		case *ast.FencedCodeBlock:
			b = fencedBlock(n, m, src, lines)
		case *ast.CodeBlock:
			if !opt.IncludeIndented {
				return ast.WalkSkipChildren, nil
			}
			b = indentedBlock(n, m, src, lines)
		default:
			return ast.WalkContinue, nil
		}
		if b.RawLanguage == "" && opt.DetectUnlabeled {
			if err := ctx.Err(); err != nil {
				return ast.WalkStop, err
			}
			if lang, ok := Detect(b.Code); ok {
				b.Language, b.Known, b.Detected = lang, true, true
			}
		}
		b.Offset = shift.original(b.Offset)
		b.Index = len(blocks)
		blocks = append(blocks, b)
		return ast.WalkSkipChildren, nil
	})
	if err != nil {
		return nil, err
	}
	return blocks, nil
}

func fencedBlock(n *ast.FencedCodeBlock, m *blockMeta, src []byte, lines lineIndex) Block {
	b := Block{
		Code:      linesValue(n.Lines(), src),
		Offset:    m.offset,
		Fence:     m.fence,
		Closed:    m.closed,
		StartLine: lines.lineOf(m.offset),
	}
	if n.Info != nil {
		b.Info = strings.TrimSpace(string(n.Info.Segment.Value(src)))
	}
	if f := strings.Fields(b.Info); len(f) > 0 {
		b.RawLanguage = f[0]
		b.Language, b.Known = Canonical(f[0])
	}
	switch {
	case m.closed:
		b.EndLine = lines.lineOf(m.closeAt)
	case n.Lines().Len() > 0:
		b.EndLine = lines.lineOf(n.Lines().At(n.Lines().Len() - 1).Start)
	default:
		b.EndLine = b.StartLine
	}
	b.EndLine = max(b.EndLine, b.StartLine)
	return b
}

func indentedBlock(n *ast.CodeBlock, m *blockMeta, src []byte, lines lineIndex) Block {
	b := Block{
		Code:      linesValue(n.Lines(), src),
		Offset:    m.offset,
		Fence:     FenceIndented,
		Closed:    true,
		StartLine: lines.lineOf(m.offset),
	}
	b.EndLine = b.StartLine
	if l := n.Lines(); l.Len() > 0 {
		b.EndLine = max(b.StartLine, lines.lineOf(l.At(l.Len()-1).Start))
	}
	return b
}

func linesValue(l *text.Segments, src []byte) string {
	var sb strings.Builder
	for i := 0; i < l.Len(); i++ {
		seg := l.At(i)
		sb.Write(seg.Value(src))
	}
	return sb.String()
}

// normalize converts CR LF and lone CR line endings to LF, which is what
// goldmark's line reader expects, and records where bytes were removed so
// offsets can be mapped back to the caller's text.
func normalize(s string) ([]byte, offsetShift) {
	if !strings.Contains(s, "\r") {
		return []byte(s), nil
	}
	out := make([]byte, 0, len(s))
	var removed offsetShift
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\r' {
			out = append(out, c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '\n' {
			// Dropped: the following '\n' lands at len(out).
			removed = append(removed, len(out))
			continue
		}
		out = append(out, '\n')
	}
	return out, removed
}

// offsetShift lists, in increasing order, the normalized offsets before
// which one '\r' byte of the original text was removed.
type offsetShift []int

// original maps an offset in the normalized text to the caller's text.
func (s offsetShift) original(off int) int {
	// Count removals strictly before off: a removal recorded at off
	// precedes the '\n' at off, which is never a fence position.
	return off + sort.SearchInts(s, off)
}

// lineIndex holds the offsets at which lines start.
type lineIndex []int

func newLineIndex(src []byte) lineIndex {
	idx := lineIndex{0}
	for i, c := range src {
		if c == '\n' && i+1 < len(src) {
			idx = append(idx, i+1)
		}
	}
	return idx
}

// lineOf returns the 1-based line holding byte off; offsets at or past the
// end belong to the last line.
func (l lineIndex) lineOf(off int) int {
	return sort.Search(len(l), func(i int) bool { return l[i] > off })
}
