package policy

import (
	"regexp"
	"strings"
)

// lexed checks shell text the parser could not read, with the lexer's
// view: simple commands split at operators, and patterns over the
// unquoted text for what spans commands (functions, process substitution).
func (a *analyzer) lexed(text string) {
	sc := lexShell(text)
	for i, lc := range sc.cmds {
		argv, redirs := splitRedirs(lc.words)
		if a.assign(argv) {
			argv = nil
		}
		c := call{argv: argv, redirs: redirs, stdin: lc.heredoc}
		if lc.sep == "|" && i+1 < len(sc.cmds) {
			next, _ := splitRedirs(sc.cmds[i+1].words)
			if p, ok := stdinProgram(next); ok {
				c.pipeTo = &p
			}
		}
		a.command(c)
	}
	for _, n := range sc.nested {
		a.shell(n)
	}
	a.shellPatterns(sc.bare)
}

// assign records a lexed command made only of assignments (x=/ y=~) and
// reports whether it was one.
func (a *analyzer) assign(argv []string) bool {
	if len(argv) == 0 {
		return false
	}
	for _, w := range argv {
		if !assignment.MatchString(w) {
			return false
		}
	}
	for _, w := range argv {
		name, value, _ := strings.Cut(w, "=")
		a.setVar(name, a.expand(value), true)
	}
	return true
}

var (
	// name() { ... } and function name { ... }
	shellFunc = regexp.MustCompile(`(?:^|[\s;&|(){}])(?:function\s+)?([A-Za-z_:.][\w:.-]*)\s*\(\s*\)\s*\{|(?:^|[\s;&|(){}])function\s+([A-Za-z_:.][\w:.-]*)\s*\{`)
	selfPipe  = regexp.MustCompile(`\$0\s*\|\s*\$0`)
	procSub   = regexp.MustCompile(`(?:^|[\s;&|(])(?:(?:ba|z|da|k)?sh|source|\.)\s+(?:-\S+\s+)*<\(\s*(?:sudo\s+)?(?:curl|wget)\b[^)\n]*\)?`)
)

// shellPatterns applies the rules that look at the shape of the unquoted
// text rather than at single commands.
func (a *analyzer) shellPatterns(bare string) {
	for _, m := range shellFunc.FindAllStringSubmatchIndex(bare, -1) {
		nameAt := 2
		if m[2] < 0 {
			nameAt = 4
		}
		name := bare[m[nameAt]:m[nameAt+1]]
		body := braceBody(bare, m[1]-1, maxFuncBody)
		if spawnsItself(body, name) {
			a.add(RuleForkBomb, strings.TrimLeft(bare[m[0]:min(m[1]+len(body)+1, len(bare))], " \t\n;&|(){}"))
		}
	}
	if m := selfPipe.FindString(bare); m != "" {
		a.add(RuleForkBomb, m)
	}
	if m := forkWhile.FindString(bare); m != "" {
		a.add(RuleForkBomb, m)
	}
	if m := procSub.FindString(bare); m != "" {
		a.add(RulePipeToShell, m)
	}
}

func isShellNameChar(c byte) bool {
	return isIdent(c) || c == ':' || c == '.' || c == '-'
}

// spawnsItself reports whether a shell function body runs the function
// named name in a pipeline with itself (name | name) or in the background
// (name &).
func spawnsItself(body, name string) bool {
	for k := 0; k < len(body); {
		i := strings.Index(body[k:], name)
		if i < 0 {
			return false
		}
		i += k
		k = i + len(name)
		if i > 0 && isShellNameChar(body[i-1]) || k < len(body) && isShellNameChar(body[k]) {
			continue
		}
		rest := strings.TrimLeft(body[k:], " \t")
		switch {
		case strings.HasPrefix(rest, "&") && !strings.HasPrefix(rest, "&&"):
			return true
		case strings.HasPrefix(rest, "|") && !strings.HasPrefix(rest, "||"):
			next := strings.TrimLeft(rest[1:], " \t")
			if strings.HasPrefix(next, name) && (len(next) == len(name) || !isShellNameChar(next[len(name)])) {
				return true
			}
		}
	}
	return false
}

// A shellCmd is one simple command: its words after quote removal, with
// redirection operators as separate ">" or "<" words followed by their
// target.
type shellCmd struct {
	words   []string
	sep     string // what ended it: "|", ";", "&", "&&", "||", "\n", "(", ")", "$(", "`", "<(", ""
	heredoc string // body of a heredoc given to this command, if any
}

// shellScript is the result of lexing shell text.
type shellScript struct {
	cmds []shellCmd
	// nested holds the text of command substitutions inside double quotes,
	// which run even though they are quoted.
	nested []string
	// bare is the input with comments, quoted text and heredoc bodies
	// replaced by spaces (newlines kept), for pattern rules.
	bare string
}

type heredocReq struct {
	delim string
	strip bool // <<- strips leading tabs
	cmd   int  // index the owning command gets in cmds
}

type shellLexer struct {
	src     string
	bare    []byte
	i       int
	word    strings.Builder
	inWord  bool
	words   []string
	pending []heredocReq
	out     shellScript
}

// lexShell splits shell text into simple commands. It is a tokenizer, not a
// full parser: it knows quoting, escapes, comments, operators, command
// substitution and heredocs, which is what the rules need to tell a command
// from data. It never fails; unterminated constructs run to the end.
func lexShell(s string) shellScript {
	l := &shellLexer{src: s, bare: []byte(s)}
	l.run()
	l.out.bare = string(l.bare)
	return l.out
}

func (l *shellLexer) run() {
	s := l.src
	for l.i < len(s) {
		c := s[l.i]
		next := byte(0)
		if l.i+1 < len(s) {
			next = s[l.i+1]
		}
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			l.endWord()
			l.i++
		case c == '\\':
			switch {
			case next == '\n':
				l.i += 2
			case l.i+1 < len(s):
				l.add(next)
				l.i += 2
			default:
				l.i++
			}
		case c == '\n':
			l.endCmd("\n")
			l.i++
			l.readHeredocs()
		case c == ';':
			l.endCmd(";")
			l.i++
			for l.i < len(s) && (s[l.i] == ';' || s[l.i] == '&') {
				l.i++
			}
		case c == '&' && next == '&':
			l.endCmd("&&")
			l.i += 2
		case c == '&' && next == '>':
			l.redirect()
		case c == '&':
			l.endCmd("&")
			l.i++
		case c == '|' && next == '|':
			l.endCmd("||")
			l.i += 2
		case c == '|':
			l.endCmd("|")
			l.i++
			if l.i < len(s) && s[l.i] == '&' {
				l.i++
			}
		case c == '(' || c == ')' || c == '`':
			l.endCmd(string(c))
			l.i++
		case c == '$' && next == '(':
			l.endCmd("$(")
			l.i += 2
		case c == '$' && next == '{':
			l.verbatimTo('}', l.i, true)
		case (c == '<' || c == '>') && next == '(':
			l.endCmd("<(")
			l.i += 2
		case c == '<' && next == '<' && (l.i+2 >= len(s) || s[l.i+2] != '<'):
			l.heredoc()
		case c == '<' || c == '>':
			l.redirect()
		case c == '#' && !l.inWord:
			end := strings.IndexByte(s[l.i:], '\n')
			if end < 0 {
				end = len(s) - l.i
			}
			l.blank(l.i, l.i+end)
			l.i += end
		case c == '\'':
			l.verbatimTo('\'', l.i+1, false)
		case c == '"':
			l.doubleQuoted()
		default:
			l.add(c)
			l.i++
		}
	}
	l.endCmd("")
}

// verbatimTo adds s[from:] up to the byte end to the current word, the end
// byte included if inclusive, and continues after it. Single-quoted text
// (from after the quote, not inclusive) is also blanked in bare.
func (l *shellLexer) verbatimTo(end byte, from int, inclusive bool) {
	k := strings.IndexByte(l.src[from:], end)
	if k < 0 {
		k = len(l.src) - from
	}
	if inclusive {
		l.addString(l.src[from:min(from+k+1, len(l.src))])
	} else {
		l.addString(l.src[from : from+k])
		l.blank(from, from+k)
	}
	l.i = from + k + 1
}

func (l *shellLexer) add(c byte) {
	l.word.WriteByte(c)
	l.inWord = true
}

func (l *shellLexer) addString(s string) {
	l.word.WriteString(s)
	l.inWord = true
}

func (l *shellLexer) endWord() {
	if l.inWord {
		l.words = append(l.words, l.word.String())
	}
	l.word.Reset()
	l.inWord = false
}

func (l *shellLexer) endCmd(sep string) {
	l.endWord()
	// An empty command changes nothing, so "a |\n b" stays a pipeline.
	if len(l.words) > 0 {
		l.out.cmds = append(l.out.cmds, shellCmd{words: l.words, sep: sep})
	}
	l.words = nil
}

func (l *shellLexer) blank(from, to int) {
	for k := max(from, 0); k < min(to, len(l.bare)); k++ {
		if l.bare[k] != '\n' {
			l.bare[k] = ' '
		}
	}
}

// redirect handles >, >>, >|, &>, <, <>, <&, >& and the like. A word made
// only of digits right before it is a file descriptor, not an argument.
func (l *shellLexer) redirect() {
	w := l.word.String()
	if l.inWord && strings.Trim(w, "0123456789") == "" {
		l.word.Reset()
		l.inWord = false
	}
	l.endWord()
	op := "<"
	for l.i < len(l.src) && strings.IndexByte("<>|&", l.src[l.i]) >= 0 {
		if l.src[l.i] == '>' {
			op = ">"
		}
		l.i++
	}
	l.words = append(l.words, op)
}

func (l *shellLexer) heredoc() {
	l.endWord()
	l.i += 2
	req := heredocReq{cmd: len(l.out.cmds)}
	if l.i < len(l.src) && l.src[l.i] == '-' {
		req.strip = true
		l.i++
	}
	for l.i < len(l.src) && (l.src[l.i] == ' ' || l.src[l.i] == '\t') {
		l.i++
	}
	var d strings.Builder
	for l.i < len(l.src) && strings.IndexByte(" \t\n;&|<>()", l.src[l.i]) < 0 {
		if c := l.src[l.i]; c != '\'' && c != '"' && c != '\\' {
			d.WriteByte(c)
		}
		l.i++
	}
	if req.delim = d.String(); req.delim != "" {
		l.pending = append(l.pending, req)
	}
}

// readHeredocs consumes the bodies of pending heredocs, which start on the
// line after the one that declared them.
func (l *shellLexer) readHeredocs() {
	for _, req := range l.pending {
		start := l.i
		var body strings.Builder
		for l.i < len(l.src) {
			end := strings.IndexByte(l.src[l.i:], '\n')
			line := l.src[l.i:]
			if end >= 0 {
				line = l.src[l.i : l.i+end]
			}
			next := len(l.src)
			if end >= 0 {
				next = l.i + end + 1
			}
			check := strings.TrimRight(line, "\r")
			if req.strip {
				check = strings.TrimLeft(check, "\t")
			}
			if check == req.delim {
				l.blank(start, l.i)
				l.i = next
				break
			}
			body.WriteString(line)
			body.WriteByte('\n')
			l.i = next
			if l.i >= len(l.src) {
				l.blank(start, l.i)
			}
		}
		if req.cmd < len(l.out.cmds) {
			l.out.cmds[req.cmd].heredoc += body.String()
		}
	}
	l.pending = nil
}

func (l *shellLexer) doubleQuoted() {
	s := l.src
	start := l.i + 1
	l.i++
	l.inWord = true
	for l.i < len(s) && s[l.i] != '"' {
		c := s[l.i]
		switch {
		case c == '\\' && l.i+1 < len(s):
			if strings.IndexByte("\"\\$`\n", s[l.i+1]) >= 0 {
				if s[l.i+1] != '\n' {
					l.word.WriteByte(s[l.i+1])
				}
			} else {
				l.word.WriteByte(c)
				l.word.WriteByte(s[l.i+1])
			}
			l.i += 2
		case c == '$' && l.i+1 < len(s) && s[l.i+1] == '(':
			end := matchParen(s, l.i+1)
			l.out.nested = append(l.out.nested, s[l.i+2:min(end, len(s))])
			l.word.WriteString(s[l.i:min(end+1, len(s))])
			l.i = end + 1
		case c == '`':
			end := strings.IndexByte(s[l.i+1:], '`')
			if end < 0 {
				end = len(s) - l.i - 1
			}
			l.out.nested = append(l.out.nested, s[l.i+1:l.i+1+end])
			l.word.WriteString(s[l.i:min(l.i+end+2, len(s))])
			l.i += end + 2
		default:
			l.word.WriteByte(c)
			l.i++
		}
	}
	l.blank(start, min(l.i, len(s)))
	l.i++
}

// matchParen returns the index of the ')' closing the '(' at open, or
// len(s) when there is none. Quotes inside are skipped.
func matchParen(s string, open int) int {
	depth := 0
	for k := open; k < len(s); k++ {
		switch s[k] {
		case '\\':
			k++
		case '\'', '"':
			q := s[k]
			for k++; k < len(s) && s[k] != q; k++ {
				if s[k] == '\\' && q == '"' {
					k++
				}
			}
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return k
			}
		}
	}
	return len(s)
}
