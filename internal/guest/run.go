package guest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Default per-run limits, used for each zero field of a request's Limits.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultMaxOutputBytes = 1 << 20
	DefaultMaxFileBytes   = 1 << 30
	DefaultMaxProcs       = 256
	DefaultMemoryBytes    = 512 << 20
)

// agent serves requests (see Serve).
type agent struct {
	opts      Options
	log       *slog.Logger
	reaper    *reaper
	bombs     *bombWatch
	zygotes   zygotePool    // the python fast path (see zygote.go)
	setuid    bool          // drop to opts.RunUser in the launcher
	runSeq    atomic.Uint64 // run directory numbering
	execs     chan struct{} // one run at a time: a token
	out       *sender       // frames to the host
	ops       opTable       // the operations in flight
	watch     *changeWatch  // change sets' baseline and inotify watches (runs only; see watch.go)
	watchMiss watchMiss     // the areas watch could not serve (runs only)
	contexts  ctxTable      // the interpreter contexts (see contexts.go)
}

// exec runs one request; its output goes to emit as it is read. It fails only for a
// request it refuses (an error wrapping agentproto.ErrInvalidRequest); problems of the
// run itself are reported in the result. handle (may be nil) is given the running
// process group.
func (a *agent) exec(ctx context.Context, req *agentproto.ExecRequest, emit func(stream string, p []byte), handle *runHandle) (res *agentproto.ExecResult, err error) {
	start := time.Now()
	tr := newRunTrace(req.Trace, start)
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("exec panicked", "panic", p)
			res, err = startFailure(fmt.Errorf("internal error: %v", p)), nil
		}
		if res != nil {
			res.DurationMS = time.Since(start).Milliseconds()
			tr.mark("end")
			res.Trace = tr.points()
			if tr != nil {
				res.TraceStartUS = start.UnixMicro()
			}
		}
	}()

	lim := withDefaults(req.Limits)
	deadline := start.Add(time.Duration(lim.TimeoutMS) * time.Millisecond)
	lang := lookupLanguage(req.Language)
	if lang == nil {
		return startFailure(fmt.Errorf("unknown language %q (supported: python, javascript, bash, rust, go)", req.Language)), nil
	}
	env, err := a.runEnv(lang, lim, req.Env)
	if err != nil {
		return nil, err
	}
	workDir, err := a.workDir(req.WorkDir)
	if err != nil {
		return nil, err
	}
	tool, toolInfo, err := findExecutable(lang.tool, envValue(env.run, "PATH"))
	if err != nil {
		return startFailure(fmt.Errorf("%s toolchain not available: %w", lang.name, err)), nil
	}
	tr.mark("request checked")
	runDir, err := a.makeRunDir(lang.file, req.Code)
	if err != nil {
		return startFailure(err), nil
	}
	tr.mark("run dir made")
	changes := a.trackChanges(req, workDir) // see changes.go
	tr.mark("change baseline")
	defer func() {
		quiet := changes != nil && a.quiet() // first: once nothing else runs, nothing else writes
		tr.mark("quiet checked")
		changes.finish(res)
		tr.mark("change set read")
		a.markSettled(changes, quiet, res)
		tr.mark("settled checked")
	}()
	defer func() {
		if err := os.RemoveAll(runDir); err != nil {
			a.log.Warn("cannot remove run dir", "dir", runDir, "err", err)
		}
		tr.mark("run dir removed")
	}()

	base := launchSpec{
		Setuid:   a.setuid,
		UID:      a.opts.RunUser.UID,
		GID:      a.opts.RunUser.GID,
		FileSize: lim.MaxFileBytes,
		NProc:    lim.MaxProcs,
	}
	if lang.compile != nil {
		spec := base
		spec.Argv, spec.Dir = lang.compile(runDir), runDir
		pr, err := a.runProc(ctx, &proc{spec: spec, env: env.compile, outMax: lim.MaxOutputBytes, handle: handle}, deadline)
		if err != nil {
			return startFailure(err), nil
		}
		if r := resultOf(pr); r.Verdict != agentproto.VerdictOK {
			// A compile error: the compiler's output is the run's.
			emitAll(emit, agentproto.StreamStdout, pr.stdout)
			emitAll(emit, agentproto.StreamStderr, pr.stderr)
			if pr.contained {
				emit(agentproto.StreamStderr, []byte(containedNote))
			}
			return r, nil
		}
		// The compiler's output (warnings) is dropped when it succeeds.
	}
	spec := base
	spec.Argv, spec.Dir = lang.run(runDir, lim.MemoryBytes), workDir
	p := &proc{spec: spec, env: env.run, stdin: req.Stdin, outMax: lim.MaxOutputBytes, memory: lim.MemoryBytes, emit: emit, handle: handle, trace: tr}
	if lang.name == "python" && !strings.ContainsRune(req.Code, 0) { // python3 reads NULs its own way
		p.interpreter, p.interpreterInfo = tool, toolInfo
	}
	pr, err := a.runProc(ctx, p, deadline)
	if err != nil {
		return startFailure(err), nil
	}
	tr.mark("run ended")
	if pr.memoryLimit {
		emit(agentproto.StreamStderr, []byte(memoryNote(pr)))
	}
	if pr.contained {
		emit(agentproto.StreamStderr, []byte(containedNote))
	}
	return resultOf(pr), nil
}

// emitAll emits p in chunks of at most agentproto.ChunkSize.
func emitAll(emit func(string, []byte), stream string, p []byte) {
	for len(p) > 0 {
		n := min(len(p), agentproto.ChunkSize)
		emit(stream, p[:n])
		p = p[n:]
	}
}

// withDefaults fills zero (or negative) limits with the defaults.
func withDefaults(l agentproto.Limits) agentproto.Limits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.TimeoutMS, DefaultTimeout.Milliseconds())
	def(&l.MaxOutputBytes, DefaultMaxOutputBytes)
	def(&l.MaxFileBytes, DefaultMaxFileBytes)
	def(&l.MaxProcs, DefaultMaxProcs)
	def(&l.MemoryBytes, DefaultMemoryBytes)
	return l
}

// startFailure is the result of a run that could not start.
func startFailure(err error) *agentproto.ExecResult {
	return &agentproto.ExecResult{
		ExitCode: -1,
		Verdict:  agentproto.VerdictKilled,
		Error:    strings.TrimPrefix(err.Error(), errStart.Error()+": "),
	}
}

// invalid marks a request the guest refuses.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), agentproto.ErrInvalidRequest)
}

type runEnv struct{ compile, run []string }

// runEnv builds the environment of a run's two phases: the fixed base, the language's
// additions, then the request's variables, which override everything.
func (a *agent) runEnv(lang *language, lim agentproto.Limits, extra map[string]string) (runEnv, error) {
	base := map[string]string{
		"PATH": a.opts.Path,
		"HOME": a.opts.Home,
		"USER": a.opts.RunUser.Name,
		"LANG": "C.UTF-8",
	}
	add := func(m map[string]string, kvs []string) {
		for _, kv := range kvs {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
	}
	if lang.env != nil {
		add(base, lang.env(a.opts.Home))
	}
	if err := checkEnv(extra); err != nil {
		return runEnv{}, err
	}
	run := make(map[string]string, len(base)+len(extra))
	for k, v := range base {
		run[k] = v
	}
	if lang.runEnv != nil {
		add(run, lang.runEnv(lim.MemoryBytes))
	}
	for k, v := range extra {
		base[k] = v
		run[k] = v
	}
	return runEnv{compile: envList(base), run: envList(run)}, nil
}

// checkEnv refuses a request's environment variables that cannot be set.
func checkEnv(extra map[string]string) error {
	for k, v := range extra {
		switch {
		case k == "":
			return invalid("invalid environment variable name: empty")
		case strings.ContainsAny(k, "=\x00"):
			return invalid("invalid environment variable name %q: contains '=' or NUL", k)
		case strings.ContainsRune(v, 0):
			return invalid("invalid value of environment variable %q: contains NUL", k)
		case k == "PATH" && strings.TrimSpace(v) == "":
			return invalid("empty PATH")
		}
	}
	return nil
}

func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// findExecutable looks name up in path like exec.LookPath, but in the given PATH
// rather than the agent's own, and returns what stat said of it.
func findExecutable(name, path string) (string, os.FileInfo, error) {
	if strings.Contains(name, "/") {
		fi, err := statExecutable(name)
		return name, fi, err
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := statExecutable(p); err == nil {
			return p, fi, nil
		}
	}
	return "", nil, fmt.Errorf("%q not found in PATH %s", name, path)
}

// statExecutable stats p and checks that it is an executable file.
func statExecutable(p string) (os.FileInfo, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%s is not executable", p)
	}
	return fi, nil
}
