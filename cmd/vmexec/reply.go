package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
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
fails the rest are skipped unless --keep-going. Exits 0 when every block that ran
succeeded.`,
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
			res, err := g.client().ParseExecute(context.Background(), api.ParseExecuteRequest{
				AgentID: agent, SandboxID: sandbox, Text: string(text), StopOnFailure: &stop, Execute: &execute})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(res)
			} else {
				printBlocks(cmd.OutOrStdout(), cmd.ErrOrStderr(), res)
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
	if len(res.Blocks) == 0 {
		fmt.Fprintln(errw, "vmexec: no code blocks found")
	}
	for _, b := range res.Blocks {
		lang := b.Block.Language
		if b.Block.Detected {
			lang += " (detected)"
		}
		fmt.Fprintf(out, "── block %d · %s · lines %d-%d · %s\n", b.Block.Index+1, firstNonEmpty(lang, b.Block.RawLanguage, "?"), b.Block.StartLine, b.Block.EndLine, b.Status)
		if b.Reason != "" {
			fmt.Fprintf(out, "   %s\n", b.Reason)
		}
		if r := b.Result; r != nil && !r.Blocked {
			io.WriteString(out, r.Stdout)
			io.WriteString(errw, r.Stderr)
			explain(errw, r)
			if r.RolledBack {
				fmt.Fprintf(errw, "vmexec: rolled back to %s\n", r.RestoredSnapshotID)
			}
		}
	}
	fmt.Fprintf(out, "── %d run, %d failed, %d skipped\n", res.Executed, res.Failed, res.Skipped)
}
