package policy

import (
	"errors"
	"strconv"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// Bounds on the text given to the shell parser. Longer or more deeply
// nested text is read by the lexer instead, which is linear and never
// recurses; the policy's max_code_bytes (100 KiB by default) applies first.
// A tree deeper than maxWalkDepth (a pipeline of thousands of stages) is
// walked that deep and lexed as well, which keeps the walk's stack small.
const (
	maxParseBytes = 256 << 10
	maxNesting    = 128
	maxWalkDepth  = 1000
)

// shell checks shell text: parsed as bash when it parses, lexed otherwise.
func (a *analyzer) shell(text string) {
	if !a.enter() {
		return
	}
	defer a.leave()
	f, err := parseShell(text)
	if err != nil {
		a.lexed(text)
		return
	}
	w := &shellWalk{a: a, src: text, next: map[*syntax.Stmt]*syntax.Stmt{},
		funcs: map[string]*syntax.Stmt{}, called: map[string]bool{}}
	if !walk(f, w.visit) {
		a.lexed(text)
	}
}

// walk is syntax.Walk bounded to maxWalkDepth; it reports whether it
// visited the whole tree.
func walk(root syntax.Node, f func(syntax.Node) bool) bool {
	depth, complete := 0, true
	syntax.Walk(root, func(n syntax.Node) bool {
		switch {
		case n == nil: // after the children of a node f descended into
			depth--
			return false
		case depth >= maxWalkDepth:
			complete = false
			return false
		case !f(n):
			return false
		}
		depth++
		return true
	})
	return complete
}

func parseShell(text string) (*syntax.File, error) {
	if len(text) > maxParseBytes || nesting(text) > maxNesting {
		return nil, errTooComplex
	}
	return syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(strings.NewReader(text), "")
}

var errTooComplex = errors.New("shell text too large or too deeply nested to parse")

// nesting over-estimates how deeply brackets nest in s, quotes ignored.
func nesting(s string) int {
	depth, most := 0, 0
	for k := 0; k < len(s); k++ {
		switch s[k] {
		case '(', '{', '[', '`':
			depth++
			most = max(most, depth)
		case ')', '}', ']':
			depth = max(0, depth-1)
		}
	}
	return most
}

// shellWalk visits a parsed script in source order, so that variables are
// known where they are used. Every simple command is checked wherever it
// sits: in functions, subshells, pipelines, loops, command and process
// substitutions, and here-document bodies.
type shellWalk struct {
	a   *analyzer
	src string
	// next maps a statement whose output is piped to the first statement
	// of the next pipeline stage.
	next map[*syntax.Stmt]*syntax.Stmt
	// funcs holds the functions defined so far; each is walked again at
	// its first call, with that call's arguments as $1, $2, ... and the
	// variables known then.
	funcs  map[string]*syntax.Stmt
	called map[string]bool
}

func (w *shellWalk) visit(n syntax.Node) bool {
	switch n := n.(type) {
	case *syntax.BinaryCmd:
		if n.Op == syntax.Pipe || n.Op == syntax.PipeAll {
			to := firstStage(n.Y)
			for _, s := range outputs(n.X, nil) {
				w.next[s] = to
			}
			if w.callName(lastStage(n.X)) == "$0" && w.callName(to) == "$0" {
				w.a.add(RuleForkBomb, w.text(n))
			}
		}
	case *syntax.FuncDecl:
		if n.Name != nil {
			w.funcs[n.Name.Value] = n.Body
			if spawnsSelf(n.Body, n.Name.Value, w) {
				w.a.add(RuleForkBomb, w.text(n))
			}
		}
	case *syntax.Stmt:
		w.stmt(n)
	case *syntax.DeclClause: // local, export, declare, readonly
		for _, as := range n.Args {
			if as.Name != nil && !as.Naked {
				w.assign(as)
			}
		}
	case *syntax.WordIter: // for x in ...: x is no longer known
		w.a.setVar(n.Name.Value, "", false)
	}
	return true
}

// stmt checks a statement: the redirections of any command, and a simple
// command with its stdin and the pipeline stage it feeds.
func (w *shellWalk) stmt(s *syntax.Stmt) {
	c := call{}
	for _, r := range s.Redirs {
		switch r.Op {
		case syntax.RdrOut, syntax.AppOut, syntax.ClbOut, syntax.RdrAll, syntax.AppAll, syntax.RdrInOut, syntax.DplOut:
			c.redirs = append(c.redirs, redir{">", w.word(r.Word)})
		case syntax.Hdoc, syntax.DashHdoc:
			c.stdin += w.heredoc(r)
		case syntax.WordHdoc:
			c.stdin += w.word(r.Word) + "\n"
		}
	}
	ce, _ := s.Cmd.(*syntax.CallExpr)
	if ce == nil || len(ce.Args) == 0 {
		if ce != nil {
			for _, as := range ce.Assigns {
				w.assign(as)
			}
		}
		w.a.command(c) // redirections only
		return
	}
	for _, arg := range ce.Args {
		c.argv = append(c.argv, w.word(arg))
	}
	if to := w.next[s]; to != nil {
		if next, ok := to.Cmd.(*syntax.CallExpr); ok {
			if p, ok := stdinProgram(w.words(next.Args)); ok {
				c.pipeTo = &p
			}
		}
	}
	w.procSubst(ce, c.argv)
	if cmdName(c.argv[0]) == "unset" {
		for _, name := range c.argv[1:] {
			w.a.setVar(name, "", false)
		}
	}
	w.a.command(c)
	w.callFunc(c.argv)
}

// callFunc walks a function's body at its first call, with the call's
// arguments bound to the positional parameters. Calls nest to maxDepth.
func (w *shellWalk) callFunc(argv []string) {
	body := w.funcs[argv[0]]
	if body == nil || w.called[argv[0]] || !w.a.enter() {
		return
	}
	defer w.a.leave()
	w.called[argv[0]] = true
	params := map[string]string{"@": strings.Join(argv[1:], " "), "*": strings.Join(argv[1:], " ")}
	for k := 1; k <= 9; k++ {
		params[strconv.Itoa(k)] = ""
		if k < len(argv) {
			params[strconv.Itoa(k)] = argv[k]
		}
	}
	saved := map[string]string{}
	for name, v := range params {
		if old, ok := w.a.vars[name]; ok {
			saved[name] = old
		}
		w.a.setVar(name, v, true)
	}
	walk(body, w.visit)
	for name := range params {
		old, ok := saved[name]
		w.a.setVar(name, old, ok)
	}
}

// procSubst flags a shell that runs a download given as a file:
// bash <(curl ...), source <(wget ...).
func (w *shellWalk) procSubst(ce *syntax.CallExpr, argv []string) {
	argv = stripPrefixes(argv)
	if len(argv) == 0 {
		return
	}
	if name := cmdName(argv[0]); !shells[name] && name != "source" && name != "." {
		return
	}
	for _, arg := range ce.Args {
		for _, part := range arg.Parts {
			ps, ok := part.(*syntax.ProcSubst)
			if !ok || ps.Op != syntax.CmdIn {
				continue
			}
			walk(ps, func(n syntax.Node) bool {
				if s, ok := n.(*syntax.Stmt); ok {
					switch cmdName(w.callName(s)) {
					case "curl", "wget", "fetch":
						w.a.add(RulePipeToShell, w.text(ce))
					}
				}
				return true
			})
		}
	}
}

// assign records a variable assigned a literal value (x=/, y="$HOME/x",
// z=$x); any other assignment makes the variable unknown.
func (w *shellWalk) assign(as *syntax.Assign) {
	if as.Name == nil {
		return
	}
	known := as.Value != nil && !as.Append && as.Index == nil && as.Array == nil && literalWord(as.Value)
	value := ""
	if known {
		value = w.word(as.Value)
	}
	w.a.setVar(as.Name.Value, value, known)
}

// literalWord reports whether a word's value is known before the script
// runs: no command substitution, arithmetic or process substitution.
func literalWord(word *syntax.Word) bool {
	ok := true
	walk(word, func(n syntax.Node) bool {
		switch n.(type) {
		case *syntax.CmdSubst, *syntax.ArithmExp, *syntax.ProcSubst:
			ok = false
		}
		return ok
	})
	return ok
}

// spawnsSelf reports whether a function body runs the function named name
// in a pipeline with itself (name | name) or in the background (name &).
func spawnsSelf(body *syntax.Stmt, name string, w *shellWalk) bool {
	found := false
	walk(body, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.BinaryCmd:
			if (n.Op == syntax.Pipe || n.Op == syntax.PipeAll) &&
				w.callName(lastStage(n.X)) == name && w.callName(firstStage(n.Y)) == name {
				found = true
			}
		case *syntax.Stmt:
			if n.Background && w.callName(n) == name {
				found = true
			}
		}
		return !found
	})
	return found
}

// callName returns the command name a statement runs, wrappers such as
// sudo skipped, or "" when it is not a simple command.
func (w *shellWalk) callName(s *syntax.Stmt) string {
	if s == nil {
		return ""
	}
	ce, ok := s.Cmd.(*syntax.CallExpr)
	if !ok || len(ce.Args) == 0 {
		return ""
	}
	argv := stripPrefixes(w.words(ce.Args))
	if len(argv) == 0 {
		return ""
	}
	return argv[0]
}

// firstStage and lastStage return the first and last statements of a
// pipeline (or s itself).
func firstStage(s *syntax.Stmt) *syntax.Stmt {
	for {
		b, ok := s.Cmd.(*syntax.BinaryCmd)
		if !ok || (b.Op != syntax.Pipe && b.Op != syntax.PipeAll) {
			return s
		}
		s = b.X
	}
}

func lastStage(s *syntax.Stmt) *syntax.Stmt {
	for {
		b, ok := s.Cmd.(*syntax.BinaryCmd)
		if !ok || (b.Op != syntax.Pipe && b.Op != syntax.PipeAll) {
			return s
		}
		s = b.Y
	}
}

// outputs appends the simple statements whose output becomes the output
// of s: s itself, the last stage of a pipeline, both sides of && and ||,
// and every statement of a subshell or brace group.
func outputs(s *syntax.Stmt, out []*syntax.Stmt) []*syntax.Stmt {
	switch c := s.Cmd.(type) {
	case *syntax.BinaryCmd:
		if c.Op == syntax.Pipe || c.Op == syntax.PipeAll {
			return outputs(c.Y, out)
		}
		return outputs(c.Y, outputs(c.X, out))
	case *syntax.Subshell:
		for _, s := range c.Stmts {
			out = outputs(s, out)
		}
		return out
	case *syntax.Block:
		for _, s := range c.Stmts {
			out = outputs(s, out)
		}
		return out
	}
	return append(out, s)
}

// heredoc returns the text a here-document gives its command: verbatim
// when the delimiter is quoted, with known variables expanded otherwise.
func (w *shellWalk) heredoc(r *syntax.Redirect) string {
	if r.Hdoc == nil {
		return ""
	}
	quoted := r.Word.Lit() == "" || strings.Contains(r.Word.Lit(), `\`)
	if quoted {
		return w.text(r.Hdoc)
	}
	var b strings.Builder
	w.parts(&b, r.Hdoc.Parts, true)
	return b.String()
}

func (w *shellWalk) words(ws []*syntax.Word) []string {
	out := make([]string, len(ws))
	for k, x := range ws {
		out[k] = w.word(x)
	}
	return out
}

// word returns what a shell word becomes: quotes removed, known variables
// substituted, and what is only known at run time (command substitution,
// other variables, arithmetic) kept as written, so that $HOME stays $HOME.
func (w *shellWalk) word(x *syntax.Word) string {
	if x == nil {
		return ""
	}
	var b strings.Builder
	w.parts(&b, x.Parts, false)
	return b.String()
}

func (w *shellWalk) parts(b *strings.Builder, parts []syntax.WordPart, quoted bool) {
	for _, p := range parts {
		switch p := p.(type) {
		case *syntax.Lit:
			b.WriteString(unescape(p.Value, quoted))
		case *syntax.SglQuoted:
			if p.Dollar {
				b.WriteString(ansiC(p.Value))
			} else {
				b.WriteString(p.Value)
			}
		case *syntax.DblQuoted:
			w.parts(b, p.Parts, true)
		case *syntax.ParamExp:
			b.WriteString(w.param(p))
		default:
			b.WriteString(w.text(p))
		}
	}
}

// param expands $x, ${x} and ${x:-default} when x is known or the default
// applies; anything else is kept as written.
func (w *shellWalk) param(p *syntax.ParamExp) string {
	if p.Param == nil || p.Excl || p.Length || p.Index != nil || p.Slice != nil || p.Repl != nil || p.Names != 0 {
		return w.text(p)
	}
	v, known := w.a.vars[p.Param.Value]
	if !known && p.Param.Value == "HOME" { // always set: ${HOME:-/} is $HOME
		v, known = "$HOME", true
	}
	switch {
	case p.Exp == nil && known:
		return v
	case p.Exp == nil:
		return "$" + p.Param.Value
	case p.Exp.Op == syntax.DefaultUnset || p.Exp.Op == syntax.DefaultUnsetOrNull ||
		p.Exp.Op == syntax.AssignUnset || p.Exp.Op == syntax.AssignUnsetOrNull:
		if known && v != "" {
			return v
		}
		if !known {
			return w.word(p.Exp.Word)
		}
	}
	return w.text(p)
}

// text returns the source text of a node.
func (w *shellWalk) text(n syntax.Node) string {
	from, to := int(n.Pos().Offset()), int(n.End().Offset())
	if from < 0 || to > len(w.src) || from > to {
		return ""
	}
	return w.src[from:to]
}

// unescape removes the backslashes quote removal removes: any outside
// quotes, and before $ ` " \ newline inside double quotes.
func unescape(s string, quoted bool) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for k := 0; k < len(s); k++ {
		if s[k] == '\\' && k+1 < len(s) && (!quoted || strings.IndexByte("$`\"\\\n", s[k+1]) >= 0) {
			k++
			if s[k] == '\n' {
				continue
			}
		}
		b.WriteByte(s[k])
	}
	return b.String()
}

// ansiC decodes the body of a $'...' string; the escapes bash shares with
// Go (\n, \t, \xHH, \NNN, \\) are decoded, a body with others is kept raw.
func ansiC(s string) string {
	q := strings.ReplaceAll(strings.ReplaceAll(s, `\'`, `'`), `"`, `\"`)
	if v, err := strconv.Unquote(`"` + q + `"`); err == nil {
		return v
	}
	return s
}
