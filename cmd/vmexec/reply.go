package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

func newRunReplyCmd(g *globals) *cobra.Command {
	var (
		agent, sandbox string
		keepGoing      bool
		dryRun         bool
		asJSON         bool
	)
	cmd := &cobra.Command{
		Use:   "run-reply [FILE]",
		Short: "Run the code blocks of an LLM's reply, in order",
		Long: `Read an LLM's reply (Markdown) from FILE or stdin, find its code blocks with a
CommonMark parser, and run them in document order in the agent's sandbox, each as its
own transaction. Blocks in languages vmexec does not run are reported; after a block
fails the rest are skipped unless --keep-going. Each block's output is printed as it
runs (stdout to stdout, stderr to stderr), then its outcome; Ctrl-C cancels the block
running. Exits 0 when every block that ran succeeded.`,
		Example: `  vmexec run-reply --agent demo < reply.md
  vmexec run-reply --agent demo --dry-run reply.md     # only list the blocks`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = cmd.InOrStdin()
			if len(args) == 1 {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			text, err := io.ReadAll(in)
			if err != nil {
				return err
			}
			stop, execute := !keepGoing, !dryRun
			req := api.ParseExecuteRequest{AgentID: agent, SandboxID: sandbox, Text: string(text), StopOnFailure: &stop, Execute: &execute}
			ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer cancel() // Ctrl-C disconnects, which cancels the block running
			var res api.ParseExecuteResult
			if asJSON || dryRun {
				if res, err = g.client().ParseExecute(ctx, req); err != nil {
					return err
				}
			}
			switch {
			case asJSON:
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(res)
			case dryRun:
				printBlocks(cmd.OutOrStdout(), cmd.ErrOrStderr(), res)
			default:
				p := &blockPrinter{out: cmd.OutOrStdout(), errw: cmd.ErrOrStderr(), current: -1}
				res, err = g.client().ParseExecuteStream(ctx, req, client.ParseOutput{
					Stdout: func(b int, s string) { p.output(b, p.out, s) },
					Stderr: func(b int, s string) { p.output(b, p.errw, s) },
					Block:  p.block,
				})
				if err != nil {
					return err
				}
				p.summary(res)
			}
			if dryRun || res.Success {
				return nil
			}
			return exitError{1}
		},
	}
	f := cmd.Flags()
	f.StringVarP(&agent, "agent", "a", "cli", "agent id")
	f.StringVar(&sandbox, "sandbox", "", "run in this sandbox instead of the agent's own")
	f.BoolVar(&keepGoing, "keep-going", false, "run the remaining blocks after one fails")
	f.BoolVar(&dryRun, "dry-run", false, "only list the blocks found")
	f.BoolVar(&asJSON, "json", false, "print the whole result as JSON")
	return cmd
}

func printBlocks(out, errw io.Writer, res api.ParseExecuteResult) {
	p := &blockPrinter{out: out, errw: errw, current: -1}
	for _, b := range res.Blocks {
		p.block(b)
	}
	p.summary(res)
}

// blockPrinter prints a parse-execute's blocks, their output as it comes (under a
// header line of the block) and each block's outcome when it is known.
type blockPrinter struct {
	out, errw io.Writer
	current   int // the block whose output is being printed, or -1
}

func (p *blockPrinter) output(block int, w io.Writer, s string) {
	if block != p.current {
		fmt.Fprintf(p.out, "── block %d ▸\n", block+1)
		p.current = block
	}
	io.WriteString(w, s)
}

func (p *blockPrinter) block(b api.BlockResult) {
	lang := b.Block.Language
	if b.Block.Detected {
		lang += " (detected)"
	}
	fmt.Fprintf(p.out, "── block %d · %s · lines %d-%d · %s\n", b.Block.Index+1, firstNonEmpty(lang, b.Block.RawLanguage, "?"), b.Block.StartLine, b.Block.EndLine, b.Status)
	if b.Reason != "" {
		fmt.Fprintf(p.out, "   %s\n", b.Reason)
	}
	if r := b.Result; r != nil && !r.Blocked {
		if p.current != b.Block.Index { // its output was not streamed
			io.WriteString(p.out, r.Stdout)
			io.WriteString(p.errw, r.Stderr)
		}
		explain(p.errw, r)
		if r.RolledBack {
			fmt.Fprintf(p.errw, "vmexec: rolled back to %s\n", r.RestoredSnapshotID)
		}
	}
	p.current = -1
}

func (p *blockPrinter) summary(res api.ParseExecuteResult) {
	if len(res.Blocks) == 0 {
		fmt.Fprintln(p.errw, "vmexec: no code blocks found")
	}
	fmt.Fprintf(p.out, "── %d run, %d failed, %d skipped\n", res.Executed, res.Failed, res.Skipped)
}
