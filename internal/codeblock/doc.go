// Package codeblock extracts code blocks from the Markdown replies of
// language models.
//
// Extraction uses goldmark's CommonMark block parser, not regular
// expressions, so it agrees with what a Markdown renderer would show: fences
// of backticks or tildes of any length, info strings with attributes
// (```python title="x"), fences nested inside longer fences (one block),
// fences inside list items and blockquotes (the container prefix is
// stripped from the code), and indented code blocks on request.
//
// Terms:
//
//   - The info string is the text after the opening fence; its first word is
//     the raw language. [Canonical] maps it to one of the five supported
//     languages (python, javascript, bash, rust, go); other words are kept,
//     lower-cased, with Known=false so callers can report them.
//   - An unlabeled fence has no info string. With Options.DetectUnlabeled the
//     language is guessed by [Detect] and Detected is set.
//   - A block is Closed when its closing fence was seen. Language models are
//     often cut off mid-reply; the last block is then returned with the code
//     up to the end of the input and Closed=false. A fence inside a list item
//     or blockquote that ends before its closing fence is also not Closed.
//
// Positions (Offset, StartLine, EndLine) refer to the input as given. CR LF
// and lone CR line endings count as one line break each; Code always uses
// "\n" and, when not empty, ends with a newline.
//
// Any input, including binary garbage, yields a (possibly empty) slice,
// within two caps that bound the parse (goldmark's block parser is
// quadratic in the nesting depth and cannot be interrupted): a text over
// Options.MaxBytes (default 1 MiB) fails with [ErrTooLarge], one whose
// blockquotes and lists nest deeper than Options.MaxDepth (default 32)
// with [ErrTooDeep]. Within them the parse is linear in the text; the
// worst case is about 0.4 s of CPU for 1 MiB (BenchmarkPathological). Extract
// also stops at the next line when its context ends. It is safe for
// concurrent use.
package codeblock
