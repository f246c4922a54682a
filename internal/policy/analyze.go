package policy

import (
	"regexp"
	"strings"

	"github.com/vmexec/vmexec/internal/codeblock"
)

// maxDepth bounds how deeply programs embedded in programs (sh -c inside
// os.system inside exec(...)) are followed.
const maxDepth = 4

type finding struct {
	rule string
	text string // what matched, for the reason
}

// analyzer collects findings for one Check.
type analyzer struct {
	findings []finding
	depth    int
	// vars holds shell variables assigned to constants (x=/), so that
	// rm -rf $x is judged like rm -rf /.
	vars map[string]string
	// scripts holds the here-documents shell code wrote to files
	// (cat > job.sh <<EOF), by cleaned path, for when the file is run.
	scripts map[string]string
}

func (a *analyzer) add(rule, text string) {
	a.findings = append(a.findings, finding{rule, text})
}

func (a *analyzer) enter() bool {
	if a.depth >= maxDepth {
		return false
	}
	a.depth++
	return true
}

func (a *analyzer) leave() { a.depth-- }

// code checks a program in a canonical language.
func (a *analyzer) code(lang, code string) {
	if lang == codeblock.Bash {
		a.shell(code)
		return
	}
	if !a.enter() {
		return
	}
	defer a.leave()
	if lang == codeblock.Go {
		a.goProgram(code)
		return
	}
	src := scan(lang, code)
	a.native(lang, src)
	if processAPI[lang] != nil && processAPI[lang].MatchString(src.code) {
		a.literalCommands(src)
	}
	if evalAPI[lang] != nil && evalAPI[lang].MatchString(src.bare) {
		for _, l := range src.lits {
			a.code(lang, l.val)
		}
	}
}

// processAPI matches programs that can run shell commands. Only in those
// are string literals checked as commands.
var processAPI = map[string]*regexp.Regexp{
	codeblock.Python:     regexp.MustCompile(`\b(?:subprocess|os\.system|os\.popen|os\.exec[lv]p?e?|os\.spawn\w*|os\.posix_spawnp?|pty\.spawn|create_subprocess_(?:shell|exec)|commands\.getoutput|pexpect|plumbum)\b|\bfrom\s+os\s+import\s+[^\n]*\b(?:system|popen|exec\w*|spawn\w*)\b`),
	codeblock.JavaScript: regexp.MustCompile(`child_process|\bBun\.(?:spawn|spawnSync|\$)|\bDeno\.(?:run|Command)\b|\bexeca\b|\bshelljs\b|['"]zx(?:/globals)?['"]`),
	codeblock.Rust:       regexp.MustCompile(`\bprocess::Command\b|\bCommand::new\s*\(`),
}

// evalAPI matches programs that evaluate strings as code of their own
// language; their literals are checked as programs too. JavaScript's
// regex.exec(s) is a method call and does not match.
var evalAPI = map[string]*regexp.Regexp{
	codeblock.Python:     regexp.MustCompile(`(?:^|[^.\w])(?:exec|eval)\s*\(`),
	codeblock.JavaScript: regexp.MustCompile(`(?:^|[^.\w])eval\s*\(|\bnew\s+Function\s*\(|\bvm\.run\w*\s*\(`),
}

// execCall matches the end of text that starts an argument list of a
// process call: subprocess.run( , os.system( , spawn('x', [ ...
var execCall = regexp.MustCompile(`\b(?:system|popen|run|call|check_call|check_output|Popen|getoutput|getstatusoutput|exec\w*|spawn\w*|Command(?:Context)?|new|fork)\s*\(\s*\[?\s*(?:&\s*)?\[?\s*$`)

// joinSep matches what may stand between the literals of one argv:
// commas, brackets, and Rust's .arg( / .args([ chains.
var joinSep = regexp.MustCompile(`^(?:[\s,\[\]()&]|\.\s*args?\b|vec!)*$`)

// literalCommands checks the string literals of a program that runs
// processes: each literal holding a command line, the first literal of a
// process call, and each run of adjacent literals joined as one argv
// (["rm", "-rf", "/"]).
func (a *analyzer) literalCommands(src source) {
	lits := src.lits
	// runs[k] is the number of literals in the argv run starting at k;
	// argument[k] marks literals that are a later element of a run.
	runs := make([]int, len(lits))
	argument := make([]bool, len(lits))
	for k := 0; k < len(lits); {
		n := k + 1
		for n < len(lits) && joinSep.MatchString(src.bare[lits[n-1].end:lits[n].start]) {
			argument[n] = true
			n++
		}
		runs[k] = n - k
		k = n
	}
	for k, l := range lits {
		// A literal that is an argument of a longer argv, such as the
		// message in ["echo", "rm -rf /"], is data; its run is checked
		// as a whole below.
		if !argument[k] && (strings.ContainsAny(strings.TrimSpace(l.val), " \t\n") ||
			execCall.MatchString(src.bare[max(0, l.start-40):l.start])) {
			a.shell(l.val)
		}
		if runs[k] < 2 {
			continue
		}
		words := make([]string, 0, runs[k])
		for _, w := range lits[k : k+runs[k]] {
			words = append(words, shellQuote(w.val))
		}
		a.shell(strings.Join(words, " "))
	}
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
