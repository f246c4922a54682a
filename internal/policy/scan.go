package policy

import (
	"strings"

	"github.com/vmexec/vmexec/internal/codeblock"
)

// source is a program split into what rules need. code and bare have the
// same length as the input, so offsets found in one apply to the other.
type source struct {
	code string // comments replaced by spaces
	bare string // comments and the contents of literals replaced by spaces
	lits []literal
}

// literal is one string literal.
type literal struct {
	val        string // contents, with \\ \" \' unescaped
	start, end int    // span of the whole literal, quotes included
}

type scanner struct {
	src  string
	code []byte
	bare []byte
	lits []literal
}

// scan tokenizes a Python, JavaScript or Rust program just enough to
// tell code from comments and string literals. It never fails: an
// unterminated literal or comment runs to the end of its line or of the
// input.
func scan(lang, src string) source {
	s := &scanner{src: src, code: []byte(src), bare: []byte(src)}
	for i := 0; i < len(src); {
		i = s.step(lang, i)
	}
	return source{code: string(s.code), bare: string(s.bare), lits: s.lits}
}

func (s *scanner) step(lang string, i int) int {
	src := s.src
	c := src[i]
	rest := src[i:]
	switch {
	case lang == codeblock.Python && c == '#',
		lang != codeblock.Python && strings.HasPrefix(rest, "//"),
		lang == codeblock.JavaScript && i == 0 && strings.HasPrefix(rest, "#!"):
		end := lineEnd(src, i)
		s.comment(i, end)
		return end
	case lang != codeblock.Python && strings.HasPrefix(rest, "/*"):
		end := strings.Index(src[i+2:], "*/")
		if end < 0 {
			end = len(src)
		} else {
			end += i + 4
		}
		s.comment(i, end)
		return end
	case lang == codeblock.JavaScript && c == '/' && s.regexAllowed(i):
		if end, ok := jsRegexEnd(src, i); ok {
			s.blank(i+1, end-1)
			return end
		}
	}
	switch lang {
	case codeblock.Python:
		if n := pyPrefix(src, i); n >= 0 {
			return s.pyString(i, i+n)
		}
	case codeblock.JavaScript:
		switch c {
		case '\'', '"':
			return s.quoted(i, i, c, false, false)
		case '`':
			return s.quoted(i, i, c, true, false)
		}
	case codeblock.Rust:
		if c == '"' {
			return s.quoted(i, i, c, true, false)
		}
		if end, ok := s.rustRaw(i); ok {
			return end
		}
		if c == '\'' {
			if end := rustChar(src, i); end > 0 {
				s.blank(i+1, end-1)
				return end
			}
		}
	}
	return i + 1
}

func lineEnd(s string, i int) int {
	if k := strings.IndexByte(s[i:], '\n'); k >= 0 {
		return i + k
	}
	return len(s)
}

func (s *scanner) comment(from, to int) {
	for k := from; k < to && k < len(s.src); k++ {
		if s.src[k] != '\n' {
			s.code[k] = ' '
			s.bare[k] = ' '
		}
	}
}

func (s *scanner) blank(from, to int) {
	for k := max(from, 0); k < to && k < len(s.src); k++ {
		if s.src[k] != '\n' {
			s.bare[k] = ' '
		}
	}
}

// quoted scans a literal whose opening quote is at open (start is where the
// literal begins, prefixes included). multiline literals may span lines;
// raw ones have no escapes.
func (s *scanner) quoted(start, open int, q byte, multiline, raw bool) int {
	src := s.src
	var val strings.Builder
	k := open + 1
	for k < len(src) && src[k] != q {
		if src[k] == '\n' && !multiline {
			break
		}
		if src[k] == '\\' && !raw && k+1 < len(src) {
			if strings.IndexByte("\\'\"`", src[k+1]) < 0 {
				val.WriteByte('\\')
			}
			val.WriteByte(src[k+1])
			k += 2
			continue
		}
		val.WriteByte(src[k])
		k++
	}
	end := min(k+1, len(src))
	if k < len(src) && src[k] == '\n' {
		end = k
	}
	s.blank(open+1, k)
	s.lits = append(s.lits, literal{val: val.String(), start: start, end: end})
	return end
}

// pyPrefix returns the length of a string prefix (r, b, f, u, rb, ...) if
// a Python string literal starts at i, or -1.
func pyPrefix(src string, i int) int {
	if i > 0 && isIdent(src[i-1]) {
		return -1
	}
	for n := 0; n <= 2 && i+n < len(src); n++ {
		c := src[i+n]
		if c == '\'' || c == '"' {
			return n
		}
		if !strings.ContainsRune("rRbBuUfF", rune(c)) {
			return -1
		}
	}
	return -1
}

func (s *scanner) pyString(start, open int) int {
	src := s.src
	raw := strings.ContainsAny(src[start:open], "rR")
	q := src[open]
	triple := strings.Repeat(string(q), 3)
	if !strings.HasPrefix(src[open:], triple) {
		return s.quoted(start, open, q, false, raw)
	}
	var val strings.Builder
	k := open + 3
	for k < len(src) && !strings.HasPrefix(src[k:], triple) {
		if src[k] == '\\' && !raw && k+1 < len(src) {
			val.WriteByte(src[k+1])
			k += 2
			continue
		}
		val.WriteByte(src[k])
		k++
	}
	s.blank(open+3, k)
	end := min(k+3, len(src))
	s.lits = append(s.lits, literal{val: val.String(), start: start, end: end})
	return end
}

// rustRaw scans r"..", r#".."#, b"..", br".." literals starting at i.
func (s *scanner) rustRaw(i int) (int, bool) {
	src := s.src
	if i > 0 && isIdent(src[i-1]) {
		return 0, false
	}
	k := i
	if k < len(src) && src[k] == 'b' {
		k++
	}
	if k < len(src) && src[k] == '"' {
		return s.quoted(i, k, '"', true, false), true
	}
	if k >= len(src) || src[k] != 'r' {
		return 0, false
	}
	k++
	hashes := 0
	for k < len(src) && src[k] == '#' {
		hashes++
		k++
	}
	if k >= len(src) || src[k] != '"' {
		return 0, false
	}
	closing := "\"" + strings.Repeat("#", hashes)
	body := k + 1
	e := strings.Index(src[body:], closing)
	if e < 0 {
		e = len(src) - body
	}
	s.blank(body, body+e)
	end := min(body+e+len(closing), len(src))
	s.lits = append(s.lits, literal{val: src[body : body+e], start: i, end: end})
	return end, true
}

// rustChar returns the end of a char literal at i, or 0 for a lifetime.
func rustChar(src string, i int) int {
	k := i + 1
	if k < len(src) && src[k] == '\\' {
		k += 2
		for k < len(src) && k < i+12 && src[k] != '\'' {
			k++
		}
	} else {
		for k < len(src) && k < i+5 && src[k]&0xC0 == 0x80 || k == i+1 {
			k++
		}
	}
	if k < len(src) && src[k] == '\'' {
		return k + 1
	}
	return 0
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// regexAllowed reports whether a '/' at i starts a JavaScript regular
// expression literal rather than a division: it does after an operator,
// an opening bracket, a comma, or at the start.
func (s *scanner) regexAllowed(i int) bool {
	k := i - 1
	for k >= 0 && (s.bare[k] == ' ' || s.bare[k] == '\t' || s.bare[k] == '\n' || s.bare[k] == '\r') {
		k--
	}
	if k < 0 {
		return true
	}
	if strings.IndexByte("(,=:[!&|?{};+-*%<>~^", s.bare[k]) >= 0 {
		return true
	}
	w := k
	for w >= 0 && isIdent(s.bare[w]) {
		w--
	}
	switch string(s.bare[w+1 : k+1]) {
	case "return", "typeof", "case", "in", "of", "delete", "void", "throw":
		return true
	}
	return false
}

// jsRegexEnd returns the end of the regular expression literal at i (flags
// included), or false when the line ends first.
func jsRegexEnd(src string, i int) (int, bool) {
	inClass := false
	for k := i + 1; k < len(src); k++ {
		switch src[k] {
		case '\n':
			return 0, false
		case '\\':
			k++
		case '[':
			inClass = true
		case ']':
			inClass = false
		case '/':
			if !inClass {
				if k == i+1 {
					return 0, false // "//" is a comment
				}
				k++
				for k < len(src) && isIdent(src[k]) {
					k++
				}
				return k, true
			}
		}
	}
	return 0, false
}
