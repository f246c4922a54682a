package guest

import (
	"path/filepath"
	"strconv"
	"strings"
)

// Address space granted above the memory limit to runtimes that reserve far more than
// they use. Measured on this machine kind: a Go 1.19 or 1.26 binary reserves 650-700 MiB
// at start ("failed to reserve page summary memory" below that, whatever its heap);
// node 20's V8 needs about 800 MiB to reserve its code range (node 18: under 400 MiB);
// the go tool and its compiler run in 1 GiB.
const (
	runtimeHeadroom = 1 << 30
	goHeadroom      = 768 << 20
)

// language says how one language is compiled (optionally) and run. All paths are
// inside the run's directory; the program itself runs in the request's working dir.
type language struct {
	name string
	file string // the source file written into the run dir
	tool string // the executable that must be on PATH for the language to be offered

	// compile returns the compiler's argv, or nil for interpreted languages. The
	// compiler runs in the run dir without an address-space limit (compilers reserve
	// large address space and their real use is bounded by the sandbox).
	compile func(dir string) []string
	// run returns the program's argv.
	run func(dir string, memoryBytes int64) []string
	// asHeadroom is added to the memory limit to give the run's RLIMIT_AS.
	asHeadroom int64
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
		// address-space cap (with headroom for V8's reservations) also bounds
		// Buffers and other memory outside the JS heap.
		name: "javascript", file: "main.js", tool: "node",
		run: func(dir string, mem int64) []string {
			return []string{"node", "--max-old-space-size=" + strconv.FormatInt(max(mem>>20, 16), 10), filepath.Join(dir, "main.js")}
		},
		asHeadroom: runtimeHeadroom,
	},
	{
		// bash gets headroom so that scripts can still start node, Go programs and
		// the go tool, which cannot even start under a plain 512 MiB RLIMIT_AS.
		name: "bash", file: "main.sh", tool: "bash",
		run: func(dir string, _ int64) []string {
			return []string{"bash", filepath.Join(dir, "main.sh")}
		},
		asHeadroom: runtimeHeadroom,
	},
	{
		name: "rust", file: "main.rs", tool: "rustc",
		compile: func(dir string) []string {
			return []string{"rustc", "-o", filepath.Join(dir, "main"), filepath.Join(dir, "main.rs")}
		},
		run: func(dir string, _ int64) []string { return []string{filepath.Join(dir, "main")} },
	},
	{
		// A Go binary reserves ~700 MiB of address space it never touches, so its
		// RLIMIT_AS is memory+768 MiB; GOMEMLIMIT makes its GC keep the heap near
		// the limit, and a real memory bomb hits the hard cap soon after.
		name: "go", file: "main.go", tool: "go",
		compile: func(dir string) []string {
			return []string{"go", "build", "-o", filepath.Join(dir, "main"), filepath.Join(dir, "main.go")}
		},
		run:        func(dir string, _ int64) []string { return []string{filepath.Join(dir, "main")} },
		asHeadroom: goHeadroom,
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
