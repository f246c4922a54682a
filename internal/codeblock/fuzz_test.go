package codeblock

import (
	"strings"
	"testing"
)

// FuzzExtract guards against panics and hangs on arbitrary model output and
// checks the invariants callers rely on: blocks in document order, offsets
// that point at the fence, and sane line numbers.
func FuzzExtract(f *testing.F) {
	f.Add("```python\nprint(1)\n```\n", false)
	f.Add("> - ```\n>   x\n", true)
	f.Fuzz(func(t *testing.T, text string, indented bool) {
		blocks := Extract(text, Options{IncludeIndented: indented, DetectUnlabeled: true})
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
