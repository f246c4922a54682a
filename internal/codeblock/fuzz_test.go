package codeblock

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzExtract guards against panics and hangs on arbitrary model output and
// checks the invariants callers rely on: blocks in document order, offsets
// that point at the fence, and sane line numbers. It also parses with a
// depth cap of 3: a text within it gives the same blocks, a text over it
// fails with ErrTooDeep and nothing else.
func FuzzExtract(f *testing.F) {
	f.Add("```python\nprint(1)\n```\n", false)
	f.Add("> - ```\n>   x\n", true)
	f.Add("> > > > ```\n", false)
	f.Add("- a\n  - b\n    - c\n      - ```sh\n        ls\n", false)
	f.Fuzz(func(t *testing.T, text string, indented bool) {
		opt := Options{IncludeIndented: indented, DetectUnlabeled: true}
		blocks, err := Extract(t.Context(), text, opt)
		if err != nil {
			if !errors.Is(err, ErrTooDeep) || len(text) <= DefaultMaxDepth {
				t.Fatalf("Extract of %d bytes: %v", len(text), err)
			}
			return
		}
		shallow := opt
		shallow.MaxDepth = 3
		switch got, err := Extract(t.Context(), text, shallow); {
		case errors.Is(err, ErrTooDeep):
		case err != nil:
			t.Fatalf("MaxDepth 3: %v", err)
		case !reflect.DeepEqual(got, blocks):
			t.Fatalf("MaxDepth 3 within the cap changed the blocks:\n%+v\n%+v", got, blocks)
		}
		lineAt := lineNumbers(text)
		lines := lineAt[len(text)]
		prev := -1
		for i, b := range blocks {
			if b.Index != i {
				t.Fatalf("block %d has Index %d", i, b.Index)
			}
			if b.Offset <= prev || b.Offset >= len(text) {
				t.Fatalf("block %d: Offset %d after %d, input length %d", i, b.Offset, prev, len(text))
			}
			prev = b.Offset
			if b.StartLine < 1 || b.StartLine > b.EndLine || b.EndLine > lines {
				t.Fatalf("block %d: lines %d..%d of %d", i, b.StartLine, b.EndLine, lines)
			}
			if want := lineAt[b.Offset]; b.StartLine != want {
				t.Fatalf("block %d: StartLine %d, want %d from Offset %d", i, b.StartLine, want, b.Offset)
			}
			if b.Fence == FenceIndented {
				if !indented {
					t.Fatalf("block %d: indented block without IncludeIndented", i)
				}
			} else if len(b.Fence) < 3 || strings.Trim(b.Fence, b.Fence[:1]) != "" || (b.Fence[0] != '`' && b.Fence[0] != '~') || !strings.HasPrefix(text[b.Offset:], b.Fence) {
				t.Fatalf("block %d: Fence %q at Offset %d: %q", i, b.Fence, b.Offset, text[b.Offset:])
			}
			if strings.Contains(b.Code, "\r") {
				t.Fatalf("block %d: Code has a CR: %q", i, b.Code)
			}
			if b.Known {
				if c, ok := Canonical(b.Language); !ok || c != b.Language {
					t.Fatalf("block %d: Known with non-canonical Language %q", i, b.Language)
				}
			}
			if b.Detected && (b.RawLanguage != "" || !b.Known) {
				t.Fatalf("block %d: Detected with RawLanguage %q Known %v", i, b.RawLanguage, b.Known)
			}
		}
	})
}

// lineNumbers returns the 1-based line of every byte offset of text (and of
// len(text)), counting CR LF, LF and lone CR as one line break each.
func lineNumbers(text string) []int {
	at := make([]int, len(text)+1)
	line := 1
	for i := range len(text) {
		at[i] = line
		if text[i] == '\n' || text[i] == '\r' && (i+1 == len(text) || text[i+1] != '\n') {
			line++
		}
	}
	at[len(text)] = line
	return at
}
