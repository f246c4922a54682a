package codeblock

import (
	"sync"

	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/parser"
	"github.com/yuin/goldmark/text"
	"github.com/yuin/goldmark/util"
)

// goldmark's AST does not keep the position of a fence or whether it was
// closed. Rather than re-scanning the source for fences (which goes wrong
// for empty blocks, containers and fences that look like fences but are
// content), the stock block parsers are wrapped: the wrapper sees the exact
// line goldmark opens a block on and the line it closes it on.

// blockMeta is what the wrappers record for one code block node.
type blockMeta struct {
	offset  int    // normalized offset of the fence or first code character
	fence   string // fence run as written
	closed  bool   // closing fence seen
	closeAt int    // normalized offset within the closing fence line
}

type recording struct {
	meta     map[ast.Node]*blockMeta
	maxDepth int  // containers deeper are not opened (see depthLimiter)
	tooDeep  bool // a container was refused
}

var recordingKey = parser.NewContextKey()

func recordingOf(pc parser.Context) *recording {
	r, _ := pc.Get(recordingKey).(*recording)
	return r
}

// fenceRecorder wraps goldmark's fenced code block parser.
type fenceRecorder struct{ parser.BlockParser }

func (f fenceRecorder) Open(parent ast.Node, reader text.Reader, pc parser.Context) (ast.Node, parser.State) {
	line, seg := reader.PeekLine()
	node, state := f.BlockParser.Open(parent, reader, pc)
	if rec := recordingOf(pc); node != nil && rec != nil {
		off, fence := fenceAt(reader.Source(), line, seg)
		rec.meta[node] = &blockMeta{offset: off, fence: fence}
	}
	return node, state
}

func (f fenceRecorder) Continue(node ast.Node, reader text.Reader, pc parser.Context) parser.State {
	_, seg := reader.PeekLine()
	state := f.BlockParser.Continue(node, reader, pc)
	if state&parser.Close != 0 {
		if rec := recordingOf(pc); rec != nil {
			if m := rec.meta[node]; m != nil {
				m.closed = true
				m.closeAt = clamp(seg.Start, 0, len(reader.Source()))
			}
		}
	}
	return state
}

// indentRecorder wraps goldmark's indented code block parser.
type indentRecorder struct{ parser.BlockParser }

func (f indentRecorder) Open(parent ast.Node, reader text.Reader, pc parser.Context) (ast.Node, parser.State) {
	line, seg := reader.PeekLine()
	node, state := f.BlockParser.Open(parent, reader, pc)
	if rec := recordingOf(pc); node != nil && rec != nil {
		j := 0
		for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
			j++
		}
		off := clamp(seg.Start-seg.Padding+j, seg.Start, len(reader.Source()))
		rec.meta[node] = &blockMeta{offset: off, fence: FenceIndented, closed: true}
	}
	return node, state
}

// fenceAt locates the fence run on an opening line. line is what goldmark
// peeked (with any tab padding expanded to leading spaces) and seg its
// segment in src.
func fenceAt(src, line []byte, seg text.Segment) (int, string) {
	j := 0
	for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
		j++
	}
	off := clamp(seg.Start-seg.Padding+j, 0, len(src))
	// Defensive: should goldmark's view and the source ever disagree, look
	// for the fence character on the same line of the source.
	for off < len(src) && src[off] != '`' && src[off] != '~' && src[off] != '\n' {
		off++
	}
	if off >= len(src) || (src[off] != '`' && src[off] != '~') {
		off = clamp(seg.Start, 0, len(src))
		return off, "```"
	}
	end := off
	for end < len(src) && src[end] == src[off] {
		end++
	}
	return off, string(src[off:end])
}

func clamp(v, lo, hi int) int {
	return max(lo, min(v, hi))
}

var (
	parserOnce sync.Once
	blockOnly  parser.Parser
)

// mdParser returns a CommonMark block parser with the code block parsers
// wrapped. Inline parsing is switched off: code blocks are block
// structure, and skipping inlines saves time on long replies.
func mdParser() parser.Parser {
	parserOnce.Do(func() {
		fenced := parser.NewFencedCodeBlockParser()
		indented := parser.NewCodeBlockParser()
		quote := parser.NewBlockquoteParser()
		list := parser.NewListParser()
		var bps []util.PrioritizedValue
		for _, pv := range parser.DefaultBlockParsers() {
			switch pv.Value {
			case fenced:
				pv.Value = fenceRecorder{fenced}
			case indented:
				pv.Value = indentRecorder{indented}
			case quote, list:
				pv.Value = depthLimiter{pv.Value.(parser.BlockParser)}
			}
			bps = append(bps, pv)
		}
		blockOnly = parser.NewParser(
			parser.WithBlockParsers(bps...),
			parser.WithInlineParsers(),
			parser.WithParagraphTransformers(),
		)
	})
	return blockOnly
}

func textReader(src []byte) text.Reader {
	return text.NewReader(src)
}
