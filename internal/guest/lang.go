package guest

import (
	"path/filepath"
	"strconv"
	"strings"
)

// language says how one language is compiled (optionally) and run. All paths are
// inside the run's directory; the program itself runs in the request's working dir.
type language struct {
	name string
	file string // the source file written into the run dir
	tool string // the executable that must be on PATH for the language to be offered

	// compile returns the compiler's argv, or nil for interpreted languages. The
	// compiler runs in the run dir without the run's memory watch (see memwatch.go):
	// its use is bounded by the sandbox's memory.
	compile func(dir string) []string
	// run returns the program's argv; memoryBytes is the run's memory limit.
	run func(dir string, memoryBytes int64) []string
	// env returns extra environment for both phases and runEnv for the run phase
	// only (the request's env overrides both).
	env    func(home string) []string
	runEnv func(memoryBytes int64) []string
}

var languages = []*language{
	{
		name: "python", file: "main.py", tool: "python3",
		run: func(dir string, _ int64) []string {
			return []string{"python3", "-u", filepath.Join(dir, "main.py")}
		},
	},
	{
		// node's own heap cap gives the clean "JavaScript heap out of memory"; the
		// memory watch also bounds Buffers and other memory outside the JS heap.
		name: "javascript", file: "main.js", tool: "node",
		run: func(dir string, mem int64) []string {
			return []string{"node", "--max-old-space-size=" + strconv.FormatInt(max(mem>>20, 16), 10), filepath.Join(dir, "main.js")}
		},
	},
	{
		name: "bash", file: "main.sh", tool: "bash",
		run: func(dir string, _ int64) []string {
			return []string{"bash", filepath.Join(dir, "main.sh")}
		},
	},
	{
		name: "rust", file: "main.rs", tool: "rustc",
		compile: func(dir string) []string {
			return []string{"rustc", "-o", filepath.Join(dir, "main"), filepath.Join(dir, "main.rs")}
		},
		run: func(dir string, _ int64) []string { return []string{filepath.Join(dir, "main")} },
	},
	{
		// GOMEMLIMIT makes the Go GC keep the heap under the limit; a real memory
		// bomb passes it and the memory watch kills it.
		name: "go", file: "main.go", tool: "go",
		compile: func(dir string) []string {
			return []string{"go", "build", "-o", filepath.Join(dir, "main"), filepath.Join(dir, "main.go")}
		},
		run: func(dir string, _ int64) []string { return []string{filepath.Join(dir, "main")} },
		env: func(home string) []string {
			return []string{
				"GOCACHE=" + filepath.Join(home, ".cache", "go-build"),
				"GOPATH=" + filepath.Join(home, "go"),
				"GO111MODULE=off", // one file, standard library only, no network
				"GOFLAGS=-buildvcs=false",
				"GOTOOLCHAIN=local", // never try to download a toolchain
			}
		},
		runEnv: func(mem int64) []string { return []string{"GOMEMLIMIT=" + strconv.FormatInt(mem, 10)} },
	},
}

// aliases maps other common names to the canonical language names above.
var aliases = map[string]string{
	"py": "python", "python3": "python",
	"js": "javascript", "node": "javascript", "nodejs": "javascript",
	"sh": "bash", "shell": "bash",
	"rs":     "rust",
	"golang": "go",
}

// lookupLanguage returns the language named name (case-insensitive, aliases allowed).
func lookupLanguage(name string) *language {
	name = strings.ToLower(strings.TrimSpace(name))
	if a, ok := aliases[name]; ok {
		name = a
	}
	for _, l := range languages {
		if l.name == name {
			return l
		}
	}
	return nil
}

// availableLanguages lists the languages whose toolchain is on path.
func availableLanguages(path string) []string {
	var out []string
	for _, l := range languages {
		if _, _, err := findExecutable(l.tool, path); err == nil {
			out = append(out, l.name)
		}
	}
	return out
}
