package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

var extLanguage = map[string]string{
	".py": "python", ".js": "javascript", ".mjs": "javascript", ".sh": "bash", ".bash": "bash", ".rs": "rust", ".go": "go",
}

func newExecCmd(g *globals) *cobra.Command {
	var (
		agent, lang, code, sandboxID, stdin, workdir string
		timeout                                      time.Duration
		memoryMB                                     int64
		env                                          []string
		asJSON, noChanges                            bool
	)
	cmd := &cobra.Command{
		Use:   "exec [file]",
		Short: "Run code in an agent's sandbox and exit with its exit code",
		Long: `Run code in the agent's sandbox (created on first use, reused afterwards, so files
written by one run are there for the next).

The code comes from -c, from a file argument, or from standard input. The program's
stdout and stderr are printed as they were, and vmexec exits with the program's exit
code. Output is printed as the program writes it (stdout to stdout, stderr to stderr);
Ctrl-C cancels the run, which is then rolled back. A run that ends by a limit
(timeout, output, memory) says so on stderr, and so do the files the run created (+),
modified (~) and deleted (-), after it. --json waits for the run and prints the
whole result.`,
		Example: `  vmexec exec --agent demo --lang python -c 'print(2+2)'
  vmexec exec --agent demo hello.go
  vmexec exec --agent demo --lang bash --timeout 5s < script.sh
  vmexec exec --agent demo --lang python --json -c 'print(1)'   # the full result`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := readCode(code, args, cmd.InOrStdin())
			if err != nil {
				return err
			}
			if lang == "" && len(args) == 1 {
				lang = extLanguage[filepath.Ext(args[0])]
			}
			if lang == "" {
				return fmt.Errorf("say which language with --lang (python, javascript, bash, rust, go)")
			}
			req := api.ExecRequest{AgentID: agent, SandboxID: sandboxID, Language: lang, Code: src, Stdin: stdin, WorkDir: workdir,
				Limits: api.Limits{TimeoutMS: timeout.Milliseconds(), MemoryMB: memoryMB}}
			if noChanges {
				off := false
				req.Changes = &api.ChangesOptions{Enabled: &off}
			}
			if len(env) > 0 {
				req.Env = map[string]string{}
				for _, kv := range env {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("--env %q: want NAME=VALUE", kv)
					}
					req.Env[k] = v
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop() // Ctrl-C disconnects, which cancels the run (and rolls it back)
			var res *api.ExecResult
			if asJSON {
				if res, err = g.client().Exec(ctx, req); err != nil {
					return err
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(res)
			} else {
				res, err = g.client().ExecStream(ctx, req, client.Output{
					Stdout: func(s string) { io.WriteString(cmd.OutOrStdout(), s) },
					Stderr: func(s string) { io.WriteString(cmd.ErrOrStderr(), s) },
				})
				if err != nil {
					return err
				}
				explain(cmd.ErrOrStderr(), res)
			}
			if res.ExitCode == 0 && !res.Success() {
				return exitError{1}
			}
			if res.ExitCode != 0 {
				code := res.ExitCode
				if code < 0 || code > 255 {
					code = 1
				}
				return exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&agent, "agent", "a", "cli", "agent id: each agent has its own sandbox")
	f.StringVarP(&lang, "lang", "l", "", "language: python, javascript, bash, rust, go (default from the file's extension)")
	f.StringVarP(&code, "code", "c", "", "code to run")
	f.StringVar(&sandboxID, "sandbox", "", "run in this sandbox instead of the agent's own")
	f.StringVar(&stdin, "stdin", "", "text passed to the program's standard input")
	f.StringVar(&workdir, "workdir", "", "working directory in the sandbox (default /home/user)")
	f.DurationVar(&timeout, "timeout", 0, "wall-clock limit, compile included (default the server's, 30s)")
	f.Int64Var(&memoryMB, "memory-mb", 0, "memory of a new sandbox in MiB (default the server's, 512)")
	f.StringArrayVarP(&env, "env", "e", nil, "NAME=VALUE for the program's environment (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the whole result as JSON")
	f.BoolVar(&noChanges, "no-changes", false, "do not compute the run's change set (the files it created, modified, deleted)")
	return cmd
}

func readCode(code string, args []string, stdin io.Reader) (string, error) {
	switch {
	case code != "" && len(args) > 0:
		return "", fmt.Errorf("give the code with -c or as a file, not both")
	case code != "":
		return code, nil
	case len(args) == 1:
		b, err := os.ReadFile(args[0])
		return string(b), err
	}
	if f, ok := stdin.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return "", fmt.Errorf("no code: use -c CODE, a file argument, or pipe it on stdin")
		}
	}
	b, err := io.ReadAll(stdin)
	return string(b), err
}

// explain prints, on stderr, why a run ended when it was not simply its exit code.
func explain(w io.Writer, r *api.ExecResult) {
	switch r.Verdict {
	case api.VerdictTimeout:
		fmt.Fprintf(w, "vmexec: the run hit its time limit after %d ms and was killed\n", r.DurationMS)
	case api.VerdictOutputLimit:
		fmt.Fprintln(w, "vmexec: the run's output passed its limit; it was killed and its output truncated")
	case api.VerdictMemoryLimit:
		fmt.Fprintln(w, "vmexec: the run hit its memory limit")
	case api.VerdictKilled:
		fmt.Fprintf(w, "vmexec: the run was killed (%s)\n", firstNonEmpty(r.Signal, r.Error, "signal"))
	case api.VerdictCanceled:
		fmt.Fprintln(w, "vmexec: the run was canceled")
	}
	if r.StdoutTruncated || r.StderrTruncated {
		fmt.Fprintln(w, "vmexec: output truncated")
	}
	if r.SandboxLost {
		fmt.Fprintln(w, "vmexec: the sandbox did not survive this run; the next run starts in a fresh one")
	}
	if r.SandboxRecreated {
		fmt.Fprintln(w, "vmexec: note: this ran in a fresh sandbox (the previous one had died); earlier files are gone")
	}
	if sum := client.ChangeSummary(r.Changes, r.ChangesTruncated, 20); sum != "" {
		if r.ChangesUndone {
			sum += "  (undone: the run was rolled back)"
		}
		fmt.Fprintln(w, "vmexec: changes: "+sum)
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
