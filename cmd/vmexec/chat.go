package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

func newChatCmd(g *globals) *cobra.Command {
	var (
		agentID, conv string
		execute       bool
		maxSteps      int
		asJSON        bool
	)
	cmd := &cobra.Command{
		Use:   "chat --agent NAME [MESSAGE]",
		Short: "Talk to an agent: it writes code, runs it in its sandbox and reads the results",
		Long: `Send MESSAGE to an agent configured in the daemon (agents: in its config, or the
roles of serve --agents-config FILE) and print the turn as it happens: the model's
text, each run's output as the program writes it, and each run's verdict. The model
sees each run's result and may fix its code, until it answers without code or hits
its step cap.

Without MESSAGE, an interactive session: each line you type is a message of the same
conversation (an empty line or Ctrl-D ends it). --conversation continues a stored
one. --execute runs the message's own code blocks without asking the model. Exits 0
when the turn succeeded.`,
		Example: `  vmexec chat --agent DevelopmentAgent 'What is 10 factorial? Compute it.'
  vmexec chat --agent DevelopmentAgent --execute "$(cat reply.md)"
  vmexec chat --agent DevelopmentAgent          # interactive`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if agentID == "" {
				return fmt.Errorf("--agent is required")
			}
			ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			mode := api.ChatModeChat
			if execute {
				mode = api.ChatModeExecute
			}
			p := &chatPrinter{out: cmd.OutOrStdout(), errw: cmd.ErrOrStderr()}
			send := func(msg string) (api.ChatResult, error) {
				req := api.ChatRequest{Message: msg, ConversationID: conv, Mode: mode, MaxSteps: maxSteps}
				if asJSON {
					return g.client().Chat(ctx, agentID, req)
				}
				return g.client().ChatStream(ctx, agentID, req, p.output())
			}
			if len(args) == 1 {
				res, err := send(args[0])
				if err != nil {
					return err
				}
				p.done(res, asJSON)
				if !res.Success {
					return exitError{1}
				}
				return nil
			}
			in := bufio.NewScanner(cmd.InOrStdin())
			in.Buffer(make([]byte, 64<<10), 1<<20)
			for {
				fmt.Fprint(p.errw, "you> ")
				if !in.Scan() || strings.TrimSpace(in.Text()) == "" {
					fmt.Fprintln(p.errw)
					return in.Err()
				}
				res, err := send(in.Text())
				if err != nil {
					fmt.Fprintln(p.errw, "vmexec:", err)
					if ctx.Err() != nil {
						return nil
					}
					continue
				}
				conv = res.ConversationID
				p.done(res, asJSON)
			}
		},
	}
	f := cmd.Flags()
	f.StringVarP(&agentID, "agent", "a", "", "the agent's id (a role name for a seed role config)")
	f.StringVar(&conv, "conversation", "", "continue this stored conversation")
	f.BoolVar(&execute, "execute", false, "run the message's own code blocks, without the model")
	f.IntVar(&maxSteps, "max-steps", 0, "lower the agent's step cap for this turn")
	f.BoolVar(&asJSON, "json", false, "print the turn's result as JSON (nothing streamed)")
	return cmd
}

// chatPrinter prints a streamed turn: the model's text, then each run under a header
// line with its output as it comes and its verdict.
type chatPrinter struct {
	out, errw io.Writer
	inText    bool // the model's text is being printed
	run       string
}

func (p *chatPrinter) output() client.ChatOutput {
	return client.ChatOutput{
		Delta: func(d api.ChatDelta) {
			if !p.inText {
				fmt.Fprintf(p.out, "── step %d · model\n", d.Step)
				p.inText = true
			}
			io.WriteString(p.out, d.Text)
		},
		Stdout: func(o api.ChatOutput) { p.header(o); io.WriteString(p.out, o.Data) },
		Stderr: func(o api.ChatOutput) { p.header(o); io.WriteString(p.errw, o.Data) },
		Run:    p.runDone,
		Step:   func(api.ChatStep) { p.endText() },
	}
}

func (p *chatPrinter) endText() {
	if p.inText {
		fmt.Fprintln(p.out)
		p.inText = false
	}
}

func (p *chatPrinter) header(o api.ChatOutput) {
	key := fmt.Sprintf("%d.%d", o.Step, o.Run)
	if p.run != key {
		p.endText()
		fmt.Fprintf(p.out, "── step %d · run %d ▸\n", o.Step, o.Run+1)
		p.run = key
	}
}

func (p *chatPrinter) runDone(r api.ChatRun) {
	p.endText()
	key := fmt.Sprintf("%d.%d", r.Step, r.Index)
	if p.run != key {
		fmt.Fprintf(p.out, "── step %d · run %d ▸\n", r.Step, r.Index+1)
	}
	p.run = ""
	switch {
	case r.Status == api.ChatRunRefused:
		fmt.Fprintf(p.out, "── %s: not run: %s\n", firstNonEmpty(r.Language, "?"), r.Reason)
	case r.Status == api.ChatRunBlocked:
		fmt.Fprintf(p.out, "── %s: blocked: %s\n", r.Language, r.Reason)
	default:
		res := r.Result
		fmt.Fprintf(p.out, "── %s · %s · exit %d · %d ms", r.Language, res.Verdict, res.ExitCode, res.DurationMS)
		if res.RolledBack {
			fmt.Fprintf(p.out, " · rolled back to %s", res.RestoredSnapshotID)
		}
		fmt.Fprintln(p.out)
		explain(p.errw, res)
	}
}

func (p *chatPrinter) done(res api.ChatResult, asJSON bool) {
	p.endText()
	if asJSON {
		enc := json.NewEncoder(p.out)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return
	}
	fmt.Fprintf(p.errw, "── %s · %d steps · %s · conversation %s\n", res.StopReason, len(res.Steps), map[bool]string{true: "success", false: "not successful"}[res.Success], res.ConversationID)
}
