package codeblock

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExtract(t *testing.T) {
	detect := DefaultOptions()
	tests := []struct {
		name string
		in   string
		opt  Options
		want []Block
	}{
		{
			name: "labeled fence with attributes keeps the whole info string",
			in:   "Here:\n```python title=\"x.py\"\nprint(1)\n```\nDone.\n",
			opt:  detect,
			want: []Block{{Language: "python", RawLanguage: "python", Info: `python title="x.py"`, Code: "print(1)\n",
				Known: true, StartLine: 2, EndLine: 4, Offset: 6, Fence: "```", Closed: true}},
		},
		{
			name: "tilde fence of four",
			in:   "~~~~bash\necho hi\n~~~~\n",
			opt:  detect,
			want: []Block{{Language: "bash", RawLanguage: "bash", Info: "bash", Code: "echo hi\n",
				Known: true, StartLine: 1, EndLine: 3, Offset: 0, Fence: "~~~~", Closed: true}},
		},
		{
			name: "CRLF input gives LF code and offsets into the original",
			in:   "a\r\nb\r\n```js\r\nconsole.log(1)\r\nx()\r\n```\r\n",
			opt:  detect,
			want: []Block{{Language: "javascript", RawLanguage: "js", Info: "js", Code: "console.log(1)\nx()\n",
				Known: true, StartLine: 3, EndLine: 6, Offset: 6, Fence: "```", Closed: true}},
		},
		{
			name: "shorter fence inside a longer one is content, not a second block",
			in:   "````markdown\n```python\nx = 1\n```\n````\n",
			opt:  detect,
			want: []Block{{Language: "markdown", RawLanguage: "markdown", Info: "markdown", Code: "```python\nx = 1\n```\n",
				StartLine: 1, EndLine: 5, Offset: 0, Fence: "````", Closed: true}},
		},
		{
			name: "closing fence must be at least as long as the opening",
			in:   "~~~~\n~~~\n~~~~~~\n",
			opt:  Options{},
			want: []Block{{Code: "~~~\n", StartLine: 1, EndLine: 3, Fence: "~~~~", Closed: true}},
		},
		{
			name: "truncated reply: last fence never closed",
			in:   "Run this:\n```python\nimport os\nprint(os.getcwd())",
			opt:  detect,
			want: []Block{{Language: "python", RawLanguage: "python", Info: "python", Code: "import os\nprint(os.getcwd())\n",
				Known: true, StartLine: 2, EndLine: 4, Offset: 10, Fence: "```", Closed: false}},
		},
		{
			name: "truncated right after the opening fence",
			in:   "x\n```go",
			opt:  detect,
			want: []Block{{Language: "go", RawLanguage: "go", Info: "go", Known: true,
				StartLine: 2, EndLine: 2, Offset: 2, Fence: "```"}},
		},
		{
			name: "fence in a list item has the indentation stripped",
			in:   "1. Install:\n\n   ```bash\n   pip install x\n     indented more\n   ```\n2. Done\n",
			opt:  detect,
			want: []Block{{Language: "bash", RawLanguage: "bash", Info: "bash", Code: "pip install x\n  indented more\n",
				Known: true, StartLine: 3, EndLine: 6, Offset: 16, Fence: "```", Closed: true}},
		},
		{
			name: "fence in a blockquote has the quote marker stripped",
			in:   "> ```go\n> package main\n> ```\n",
			opt:  detect,
			want: []Block{{Language: "go", RawLanguage: "go", Info: "go", Code: "package main\n",
				Known: true, StartLine: 1, EndLine: 3, Offset: 2, Fence: "```", Closed: true}},
		},
		{
			name: "blockquote ending before the closing fence leaves the block unclosed",
			in:   "> ```\n> x\n\nafter\n",
			opt:  Options{},
			want: []Block{{Code: "x\n", StartLine: 1, EndLine: 2, Offset: 2, Fence: "```"}},
		},
		{
			name: "document order and indexes across several blocks",
			in:   "```py\na\n```\ntext\n```rs\nb\n```\n- ```sh\n  c\n  ```\n",
			opt:  detect,
			want: []Block{
				{Language: "python", RawLanguage: "py", Info: "py", Code: "a\n", Known: true, Index: 0, StartLine: 1, EndLine: 3, Offset: 0, Fence: "```", Closed: true},
				{Language: "rust", RawLanguage: "rs", Info: "rs", Code: "b\n", Known: true, Index: 1, StartLine: 5, EndLine: 7, Offset: 17, Fence: "```", Closed: true},
				{Language: "bash", RawLanguage: "sh", Info: "sh", Code: "c\n", Known: true, Index: 2, StartLine: 8, EndLine: 10, Offset: 31, Fence: "```", Closed: true},
			},
		},
		{
			name: "empty blocks get their own positions",
			in:   "```\n```\n\n```\n```\n",
			opt:  detect,
			want: []Block{
				{StartLine: 1, EndLine: 2, Offset: 0, Fence: "```", Closed: true},
				{Index: 1, StartLine: 4, EndLine: 5, Offset: 9, Fence: "```", Closed: true},
			},
		},
		{
			name: "unknown language is returned for the caller to report",
			in:   "```COBOL\nDISPLAY 'HI'.\n```\n",
			opt:  detect,
			want: []Block{{Language: "cobol", RawLanguage: "COBOL", Info: "COBOL", Code: "DISPLAY 'HI'.\n",
				StartLine: 1, EndLine: 3, Fence: "```", Closed: true}},
		},
		{
			name: "decorated language name is canonicalized",
			in:   "```{.python .numberLines}\nx\n```\n",
			opt:  detect,
			want: []Block{{Language: "python", RawLanguage: "{.python", Info: "{.python .numberLines}", Code: "x\n",
				Known: true, StartLine: 1, EndLine: 3, Fence: "```", Closed: true}},
		},
		{
			name: "unlabeled fence: language detected",
			in:   "```\nconsole.log('hi')\n```\n",
			opt:  detect,
			want: []Block{{Language: "javascript", Code: "console.log('hi')\n", Detected: true, Known: true,
				StartLine: 1, EndLine: 3, Fence: "```", Closed: true}},
		},
		{
			name: "unlabeled fence: detection unsure leaves language empty",
			in:   "```\nhello world\n```\n",
			opt:  detect,
			want: []Block{{Code: "hello world\n", StartLine: 1, EndLine: 3, Fence: "```", Closed: true}},
		},
		{
			name: "unlabeled fence: detection off",
			in:   "```\nconsole.log('hi')\n```\n",
			opt:  Options{},
			want: []Block{{Code: "console.log('hi')\n", StartLine: 1, EndLine: 3, Fence: "```", Closed: true}},
		},
		{
			name: "indented code is skipped by default",
			in:   "Para.\n\n    ls -la\n\n```bash\necho 1\n```\n",
			opt:  detect,
			want: []Block{{Language: "bash", RawLanguage: "bash", Info: "bash", Code: "echo 1\n", Known: true,
				StartLine: 5, EndLine: 7, Offset: 19, Fence: "```", Closed: true}},
		},
		{
			name: "indented code on request, detected, trailing blank lines trimmed",
			in:   "Para.\n\n    ls -la\n    pwd\n\n\nEnd\n",
			opt:  Options{IncludeIndented: true, DetectUnlabeled: true},
			want: []Block{{Language: "bash", Code: "ls -la\npwd\n", Detected: true, Known: true,
				StartLine: 3, EndLine: 4, Offset: 11, Fence: FenceIndented, Closed: true}},
		},
		{
			name: "backtick in a backtick info string is inline code, not a fence",
			in:   "```py`x```\n",
			opt:  detect,
			want: nil,
		},
		{
			name: "no code at all",
			in:   "Just prose with `inline code`.\n",
			opt:  detect,
			want: nil,
		},
		{
			name: "empty input",
			in:   "",
			opt:  detect,
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := extract(t, tt.in, tt.opt)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Extract(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
			for _, b := range got {
				if b.Fence != FenceIndented && !strings.HasPrefix(tt.in[b.Offset:], b.Fence) {
					t.Errorf("block %d: input at Offset %d is %q, want fence %q", b.Index, b.Offset, tt.in[b.Offset:], b.Fence)
				}
			}
		})
	}
}

// A model reply larger than any realistic one must still be handled quickly
// and completely.
func TestExtractManyBlocks(t *testing.T) {
	var sb strings.Builder
	const n = 2000
	for range n {
		sb.WriteString("Some text.\n\n```python\nprint('x')\n```\n\n")
	}
	got := extract(t, sb.String(), DefaultOptions())
	if len(got) != n {
		t.Fatalf("got %d blocks, want %d", len(got), n)
	}
	if last := got[n-1]; last.StartLine != 6*(n-1)+3 || last.Index != n-1 {
		t.Errorf("last block: StartLine %d Index %d", last.StartLine, last.Index)
	}
}

// Extract shares one goldmark parser between calls; concurrent use must be
// safe (run with -race).
func TestExtractConcurrent(t *testing.T) {
	in := "```py\nprint(1)\n```\n> ```\n> x\n"
	want := extract(t, in, DefaultOptions())
	done := make(chan []Block)
	for range 8 {
		go func() {
			got, _ := Extract(context.Background(), in, DefaultOptions())
			done <- got
		}()
	}
	for range 8 {
		if diff := cmp.Diff(want, <-done); diff != "" {
			t.Errorf("concurrent result differs (-want +got):\n%s", diff)
		}
	}
}

// extract is Extract for inputs within the caps: an error fails the test.
func extract(t testing.TB, in string, opt Options) []Block {
	t.Helper()
	got, err := Extract(t.Context(), in, opt)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	return got
}
