package policy

import (
	"cmp"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/vmexec/vmexec/internal/codeblock"
)

var (
	forkWhile = regexp.MustCompile(`\bfork\s*(?:\(\s*\))?\s*while\s+fork\b`)
	subFetch  = regexp.MustCompile("(?:\\$\\(|`)\\s*(?:curl|wget)\\b")
)

// Bounds on how far a body or an argument list is scanned. The patterns
// looked for are short; the bounds keep deeply nested input from taking
// quadratic time.
const (
	maxBody     = 4096 // argument lists, Python blocks
	maxLoopBody = 2048 // loops that may spawn processes
	maxFuncBody = 1024 // shell functions that may call themselves (lexer)
)

// braceBody returns the text between the '{' at open and its matching '}'
// (or the end, or limit bytes).
func braceBody(s string, open, limit int) string {
	depth := 0
	s = s[:min(len(s), open+limit)]
	for k := open; k < len(s); k++ {
		switch s[k] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return s[open+1 : k]
			}
		}
	}
	return s[min(open+1, len(s)):]
}

type redir struct{ op, target string }

// splitRedirs separates redirections from arguments.
func splitRedirs(words []string) (argv []string, redirs []redir) {
	for k := 0; k < len(words); k++ {
		if w := words[k]; w == ">" || w == "<" {
			if k+1 < len(words) {
				redirs = append(redirs, redir{w, words[k+1]})
				k++
			}
			continue
		}
		argv = append(argv, words[k])
	}
	return argv, redirs
}

var assignment = regexp.MustCompile(`^[A-Za-z_]\w*=`)

// stripPrefixes removes what runs the real command: assignments, sudo, env,
// nohup, time, xargs, timeout, shell keywords and the like.
func stripPrefixes(argv []string) []string {
	for len(argv) > 0 {
		w := argv[0]
		if assignment.MatchString(w) {
			argv = argv[1:]
			continue
		}
		var valued string // flags of the prefix that take a separate value
		switch cmdName(w) {
		case "sudo", "doas":
			valued = "-u -g -C -D -h -p -r -t -U"
		case "env":
			valued = "-u -C -S"
		case "xargs":
			valued = "-n -I -P -L -d -s -E -a"
		case "nice", "ionice":
			valued = "-n -c -p"
		case "timeout":
			valued = "-s -k"
		case "stdbuf", "nohup", "time", "command", "exec", "builtin", "then", "do", "else",
			"elif", "if", "while", "until", "!", "{", "busybox", "unbuffer", "setsid", "chronic":
		default:
			return argv
		}
		argv = argv[1:]
		for len(argv) > 0 && strings.HasPrefix(argv[0], "-") && argv[0] != "-" {
			if strings.Contains(" "+valued+" ", " "+argv[0]+" ") && len(argv) > 1 {
				argv = argv[1:]
			}
			argv = argv[1:]
		}
		for len(argv) > 0 && (assignment.MatchString(argv[0]) && cmdName(w) == "env") {
			argv = argv[1:]
		}
		if cmdName(w) == "timeout" && len(argv) > 0 {
			argv = argv[1:] // the duration
		}
	}
	return argv
}

// cmdName is the command name of a word: path and leading backslash removed.
func cmdName(w string) string {
	return path.Base(strings.TrimPrefix(w, "\\"))
}

var shells = map[string]bool{"sh": true, "bash": true, "zsh": true, "dash": true, "ksh": true, "mksh": true, "ash": true, "fish": true}

var interpreters = map[string]string{
	"python": codeblock.Python, "python3": codeblock.Python, "node": codeblock.JavaScript,
	"nodejs": codeblock.JavaScript, "perl": "", "ruby": "",
}

// interpreterLang returns what language an interpreter command runs, and
// whether name is a shell or interpreter at all.
func interpreterLang(name string) (lang string, ok bool) {
	if shells[name] {
		return codeblock.Bash, true
	}
	if strings.HasPrefix(name, "python3.") {
		return codeblock.Python, true
	}
	lang, ok = interpreters[name]
	return lang, ok
}

// readsStdin reports whether a shell or interpreter invoked with args runs
// the program it reads on standard input (no script file, no -c).
func readsStdin(args []string) bool {
	for _, a := range args {
		switch {
		case a == "-" || a == "-s":
			return true
		case a == "-c" || a == "-e" || a == "-m" || a == "--eval" || a == "-p" || a == "--print":
			return false
		case strings.HasPrefix(a, "-"):
			if len(a) > 1 && a[1] != '-' && strings.ContainsAny(a[1:], "ce") {
				return false // -lc, -ec, -xe...
			}
		default:
			return false // a script file
		}
	}
	return true
}

// inlineProgram returns the program text given with -c / -e style flags.
func inlineProgram(name string, args []string) (string, bool) {
	for k, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			return "", false
		}
		switch {
		case shells[name] && len(a) > 1 && a[1] != '-' && strings.Contains(a, "c"):
		case (name == "node" || name == "nodejs") && (a == "-e" || a == "--eval" || a == "-p" || a == "--print"):
		case name != "node" && name != "nodejs" && !shells[name] && (a == "-c" || a == "-e" || a == "-E"):
		default:
			continue
		}
		if k+1 < len(args) {
			return args[k+1], true
		}
		return "", false
	}
	return "", false
}

// pipe describes the next stage of a pipeline when it runs what it reads
// as a program: lang is its language, or "" for perl and ruby.
type pipe struct {
	lang string
	argv []string
}

// stdinProgram reports whether the command words, prefixes included, run
// the program they read on standard input, and in which language.
func stdinProgram(words []string) (pipe, bool) {
	argv := stripPrefixes(words)
	if len(argv) == 0 || !readsStdin(argv[1:]) {
		return pipe{}, false
	}
	lang, ok := interpreterLang(cmdName(argv[0]))
	return pipe{lang, argv}, ok
}

// A call is one simple command as the rules see it, whichever reader (the
// parser or the fallback lexer) found it.
type call struct {
	argv   []string // words after quote removal, prefixes such as sudo included
	redirs []redir
	stdin  string // program text on standard input: a heredoc or here-string body
	pipeTo *pipe  // the next pipeline stage, when it runs what it reads
}

// command checks one simple command.
func (a *analyzer) command(c call) {
	for _, r := range c.redirs {
		text := strings.TrimSpace(strings.Join(c.argv, " ") + " " + r.op + " " + r.target)
		switch {
		case r.op == ">" && isBlockDevice(r.target):
			a.add(RuleOverwriteDevice, text)
		case r.op == ">" && path.Clean(r.target) == "/proc/sysrq-trigger":
			a.add(RuleReboot, text)
		}
	}
	argv := stripPrefixes(c.argv)
	if len(argv) == 0 {
		return
	}
	name, args := cmdName(argv[0]), argv[1:]
	text := strings.Join(argv, " ")
	a.files(name, args, text)
	a.machine(name, args, text)
	a.programs(name, args, text, c)
	a.scriptFiles(argv, c)
}

// scriptFiles remembers a here-document written to a file by cat or tee
// and checks it when a later command runs that file: sh job.sh,
// python3 job.py, source job.sh, ./job.sh.
func (a *analyzer) scriptFiles(argv []string, c call) {
	name, args := cmdName(argv[0]), argv[1:]
	if c.stdin != "" && (name == "cat" || name == "tee") {
		targets := slices.Clone(args)
		for _, r := range c.redirs {
			targets = append(targets, r.target)
		}
		for _, t := range targets {
			if !strings.HasPrefix(t, "-") {
				if a.scripts == nil {
					a.scripts = map[string]string{}
				}
				a.scripts[path.Clean(t)] = c.stdin
			}
		}
		return
	}
	lang, file := "", ""
	if l, ok := interpreterLang(name); ok || name == "source" || name == "." {
		lang = cmp.Or(l, codeblock.Bash)
		if k := slices.IndexFunc(args, func(s string) bool { return !strings.HasPrefix(s, "-") }); k >= 0 {
			file = args[k]
		}
		if _, inline := inlineProgram(name, args); inline || (l == "" && ok) {
			return // python -c, or perl and ruby, which are not checked
		}
	} else if strings.Contains(argv[0], "/") {
		file, lang = argv[0], codeblock.Bash
	}
	body, ok := a.scripts[path.Clean(file)]
	if !ok || file == "" {
		return
	}
	if first, _, _ := strings.Cut(body, "\n"); strings.HasPrefix(first, "#!") {
		for interp, l := range map[string]string{"python": codeblock.Python, "node": codeblock.JavaScript} {
			if strings.Contains(first, interp) {
				lang = l
			}
		}
	}
	a.code(lang, body)
}

// files applies the rules about deleting, formatting and overwriting.
func (a *analyzer) files(name string, args []string, text string) {
	switch {
	case name == "rm":
		a.rm(text, args)
	case name == "find":
		a.find(text, args)
	case name == "chmod" || name == "chown" || name == "chgrp":
		a.chmod(text, args)
	case name == "mkfs" || strings.HasPrefix(name, "mkfs.") || name == "mke2fs" || name == "mkswap" ||
		name == "mkdosfs" || name == "mkntfs" || name == "mkexfatfs":
		for _, arg := range args {
			if strings.HasPrefix(arg, "/dev/") && !harmlessDevice(arg) {
				a.add(RuleMkfs, text)
			}
		}
	case name == "dd":
		for _, arg := range args {
			if of, ok := strings.CutPrefix(arg, "of="); ok && strings.HasPrefix(path.Clean(of), "/dev/") && !harmlessDevice(path.Clean(of)) {
				a.add(RuleDDDevice, text)
			}
		}
	case name == "wipefs" || name == "shred" || name == "blkdiscard" || name == "tee":
		for _, arg := range args {
			if isBlockDevice(arg) {
				a.add(RuleOverwriteDevice, text)
			}
		}
	case name == "cp" || name == "mv" || name == "install":
		if len(args) > 1 && isBlockDevice(args[len(args)-1]) {
			a.add(RuleOverwriteDevice, text)
		}
	}
}

// machine applies the rules about powering off, rebooting and killing all.
func (a *analyzer) machine(name string, args []string, text string) {
	switch name {
	case "shutdown", "poweroff", "halt":
		a.add(RuleShutdown, text)
	case "reboot":
		a.add(RuleReboot, text)
	case "init", "telinit":
		if len(args) > 0 && args[0] == "0" {
			a.add(RuleShutdown, text)
		} else if len(args) > 0 && args[0] == "6" {
			a.add(RuleReboot, text)
		}
	case "systemctl":
		for _, arg := range args {
			switch arg {
			case "poweroff", "halt":
				a.add(RuleShutdown, text)
			case "reboot", "kexec", "soft-reboot":
				a.add(RuleReboot, text)
			}
		}
	case "kill":
		a.kill(text, args)
	}
}

// programs follows code a command runs: eval, sh -c, python -c, node -e,
// heredocs and pipes into interpreters, and downloads piped into them.
func (a *analyzer) programs(name string, args []string, text string, c call) {
	if c.stdin != "" {
		if lang, ok := interpreterLang(name); ok && lang != "" && readsStdin(args) {
			a.code(lang, c.stdin)
		} else if c.pipeTo != nil && c.pipeTo.lang != "" {
			a.code(c.pipeTo.lang, c.stdin)
		}
	}
	switch name {
	case "eval":
		script := strings.Join(args, " ")
		if subFetch.MatchString(script) {
			a.add(RulePipeToShell, text)
		}
		a.shell(script)
	case "curl", "wget", "fetch":
		if c.pipeTo != nil {
			a.add(RulePipeToShell, text+" | "+strings.Join(c.pipeTo.argv, " "))
		}
	case "trap": // the handler runs on a signal or at exit
		if len(args) > 1 && args[0] != "-" && !strings.HasPrefix(args[0], "-") {
			a.shell(args[0])
		}
	case "su", "runuser": // su -c 'command' [user]
		for k, arg := range args[:max(0, len(args)-1)] {
			if arg == "-c" || arg == "--command" {
				a.shell(args[k+1])
			}
		}
	case "echo", "printf":
		// Data, unless a shell or interpreter runs it.
		if c.pipeTo != nil && c.pipeTo.lang != "" {
			a.code(c.pipeTo.lang, strings.Join(args, " "))
		}
	}
	if lang, ok := interpreterLang(name); ok {
		if prog, ok := inlineProgram(name, args); ok {
			if lang == codeblock.Bash && subFetch.MatchString(prog) {
				a.add(RulePipeToShell, text)
			}
			if lang != "" {
				a.code(lang, prog)
			} else if forkWhile.MatchString(prog) {
				a.add(RuleForkBomb, text)
			}
		}
	}
}

// setVar records a shell variable assigned a value known before the
// script runs; value "" with known false forgets it.
func (a *analyzer) setVar(name, value string, known bool) {
	if a.vars == nil {
		a.vars = map[string]string{}
	}
	if !known {
		delete(a.vars, name)
		return
	}
	a.vars[name] = value
}

// expand substitutes variables recorded by assign in a word; others, such
// as $HOME, are kept as written.
func (a *analyzer) expand(w string) string {
	if len(a.vars) == 0 || !strings.Contains(w, "$") {
		return w
	}
	return os.Expand(w, func(name string) string {
		if v, ok := a.vars[name]; ok {
			return v
		}
		if strings.ContainsAny(name, ":-=?+#%/") { // ${x:-y} and friends
			return "${" + name + "}"
		}
		return "$" + name
	})
}

func (a *analyzer) dangerous(word string) bool {
	return dangerousPath(a.expand(word))
}

func (a *analyzer) rm(text string, args []string) {
	recursive, noPreserve, dangerous := false, false, false
	opts := true
	for _, arg := range args {
		switch {
		case opts && arg == "--":
			opts = false
		case opts && strings.HasPrefix(arg, "--"):
			recursive = recursive || arg == "--recursive"
			noPreserve = noPreserve || arg == "--no-preserve-root"
		case opts && strings.HasPrefix(arg, "-") && len(arg) > 1:
			recursive = recursive || strings.ContainsAny(arg[1:], "rR")
		default:
			dangerous = dangerous || a.dangerous(arg)
		}
	}
	if recursive && (dangerous || noPreserve) {
		a.add(RuleDestroyRoot, text)
	}
}

// findFilters are find predicates that select some files rather than all.
var findFilters = map[string]bool{
	"-name": true, "-iname": true, "-path": true, "-ipath": true, "-wholename": true,
	"-regex": true, "-iregex": true, "-newer": true, "-mtime": true, "-mmin": true,
	"-atime": true, "-amin": true, "-ctime": true, "-cmin": true, "-size": true,
	"-user": true, "-group": true, "-perm": true, "-empty": true, "-inum": true,
	"-links": true, "-lname": true, "-samefile": true, "-uid": true, "-gid": true,
}

func (a *analyzer) find(text string, args []string) {
	dangerous, deletes, filtered := false, false, false
	starting := true
	for k, arg := range args {
		if starting && (strings.HasPrefix(arg, "-") || arg == "(" || arg == "!") {
			starting = false
		}
		if starting {
			dangerous = dangerous || a.dangerous(arg)
			continue
		}
		switch {
		case arg == "-delete":
			deletes = true
		case (arg == "-exec" || arg == "-execdir" || arg == "-ok") && k+1 < len(args) && cmdName(args[k+1]) == "rm":
			deletes = true
		case findFilters[arg]:
			filtered = true
		}
	}
	if dangerous && deletes && !filtered {
		a.add(RuleDestroyRoot, text)
	}
}

func (a *analyzer) chmod(text string, args []string) {
	recursive, dangerous := false, false
	operand := 0 // the mode or owner comes first
	opts := true
	for _, arg := range args {
		switch {
		case opts && arg == "--":
			opts = false
		case opts && strings.HasPrefix(arg, "--"):
			recursive = recursive || arg == "--recursive"
		case opts && strings.HasPrefix(arg, "-") && len(arg) > 1 && strings.Trim(arg[1:], "RfvchHLP") == "":
			recursive = recursive || strings.Contains(arg, "R")
		default:
			if operand > 0 {
				dangerous = dangerous || a.dangerous(arg)
			}
			operand++
		}
	}
	if recursive && dangerous {
		a.add(RuleChmodRoot, text)
	}
}

func (a *analyzer) kill(text string, args []string) {
	k := 0
	if k < len(args) && (args[k] == "-s" || args[k] == "-n") {
		k += 2
	} else if k < len(args) && strings.HasPrefix(args[k], "-") && args[k] != "--" {
		if args[k] == "-l" || args[k] == "-L" {
			return
		}
		k++ // the signal
	}
	for ; k < len(args); k++ {
		switch args[k] {
		case "--":
		case "-1", "1":
			a.add(RuleKillAll, text)
		}
	}
}
