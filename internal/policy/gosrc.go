package policy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"strconv"
	"strings"
)

// goProgram checks Go source on its syntax tree: library calls are judged
// by the values of their arguments (constants and simple variables
// followed), the argv of process calls is checked as a shell command, and
// endless loops that spawn processes are fork bombs. Source that does not
// parse, even as a bare list of statements, is not checked: it does not
// build, so it cannot run.
func (a *analyzer) goProgram(code string) {
	g := parseGo(code)
	if g == nil {
		return
	}
	g.a = a
	g.scan()
}

// goWalk holds one parsed Go program and what is known about its values.
type goWalk struct {
	a       *analyzer
	src     string
	fset    *token.FileSet
	file    *ast.File
	imports map[string]string // local name -> import path
	strs    map[any]string    // by key(ident)
	slices  map[any][]ast.Expr
	// argvLits are literals checked as part of an argv, not on their own.
	argvLits map[*ast.BasicLit]bool
	strDepth int
}

// maxStrDepth bounds how deeply str follows an expression, so that deeply
// nested calls or concatenations cost linear work.
const maxStrDepth = 32

func parseGo(code string) *goWalk {
	for _, src := range []string{code, "package main\n" + code, "package main\nfunc main() {\n" + code + "\n}\n"} {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "main.go", src, parser.ParseComments)
		if err != nil {
			// Deep nesting exceeds object resolution's scope limit but
			// builds; without resolution, names are matched by spelling.
			fset = token.NewFileSet()
			if f, err = parser.ParseFile(fset, "main.go", src, parser.SkipObjectResolution); err != nil {
				continue
			}
		}
		g := &goWalk{src: src, fset: fset, file: f, imports: map[string]string{},
			strs: map[any]string{}, slices: map[any][]ast.Expr{}, argvLits: map[*ast.BasicLit]bool{}}
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			name := path.Base(p)
			if im.Name != nil {
				name = im.Name.Name
			}
			g.imports[name] = p
		}
		return g
	}
	return nil
}

func (g *goWalk) scan() {
	// Package-level constants and variables first: they may be used above
	// their declaration.
	for _, d := range g.file.Decls {
		if gd, ok := d.(*ast.GenDecl); ok {
			g.values(gd)
		}
	}
	processes := g.importsPath("os/exec")
	// One pass, so that nested loops cost linear work: each node marks the
	// innermost loop, which passes its marks outwards when it ends.
	var open []ast.Node
	var loops []*loop
	ast.Inspect(g.file, func(n ast.Node) bool {
		if n == nil {
			done := open[len(open)-1]
			open = open[:len(open)-1]
			if k := len(loops) - 1; k >= 0 && loops[k].stmt == done {
				var outer *loop
				if k > 0 {
					outer = loops[k-1]
				}
				g.endLoop(loops[k], outer)
				loops = loops[:k]
			}
			return true
		}
		open = append(open, n)
		if len(loops) > 0 {
			g.loopEvent(loops[len(loops)-1], n)
		}
		switch n := n.(type) {
		case *ast.DeclStmt:
			if gd, ok := n.Decl.(*ast.GenDecl); ok {
				g.values(gd)
			}
		case *ast.AssignStmt:
			g.assign(n)
		case *ast.CallExpr:
			if g.call(n) {
				processes = true
			}
		case *ast.ForStmt, *ast.RangeStmt:
			loops = append(loops, &loop{stmt: n})
		case *ast.BasicLit:
			if v, ok := g.str(n); ok && strings.TrimSpace(v) == "/proc/sysrq-trigger" {
				g.a.add(RuleReboot, n.Value)
			}
		}
		return true
	})
	if processes {
		g.literalCommands()
	}
}

func (g *goWalk) importsPath(p string) bool {
	for _, v := range g.imports {
		if v == p {
			return true
		}
	}
	return false
}

// text returns the source of a node.
func (g *goWalk) text(n ast.Node) string {
	from, to := g.fset.Position(n.Pos()).Offset, g.fset.Position(n.End()).Offset
	if from < 0 || to > len(g.src) || from > to {
		return ""
	}
	return g.src[from:to]
}

// fn returns "importpath.Name" for a call of a package-level function, or
// "" for methods, locals and the like. An identifier that is neither
// declared nor imported is taken as a package of that name, for snippets.
func (g *goWalk) fn(e ast.Expr) string {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	x, ok := sel.X.(*ast.Ident)
	if !ok || x.Obj != nil {
		return ""
	}
	p, ok := g.imports[x.Name]
	if !ok {
		p = x.Name
		if std, ok := snippetImports[x.Name]; ok {
			p = std
		}
	}
	return p + "." + sel.Sel.Name
}

// snippetImports are the import paths assumed for a snippet that uses a
// package without importing it.
var snippetImports = map[string]string{"exec": "os/exec", "filepath": "path/filepath", "unix": "golang.org/x/sys/unix"}

func (g *goWalk) values(gd *ast.GenDecl) {
	for _, spec := range gd.Specs {
		vs, ok := spec.(*ast.ValueSpec)
		if !ok {
			continue
		}
		for k, name := range vs.Names {
			if k < len(vs.Values) {
				g.bind(name, vs.Values[k])
			}
		}
	}
}

func (g *goWalk) assign(as *ast.AssignStmt) {
	if as.Tok != token.DEFINE && as.Tok != token.ASSIGN {
		for _, l := range as.Lhs { // x += ...: no longer known
			if id, ok := l.(*ast.Ident); ok {
				g.bind(id, nil)
			}
		}
		return
	}
	if len(as.Rhs) == 1 && len(as.Lhs) > 1 { // h, err := os.UserHomeDir()
		call, _ := as.Rhs[0].(*ast.CallExpr)
		for k, l := range as.Lhs {
			if id, ok := l.(*ast.Ident); ok {
				if k == 0 && call != nil && g.fn(call.Fun) == "os.UserHomeDir" {
					g.strs[key(id)] = "$HOME"
				} else {
					g.bind(id, nil)
				}
			}
		}
		return
	}
	for k, l := range as.Lhs {
		if id, ok := l.(*ast.Ident); ok && k < len(as.Rhs) {
			g.bind(id, as.Rhs[k])
		}
	}
}

// key identifies a variable: its object, or its name when the file was
// parsed without object resolution.
func key(id *ast.Ident) any {
	if id.Obj != nil {
		return id.Obj
	}
	return id.Name
}

// bind records what an identifier holds, if known; e nil forgets it.
func (g *goWalk) bind(id *ast.Ident, e ast.Expr) {
	delete(g.strs, key(id))
	delete(g.slices, key(id))
	if e == nil {
		return
	}
	if v, ok := g.str(e); ok {
		g.strs[key(id)] = v
	} else if cl, ok := e.(*ast.CompositeLit); ok {
		g.slices[key(id)] = cl.Elts
	}
}

// strFuncs are the calls str evaluates.
var strFuncs = map[string]bool{"os.Getenv": true, "os.TempDir": true, "path/filepath.Join": true, "path.Join": true,
	"path/filepath.Clean": true, "path.Clean": true, "path/filepath.FromSlash": true, "path/filepath.ToSlash": true, "string": true}

// str evaluates a string expression known before the program runs:
// literals, constants, concatenation, os.Getenv("HOME"), os.TempDir() and
// filepath.Join / Clean of those, to a bounded depth.
func (g *goWalk) str(e ast.Expr) (string, bool) {
	if g.strDepth >= maxStrDepth {
		return "", false
	}
	g.strDepth++
	defer func() { g.strDepth-- }()
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		v, err := strconv.Unquote(e.Value)
		return v, err == nil
	case *ast.Ident:
		v, ok := g.strs[key(e)]
		return v, ok
	case *ast.ParenExpr:
		return g.str(e.X)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		x, okx := g.str(e.X)
		if !okx || len(x) > maxBody { // long strings are no paths or commands
			return "", false
		}
		y, oky := g.str(e.Y)
		return x + y, oky
	case *ast.CallExpr:
		fn := g.fn(e.Fun)
		if id, ok := e.Fun.(*ast.Ident); ok && id.Name == "string" {
			fn = "string"
		}
		if !strFuncs[fn] {
			return "", false
		}
		var args []string
		for _, arg := range e.Args {
			v, ok := g.str(arg)
			if !ok {
				return "", false
			}
			args = append(args, v)
		}
		switch fn {
		case "os.Getenv":
			return "$HOME", len(args) == 1 && args[0] == "HOME"
		case "os.TempDir":
			return "/tmp", true
		case "path/filepath.Join", "path.Join":
			return path.Join(args...), len(args) > 0
		case "string":
			return strings.Join(args, ""), len(args) == 1
		}
		return path.Clean(strings.Join(args, "")), len(args) == 1
	}
	return "", false
}

// intValue evaluates a small integer constant such as -1.
func intValue(e ast.Expr) (int64, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		n, err := strconv.ParseInt(e.Value, 0, 64)
		return n, err == nil && e.Kind == token.INT
	case *ast.UnaryExpr:
		n, ok := intValue(e.X)
		return -n, ok && e.Op == token.SUB
	case *ast.ParenExpr:
		return intValue(e.X)
	case *ast.CallExpr: // int(-1), syscall.Pid(1) and the like
		if len(e.Args) == 1 {
			return intValue(e.Args[0])
		}
	}
	return 0, false
}

// call applies the library call rules and checks the argv of process
// calls. It reports whether the call starts a process.
func (g *goWalk) call(c *ast.CallExpr) bool {
	name := g.fn(c.Fun)
	arg := func(k int) ast.Expr {
		if k < len(c.Args) {
			return c.Args[k]
		}
		return nil
	}
	text := g.text(c)
	switch strings.TrimPrefix(name, "golang.org/x/sys/") {
	case "os.RemoveAll":
		if v, ok := g.str(arg(0)); ok && dangerousPath(v) {
			g.a.add(RuleDestroyRoot, text)
		}
	case "os.WriteFile", "os.Create":
		if v, ok := g.str(arg(0)); ok && isBlockDevice(v) {
			g.a.add(RuleOverwriteDevice, text)
		}
	case "os.OpenFile":
		if v, ok := g.str(arg(0)); ok && isBlockDevice(v) && len(c.Args) > 1 && writeFlags.MatchString(g.text(c.Args[1])) {
			g.a.add(RuleOverwriteDevice, text)
		}
	case "syscall.Kill", "unix.Kill":
		if n, ok := intValue(arg(0)); ok && (n == -1 || n == 1) {
			g.a.add(RuleKillAll, text)
		}
	case "syscall.Reboot", "unix.Reboot":
		if s := g.text(arg(0)); strings.Contains(s, "POWER_OFF") || strings.Contains(s, "HALT") {
			g.a.add(RuleShutdown, text)
		} else {
			g.a.add(RuleReboot, text)
		}
	case "os/exec.Command":
		g.argv(c.Args, c.Ellipsis.IsValid())
		return true
	case "os/exec.CommandContext":
		if len(c.Args) > 1 {
			g.argv(c.Args[1:], c.Ellipsis.IsValid())
		}
		return true
	case "syscall.Exec", "syscall.ForkExec", "unix.Exec", "os.StartProcess":
		if cl, ok := arg(1).(*ast.CompositeLit); ok {
			g.argv(cl.Elts, false)
		} else if id, ok := arg(1).(*ast.Ident); ok && g.slices[key(id)] != nil {
			g.argv(g.slices[key(id)], false)
		}
		return true
	}
	return false
}

// argv checks the words of a process call as one shell command. Words not
// known before the run stand as "<value>", which no rule matches; a
// trailing slice... is expanded when its elements are known.
func (g *goWalk) argv(args []ast.Expr, variadic bool) {
	if variadic && len(args) > 0 {
		last := args[len(args)-1]
		var elts []ast.Expr
		if cl, ok := last.(*ast.CompositeLit); ok {
			elts = cl.Elts
		} else if id, ok := last.(*ast.Ident); ok {
			elts = g.slices[key(id)]
		}
		args = append(args[:len(args)-1:len(args)-1], elts...)
	}
	words := make([]string, 0, len(args))
	for k, e := range args {
		v, ok := g.str(e)
		if !ok {
			v = "<value>"
		}
		if lit, ok := e.(*ast.BasicLit); ok && k > 0 {
			g.argvLits[lit] = true
		}
		words = append(words, shellQuote(v))
	}
	if len(words) > 0 {
		g.a.shell(strings.Join(words, " "))
	}
}

// literalCommands checks, in a program that runs processes, the string
// literals that may be commands: each run of two or more string arguments
// of a call or elements of a composite literal (["rm", "-rf", "/"]) as one
// argv, and every other literal that holds a command line. A literal that
// is a later word of an argv, such as the message in ("echo", "rm -rf /"),
// is data.
func (g *goWalk) literalCommands() {
	runs := func(list []ast.Expr) {
		for k := 0; k < len(list); {
			n := k
			var words []string
			for ; n < len(list); n++ {
				v, ok := g.str(list[n])
				if !ok {
					break
				}
				words = append(words, shellQuote(v))
				if lit, ok := list[n].(*ast.BasicLit); ok && n > k {
					g.argvLits[lit] = true
				}
			}
			if len(words) > 1 {
				g.a.shell(strings.Join(words, " "))
			}
			k = n + 1
		}
	}
	ast.Inspect(g.file, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			runs(n.Args)
		case *ast.CompositeLit:
			runs(n.Elts)
		}
		return true
	})
	ast.Inspect(g.file, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && !g.argvLits[lit] {
			if v, ok := g.str(lit); ok && strings.ContainsAny(strings.TrimSpace(v), " \t\n") {
				g.a.shell(v)
			}
		}
		return true
	})
}

// A loop is a for statement being walked, with what its body (nested
// loops included) does.
type loop struct {
	stmt          ast.Node
	spawns, stops bool
}

// loopEvent records in the innermost loop whether n starts a process
// (ForkExec, a fork system call, or the program itself) or bounds the
// loop (break, goto, return, Wait, os.Exit, panic).
func (g *goWalk) loopEvent(l *loop, n ast.Node) {
	switch n := n.(type) {
	case *ast.BranchStmt:
		l.stops = l.stops || n.Tok == token.BREAK || n.Tok == token.GOTO
	case *ast.ReturnStmt:
		l.stops = true
	case *ast.CallExpr:
		switch name := g.fn(n.Fun); {
		case name == "syscall.ForkExec" || name == "os.StartProcess":
			l.spawns = true
		case name == "syscall.RawSyscall" || name == "syscall.Syscall":
			l.spawns = l.spawns || len(n.Args) > 0 && strings.HasSuffix(g.text(n.Args[0]), "SYS_FORK")
		case name == "os/exec.Command" || name == "os/exec.CommandContext":
			l.spawns = l.spawns || strings.Contains(g.text(n), "os.Args[0]")
		case name == "os.Exit":
			l.stops = true
		}
		if sel, ok := n.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "Wait" || sel.Sel.Name == "Wait4") {
			l.stops = true
		}
		if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "panic" {
			l.stops = true
		}
	}
}

// endLoop flags an endless loop that spawns and never stops, and passes
// what its body does on to the enclosing loop.
func (g *goWalk) endLoop(l *loop, outer *loop) {
	if f, ok := l.stmt.(*ast.ForStmt); ok && l.spawns && !l.stops {
		if id, ok := f.Cond.(*ast.Ident); f.Cond == nil || ok && id.Name == "true" {
			g.a.add(RuleForkBomb, g.text(f))
		}
	}
	if outer != nil {
		outer.spawns = outer.spawns || l.spawns
		outer.stops = outer.stops || l.stops
	}
}
