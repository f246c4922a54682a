package policy

import (
	"regexp"
	"strings"

	"github.com/vmexec/vmexec/internal/codeblock"
)

// A callRule matches a library call by name (in the bare text, so calls
// mentioned inside strings do not count) and judges its arguments (read
// from the code, literals intact).
type callRule struct {
	rule  string
	call  *regexp.Regexp // must end just after the opening parenthesis
	check func(args []string) (rule string, ok bool)
}

func firstArg(pred func(string) bool) func([]string) (string, bool) {
	return func(args []string) (string, bool) {
		return "", len(args) > 0 && pred(args[0])
	}
}

var callRules = map[string][]callRule{
	codeblock.Python: {
		{RuleDestroyRoot, regexp.MustCompile(`\b(?:shutil\.)?rmtree\s*\(`), firstArg(dangerousExpr)},
		{RuleOverwriteDevice, regexp.MustCompile(`(?:^|[^.\w]|\bio\.)open\s*\(`), func(args []string) (string, bool) {
			return "", len(args) > 1 && deviceExpr(args[0]) && strings.ContainsAny(literalValue(strings.TrimPrefix(args[1], "mode=")), "wa+")
		}},
		{RuleOverwriteDevice, regexp.MustCompile(`\bos\.open\s*\(`), openFlags},
		{RuleKillAll, regexp.MustCompile(`\bos\.kill(?:pg)?\s*\(`), firstArg(allPids)},
		{RuleReboot, regexp.MustCompile(`\blibc\.reboot\s*\(`), rebootKind},
	},
	codeblock.JavaScript: {
		{RuleDestroyRoot, regexp.MustCompile(`(?:\b(?:fs|fse|fsExtra|fsp|promises)\.|(?:^|[^.\w]))(?:rmSync|rmdirSync|rm|rmdir|removeSync|remove|emptyDirSync|emptyDir)\s*\(|\brimraf(?:\.sync|Sync|\.rimraf)?\s*\(`), firstArg(dangerousExpr)},
		{RuleOverwriteDevice, regexp.MustCompile(`\b(?:writeFileSync|writeFile|appendFileSync|appendFile|createWriteStream)\s*\(`), firstArg(deviceExpr)},
		{RuleOverwriteDevice, regexp.MustCompile(`\b(?:openSync|fs\.open|fsp\.open|promises\.open)\s*\(`), func(args []string) (string, bool) {
			return "", len(args) > 1 && deviceExpr(args[0]) && strings.ContainsAny(literalValue(args[1]), "wa+")
		}},
		{RuleKillAll, regexp.MustCompile(`\bprocess\.kill\s*\(`), firstArg(allPids)},
	},
	codeblock.Rust: {
		{RuleDestroyRoot, regexp.MustCompile(`\bremove_dir_all\s*\(`), firstArg(dangerousExpr)},
		{RuleOverwriteDevice, regexp.MustCompile(`\b(?:File::create|fs::write)\s*\(`), firstArg(deviceExpr)},
		{RuleKillAll, regexp.MustCompile(`\b(?:libc::kill|signal::kill|[^:\w]kill)\s*\(`), firstArg(allPids)},
		{RuleReboot, regexp.MustCompile(`\b(?:libc::reboot|reboot::reboot)\s*\(`), rebootKind},
	},
}

var writeFlags = regexp.MustCompile(`O_(?:WRONLY|RDWR)`)

func openFlags(args []string) (string, bool) {
	return "", len(args) > 1 && deviceExpr(args[0]) && writeFlags.MatchString(args[1])
}

func rebootKind(args []string) (string, bool) {
	if strings.Contains(strings.Join(args, ","), "POWER_OFF") || strings.Contains(strings.Join(args, ","), "HALT") {
		return RuleShutdown, true
	}
	return RuleReboot, true
}

var pidWrapper = regexp.MustCompile(`^(?:Pid::from_raw|nix::unistd::Pid::from_raw)\(\s*(.*?)\s*\)$`)

// allPids reports a pid argument of -1 (every process) or 1 (init).
func allPids(arg string) bool {
	arg = strings.TrimSpace(arg)
	if m := pidWrapper.FindStringSubmatch(arg); m != nil {
		arg = m[1]
	}
	return arg == "-1" || arg == "1"
}

// native applies the call rules, fork bomb loops and the sysrq check.
func (a *analyzer) native(lang string, src source) {
	for _, r := range callRules[lang] {
		for _, m := range r.call.FindAllStringIndex(src.bare, -1) {
			args, end := callArgs(src, m[1])
			rule, ok := r.check(args)
			if !ok {
				continue
			}
			if rule == "" {
				rule = r.rule
			}
			a.add(rule, src.code[m[0]:end])
		}
	}
	for _, l := range src.lits {
		if strings.TrimSpace(l.val) == "/proc/sysrq-trigger" {
			a.add(RuleReboot, src.code[l.start:l.end])
		}
	}
	a.forkLoops(lang, src)
}

// callArgs splits the argument list starting at open (just after "(") at
// top-level commas. It returns the arguments and the offset just after the
// closing parenthesis (or the end).
func callArgs(src source, open int) ([]string, int) {
	var args []string
	depth, start := 0, open
	for k := open; k < len(src.bare) && k < open+maxBody; k++ {
		switch src.bare[k] {
		case '(', '[', '{':
			depth++
		case ']', '}':
			depth--
		case ')':
			if depth == 0 {
				if s := strings.TrimSpace(src.code[start:k]); s != "" {
					args = append(args, s)
				}
				return args, k + 1
			}
			depth--
		case ',':
			if depth == 0 {
				args = append(args, strings.TrimSpace(src.code[start:k]))
				start = k + 1
			}
		}
	}
	return args, min(len(src.code), open+maxBody)
}

// literalValue returns the contents of a string literal expression (with
// Python/Rust prefixes), or "" when expr is not a plain literal.
func literalValue(expr string) string {
	v, _ := unquote(expr)
	return v
}

func unquote(expr string) (string, bool) {
	e := strings.TrimSpace(expr)
	e = strings.TrimLeft(e, "rRbBuUfF")
	hashes := len(e) - len(strings.TrimLeft(e, "#"))
	e = strings.TrimRight(e[hashes:], "#")
	if len(e) < 2 {
		return "", false
	}
	q := e[0]
	if (q != '"' && q != '\'' && q != '`') || e[len(e)-1] != q {
		return "", false
	}
	if len(e) >= 6 && strings.HasPrefix(e, strings.Repeat(string(q), 3)) && strings.HasSuffix(e, strings.Repeat(string(q), 3)) {
		return e[3 : len(e)-3], true
	}
	return e[1 : len(e)-1], true
}

var (
	homeExpr = regexp.MustCompile(`^(?:` +
		`os\.path\.expanduser\(\s*[rbuf]?["']~/?\*?["']\s*\)|(?:pathlib\.)?Path\.home\(\)|` +
		`os\.environ\[\s*["']HOME["']\s*\]|os\.(?:environ\.get|getenv)\(\s*["']HOME["']\s*\)|os\.(?:path\.)?sep|` +
		`(?:os|require\(\s*['"](?:node:)?os['"]\s*\))\.homedir\(\)|process\.env(?:\.HOME|\[\s*['"]HOME['"]\s*\])|` +
		`os\.Getenv\(\s*"HOME"\s*\)|(?:std::)?env::var\(\s*"HOME"\s*\)|(?:dirs::)?home_dir\(\)|` +
		`(?:std::)?env::home_dir\(\))$`)
	pathWrapper = regexp.MustCompile(`^(?:pathlib\.Path|Path|PurePath|PosixPath|(?:std::path::)?Path::new|PathBuf::from|` +
		`path\.(?:resolve|join|normalize)|filepath\.(?:Clean|Join)|os\.path\.(?:abspath|realpath|normpath|join)|String::from|str)` +
		`\(\s*(.*?)\s*\)$`)
	exprSuffix = regexp.MustCompile(`(?:\.(?:unwrap|to_string|to_owned|as_path|into)\(\)|\.expect\([^()]*\)|\?)+$`)
)

// dangerousExpr reports whether a path expression evaluates to a path
// dangerousPath rejects: a literal, the home directory from the
// environment or library, or one of those wrapped in Path(...) and the like.
func dangerousExpr(expr string) bool {
	e := strings.TrimSpace(expr)
	e = strings.TrimPrefix(e, "&")
	e = exprSuffix.ReplaceAllString(e, "")
	if v, ok := unquote(e); ok {
		return dangerousPath(v)
	}
	if homeExpr.MatchString(e) {
		return true
	}
	if m := pathWrapper.FindStringSubmatch(e); m != nil {
		return dangerousExpr(m[1])
	}
	return false
}

// deviceExpr reports a literal naming a disk or memory device.
func deviceExpr(expr string) bool {
	e := exprSuffix.ReplaceAllString(strings.TrimPrefix(strings.TrimSpace(expr), "&"), "")
	if m := pathWrapper.FindStringSubmatch(e); m != nil {
		e = m[1]
	}
	v, ok := unquote(e)
	return ok && isBlockDevice(v)
}

var (
	pyLoop     = regexp.MustCompile(`(?m)^([ \t]*)while\s+(?:True|1|not\s+False)\s*:(.*)$`)
	pyFork     = regexp.MustCompile(`\bfork\s*\(\s*\)`)
	pyStop     = regexp.MustCompile(`\b(?:break|return|_exit|exit|wait|waitpid|wait4|waitid)\b`)
	braceLoops = map[string]*regexp.Regexp{
		codeblock.JavaScript: regexp.MustCompile(`\bwhile\s*\(\s*(?:true|1|!0)\s*\)\s*\{|\bfor\s*\(\s*;\s*;\s*\)\s*\{`),
		codeblock.Rust:       regexp.MustCompile(`\bloop\s*\{|\bwhile\s+true\s*\{`),
	}
	loopSpawn = map[string]*regexp.Regexp{
		codeblock.JavaScript: regexp.MustCompile(`\b(?:fork|spawn|exec|execFile)\s*\(`),
		codeblock.Rust:       regexp.MustCompile(`\bfork\s*\(\s*\)|Command::new\(\s*(?:std::)?env::current_exe`),
	}
	loopStop = map[string]*regexp.Regexp{
		codeblock.JavaScript: regexp.MustCompile(`\b(?:break|return|await|process\.exit)\b`),
		codeblock.Rust:       regexp.MustCompile(`\b(?:break|return|wait|waitpid|exit|panic!)`),
	}
)

// forkLoops finds endless loops whose body starts processes and never
// waits for them or leaves the loop.
func (a *analyzer) forkLoops(lang string, src source) {
	if lang == codeblock.Python {
		if !pyFork.MatchString(src.bare) {
			return
		}
		for _, m := range pyLoop.FindAllStringSubmatchIndex(src.bare, -1) {
			indent := src.bare[m[2]:m[3]]
			body, found := src.bare[m[4]:m[5]], src.code[m[0]:m[1]]
			if strings.TrimSpace(body) == "" {
				body = indentedBlock(src.bare, m[1], len(indent))
				found += " " + indentedBlock(src.code, m[1], len(indent))
			}
			if pyFork.MatchString(body) && !pyStop.MatchString(body) {
				a.add(RuleForkBomb, found)
			}
		}
		return
	}
	loop := braceLoops[lang]
	if loop == nil || !loopSpawn[lang].MatchString(src.bare) {
		return
	}
	for _, m := range loop.FindAllStringIndex(src.bare, -1) {
		body := braceBody(src.bare, m[1]-1, maxLoopBody)
		if loopSpawn[lang].MatchString(body) && !loopStop[lang].MatchString(body) {
			a.add(RuleForkBomb, src.code[m[0]:m[1]]+src.code[m[1]:m[1]+len(body)]+"}")
		}
	}
}

// indentedBlock returns the lines after offset from that are indented more
// than indent columns (blank lines included), i.e. a Python block body.
func indentedBlock(s string, from, indent int) string {
	var b strings.Builder
	for line := range strings.Lines(s[min(from+1, len(s)):]) {
		t := strings.TrimLeft(line, " \t")
		if strings.TrimSpace(t) != "" && len(line)-len(t) <= indent || b.Len() > maxBody {
			break
		}
		b.WriteString(line)
	}
	return b.String()
}
