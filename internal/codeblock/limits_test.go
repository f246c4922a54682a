package codeblock

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/parser"
)

// nestedQuotes is a fence inside n blockquotes.
func nestedQuotes(n int) string {
	p := strings.Repeat("> ", n)
	return p + "```sh\n" + p + "echo deep\n" + p + "```\n"
}

// nestedLists is a fence inside n nested list items, each indented two
// more spaces than its parent, as the 2,000-level attack was.
func nestedLists(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(strings.Repeat("  ", i) + "- item\n")
	}
	in := strings.Repeat("  ", n)
	b.WriteString("\n" + in + "```sh\n" + in + "echo deep\n" + in + "```\n")
	return b.String()
}

// The caps of a reply: too large and too deep texts are refused with a
// message that names the cap, texts at the cap are parsed as before.
func TestExtractLimits(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		opt     Options
		wantErr error
		errText string
		blocks  int
	}{
		{"250,000 '>' on one line (15 s of CPU before the cap)", strings.Repeat(">", 250_000), DefaultOptions(),
			ErrTooDeep, "deeper than 32 levels", 0},
		{"100,000 '> ' (5 s before the cap)", strings.Repeat("> ", 100_000), DefaultOptions(), ErrTooDeep, "deeper than 32 levels", 0},
		{"blockquotes one past the cap", nestedQuotes(DefaultMaxDepth + 1), DefaultOptions(), ErrTooDeep, "deeper than 32 levels", 0},
		{"blockquotes at the cap run", nestedQuotes(DefaultMaxDepth), DefaultOptions(), nil, "", 1},
		{"lists one past the cap", nestedLists(DefaultMaxDepth + 1), DefaultOptions(), ErrTooDeep, "deeper than 32 levels", 0},
		{"lists at the cap run", nestedLists(DefaultMaxDepth), DefaultOptions(), nil, "", 1},
		{"quotes and lists count together", strings.Repeat("> - ", 17) + "x\n", DefaultOptions(), ErrTooDeep, "deeper than 32", 0},
		{"2,000 nested lists in 1 MiB (8 s for 4 MB before the cap)", nestedLists(2000)[:DefaultMaxBytes], DefaultOptions(),
			ErrTooDeep, "deeper than 32 levels", 0},
		{"2,000 nested lists in 4 MB are over the size cap", nestedLists(2000), DefaultOptions(),
			ErrTooLarge, "over the limit of 1048576 bytes", 0},
		{"a configured depth", nestedQuotes(5), Options{MaxDepth: 4}, ErrTooDeep, "deeper than 4 levels", 0},
		{"a configured size", "```sh\nls\n```\n", Options{MaxBytes: 10}, ErrTooLarge, "is 13 bytes, over the limit of 10 bytes", 0},
		{"a text of exactly the size cap is parsed", "```sh\nls\n```\n", Options{MaxBytes: 13}, nil, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Extract(t.Context(), tt.in, tt.opt)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Extract error = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("error %q does not say %q", err, tt.errText)
			}
			if len(got) != tt.blocks {
				t.Fatalf("got %d blocks, want %d", len(got), tt.blocks)
			}
			if tt.blocks > 0 && got[0].Code != "echo deep\n" && got[0].Code != "ls\n" {
				t.Errorf("code %q", got[0].Code)
			}
		})
	}
}

// A request whose client has gone does not parse.
func TestExtractCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Extract(ctx, "```sh\nls\n```\n", DefaultOptions()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract error = %v, want context.Canceled", err)
	}
}

// doneDuringParse is a context that is live when Extract starts and done
// from the first line on, as when a client leaves during a parse.
type doneDuringParse struct {
	context.Context
	done   chan struct{}
	checks int
}

func (c *doneDuringParse) Done() <-chan struct{} { return c.done }
func (c *doneDuringParse) Err() error {
	if c.checks++; c.checks == 1 {
		return nil
	}
	return context.Canceled
}

// A context that ends during the parse stops goldmark at the next line: the
// rest of the text is not read, and Extract reports the context's error.
func TestExtractStopsWhenContextEnds(t *testing.T) {
	ctx := &doneDuringParse{Context: t.Context(), done: make(chan struct{})}
	close(ctx.done)
	if _, err := Extract(ctx, strings.Repeat("```sh\nls\n```\n", 1000), DefaultOptions()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract error = %v, want context.Canceled", err)
	}

	// What the reader does for Extract: after stop says so, goldmark sees
	// the end of the input.
	src := []byte(strings.Repeat("```sh\nls\n```\n", 1000))
	lines := 0
	r := &stoppingReader{Reader: textReader(src), stop: func() bool { lines++; return lines >= 5 }}
	doc := mdParser().Parse(r, parser.WithContext(parser.NewContext()))
	fences := 0
	_ = ast.Walk(doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if _, ok := n.(*ast.FencedCodeBlock); ok && entering {
			fences++
		}
		return ast.WalkContinue, nil
	})
	if fences > 2 || lines > 6 {
		t.Errorf("parse went on after stop: %d fences, stop asked %d times (of 3,000 lines)", fences, lines)
	}
}

// pathological are the worst inputs for goldmark's block parser that the
// caps let through (at the depth cap, at the size cap), and some that the
// caps refuse, with an ordinary reply of the same size as the baseline.
func pathological(size int) []struct{ name, in string } {
	fill := func(unit string) string {
		return strings.Repeat(unit, size/len(unit))
	}
	deepList := nestedLists(DefaultMaxDepth)
	deepIndent := strings.Repeat("  ", DefaultMaxDepth)
	return []struct{ name, in string }{
		{"baseline: ordinary reply", fill("Some prose about the code, a sentence or two.\n\n```python\nimport os\nprint(os.getcwd())\n```\n\n")},
		{"32 quotes on every line", fill(strings.Repeat("> ", DefaultMaxDepth) + "text\n")},
		{"32 quotes and a fence line", fill(strings.Repeat("> ", DefaultMaxDepth) + "```\n")},
		{"32 lists then deep lines", deepList + fill(deepIndent + "text\n")[len(deepList):]},
		{"32 lists then lazy lines", deepList + fill("text\n")[len(deepList):]},
		{"32 lists, many items", fill(deepList)},
		{"quotes and lists alternating", fill(strings.Repeat("> - ", DefaultMaxDepth/2) + "x\n")},
		{"empty fences", fill("```\n```\n")},
		{"unclosed fences in quotes", fill("> ```\n")},
		{"one line of '>' (refused)", fill(">")},
		{"2,000 nested lists (refused)", nestedLists(2000)[:size]},
	}
}

// BenchmarkPathological measures the worst cases the caps allow; ns/op of
// each is also reported as a ratio of the ordinary reply's time measured in
// the same run (x-baseline).
func BenchmarkPathological(b *testing.B) {
	cases := pathological(DefaultMaxBytes)
	opt := DefaultOptions()
	baseline := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		if _, err := Extract(context.Background(), cases[0].in, opt); err != nil {
			b.Fatal(err)
		}
		baseline = min(baseline, time.Since(start))
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.in)))
			start := time.Now()
			for range b.N {
				_, err := Extract(context.Background(), c.in, opt)
				if err != nil && !errors.Is(err, ErrTooDeep) {
					b.Fatal(err)
				}
			}
			per := time.Since(start) / time.Duration(b.N)
			b.ReportMetric(float64(per)/float64(baseline), "x-baseline")
		})
	}
}

// The pathological inputs are within the caps' promise: each is accepted or
// refused with ErrTooDeep, never another error. (At 64 KiB: the benchmark
// runs them at the size cap.)
func TestPathologicalInputsAreHandled(t *testing.T) {
	for _, c := range pathological(64 << 10) {
		if len(c.in) > DefaultMaxBytes {
			t.Errorf("%s: %d bytes, over the cap", c.name, len(c.in))
		}
		if _, err := Extract(t.Context(), c.in, DefaultOptions()); err != nil && !errors.Is(err, ErrTooDeep) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
