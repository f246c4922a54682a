package codeblock

import (
	"regexp"
	"strings"
)

// The five supported languages, in canonical form.
const (
	Python     = "python"
	JavaScript = "javascript"
	Bash       = "bash"
	Rust       = "rust"
	Go         = "go"
)

var aliases = map[string]string{
	"py": Python, "python": Python, "python3": Python,
	"js": JavaScript, "javascript": JavaScript, "node": JavaScript,
	"nodejs": JavaScript, "mjs": JavaScript,
	"sh": Bash, "shell": Bash, "bash": Bash, "zsh": Bash,
	"rs": Rust, "rust": Rust,
	"go": Go, "golang": Go,
}

// Canonical maps a language name or alias to its canonical form,
// case-insensitively. Decorations models add around the name are tolerated:
// "{.python}", "{python}", "python:main.py" and "python,linenos" all give
// python. For an unknown name it returns the trimmed, lower-cased input and
// known=false.
func Canonical(lang string) (canonical string, known bool) {
	l := strings.ToLower(strings.TrimSpace(lang))
	if c, ok := aliases[l]; ok {
		return c, true
	}
	core := strings.TrimLeft(l, "{.")
	if i := strings.IndexAny(core, ":,{}"); i >= 0 {
		core = core[:i]
	}
	if c, ok := aliases[core]; ok {
		return c, true
	}
	return l, false
}

// A cue is evidence for a language found in one line of code.
type cue struct {
	lang   string
	weight int
	re     *regexp.Regexp
}

// cues are matched against each trimmed line. Weights are tuned so that a
// single strong marker (console.log, println!, package main) decides, and a
// weak one (a "$VAR") does not.
var cues = []cue{
	{Python, 3, regexp.MustCompile(`^(async\s+)?def\s+\w+\s*\(.*\)\s*(->.*)?:$`)},
	{Python, 3, regexp.MustCompile(`^from\s+[\w.]+\s+import\s+`)},
	{Python, 2, regexp.MustCompile(`^import\s+[\w.]+(\s+as\s+\w+)?(\s*,\s*[\w.]+)*$`)},
	{Python, 2, regexp.MustCompile(`(^|[^\w.])print\(`)},
	{Python, 4, regexp.MustCompile(`^if\s+__name__\s*==`)},
	{Python, 2, regexp.MustCompile(`^(elif\s.*|else|try|finally|except.*|(if|for|while|with|class)\s.*):$`)},
	{Python, 1, regexp.MustCompile(`\bself\.|\bNone\b|\bTrue\b|\bFalse\b`)},
	{JavaScript, 4, regexp.MustCompile(`\bconsole\.(log|error|warn|info)\(`)},
	{JavaScript, 3, regexp.MustCompile(`\brequire\(\s*['"]|\bmodule\.exports\b|^export\s+(default|const|function)\b`)},
	{JavaScript, 3, regexp.MustCompile(`^import\s+.*\bfrom\s+['"]`)},
	{JavaScript, 3, regexp.MustCompile(`^(async\s+)?function\b`)},
	{JavaScript, 2, regexp.MustCompile(`^(const|var)\s+[\w{\[]`)},
	{JavaScript, 1, regexp.MustCompile(`^let\s+[\w{\[]`)},
	{JavaScript, 2, regexp.MustCompile(`=>|===|!==|\bprocess\.(argv|env|exit)\b|\bdocument\.`)},
	{Go, 5, regexp.MustCompile(`^package\s+\w+$`)},
	{Go, 3, regexp.MustCompile(`^func\s+(\(\w+\s+\*?\w+\)\s*)?\w+\(`)},
	{Go, 3, regexp.MustCompile(`\bfmt\.\w+\(|^import\s+(\(|")`)},
	{Go, 1, regexp.MustCompile(`\w\s*:=\s*`)},
	{Rust, 5, regexp.MustCompile(`^(pub\s+)?fn\s+main\s*\(`)},
	{Rust, 3, regexp.MustCompile(`^(pub(\([\w:]+\))?\s+)?(async\s+)?fn\s+\w+`)},
	{Rust, 4, regexp.MustCompile(`\b(println|eprintln|format|vec|panic|assert_eq)!\s*[(\[]`)},
	{Rust, 3, regexp.MustCompile(`^use\s+(std|crate|super)::|\blet\s+mut\s+|^impl\b|^#\[derive`)},
	{Rust, 1, regexp.MustCompile(`::\w|&str\b|\bSome\(|\bOk\(`)},
	{Bash, 3, regexp.MustCompile(`^echo(\s|$)|^(if|while)\s+\[|^(fi|done|esac|then|do)$|^set\s+-[euxo]`)},
	{Bash, 2, regexp.MustCompile(`^(sudo\s+)?(ls|cd|mkdir|rm|cp|mv|cat|grep|curl|wget|apt|apt-get|pip|pip3|npm|npx|yarn|export|chmod|touch|git|tar|make|cargo|docker|uname|pwd|whoami|which|head|tail|find|sed|awk)(\s|$)`)},
	{Bash, 1, regexp.MustCompile(`\$[A-Za-z_]\w*|\$\{\w+\}|\s\|\s*(grep|head|tail|sort|wc|awk|sed)\b`)},
}

var shebang = []struct {
	needle, lang string
}{
	{"python", Python}, {"node", JavaScript}, {"deno", JavaScript}, {"bun", JavaScript},
	{"bash", Bash}, {"zsh", Bash}, {"/sh", Bash}, {" sh", Bash},
	{"rust-script", Rust}, {"cargo", Rust}, {"go run", Go}, {"gorun", Go},
}

// Detect guesses which of the five supported languages code is written in.
// It looks at a shebang line first, then scores every line against
// language markers (def/import/print( for Python, console.log/const/=> for
// JavaScript, echo/$VAR/common commands for Bash, fn main/println! for
// Rust, package main/func/fmt. for Go). It reports ok=false when the code is
// empty or no language clearly wins.
func Detect(code string) (lang string, ok bool) {
	s := strings.TrimSpace(code)
	if s == "" {
		return "", false
	}
	if strings.HasPrefix(s, "#!") {
		first, _, _ := strings.Cut(s, "\n")
		for _, sb := range shebang {
			if strings.Contains(first, sb.needle) {
				return sb.lang, true
			}
		}
	}
	scores := map[string]int{}
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "//") || strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "#[") {
			continue
		}
		line = strings.TrimSuffix(line, ";")
		for _, c := range cues {
			if c.re.MatchString(line) {
				scores[c.lang] += c.weight
			}
		}
	}
	best, second := "", 0
	for _, l := range []string{Python, JavaScript, Bash, Rust, Go} {
		switch v := scores[l]; {
		case best == "" || v > scores[best]:
			second = scores[best]
			best = l
		case v > second:
			second = v
		}
	}
	if scores[best] < 2 || scores[best] <= second {
		return "", false
	}
	return best, true
}
