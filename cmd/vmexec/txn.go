package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

func newSnapshotCmd(g *globals) *cobra.Command {
	var agent, name, desc string
	var pinned bool
	cmd := &cobra.Command{
		Use:   "snapshot SANDBOX",
		Short: "Save a sandbox's whole state (files, memory, processes)",
		Long: `Save a sandbox's whole state. Runs already take a snapshot before they start and
roll back to it when they fail; take one yourself to mark a state to come back to.
Pinned snapshots are never removed by retention.`,
		Example: `  vmexec snapshot sb-1a2b3c4d5e6f --name before-refactor
  vmexec snapshot list sb-1a2b3c4d5e6f`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sn, err := g.client().CreateSnapshot(context.Background(), args[0], api.CreateSnapshotRequest{AgentID: agent, Name: name, Description: desc, Pinned: pinned})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), sn.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "act as this agent (default: the operator)")
	cmd.Flags().StringVar(&name, "name", "", "a name for the snapshot")
	cmd.Flags().StringVar(&desc, "description", "", "a description")
	cmd.Flags().BoolVar(&pinned, "pin", false, "never remove it by retention")
	list := &cobra.Command{
		Use:   "list SANDBOX",
		Short: "List a sandbox's snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.client().ListSnapshots(context.Background(), args[0], agent)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tNAME\tRUN\tSIZE\tPINNED\tCREATED")
			for _, s := range l.Snapshots {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f MB\t%v\t%s\n", s.ID, s.Kind, dash(s.Name), dash(s.RunID), float64(s.SizeBytes)/1e6, s.Pinned, ago(s.CreatedAt))
			}
			fmt.Fprintf(tw, "\t\t\t\t%.1f MB in all\t\t\n", float64(l.DiskBytes)/1e6)
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm SNAPSHOT...",
		Short: "Delete snapshots",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, id := range args {
				if err := g.client().DeleteSnapshot(context.Background(), id, agent); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), id)
			}
			return nil
		},
	}
	for _, c := range []*cobra.Command{list, rm} {
		c.Flags().StringVar(&agent, "agent", "", "act as this agent (default: the operator)")
	}
	cmd.AddCommand(list, rm)
	return cmd
}

func newRollbackCmd(g *globals) *cobra.Command {
	var agent string
	var last bool
	cmd := &cobra.Command{
		Use:   "rollback SANDBOX [SNAPSHOT]",
		Short: "Return a sandbox to a snapshot, or to its last successful run",
		Example: `  vmexec rollback sb-1a2b3c4d5e6f snap-0123456789abcdef
  vmexec rollback sb-1a2b3c4d5e6f --last-success`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.RollbackRequest{AgentID: agent, LastSuccess: last}
			if len(args) == 2 {
				req.SnapshotID = args[1]
			}
			if (req.SnapshotID == "") == !last {
				return fmt.Errorf("give a SNAPSHOT or --last-success")
			}
			res, err := g.client().Rollback(context.Background(), args[0], req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "act as this agent (default: the operator)")
	cmd.Flags().BoolVar(&last, "last-success", false, "roll back to the state right after the last successful run")
	return cmd
}

func newForkCmd(g *globals) *cobra.Command {
	var agent, name string
	cmd := &cobra.Command{
		Use:   "fork SNAPSHOT",
		Short: "Start a new sandbox from a snapshot (an independent copy)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sb, err := g.client().Fork(context.Background(), args[0], api.ForkRequest{AgentID: agent, Name: name})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), sb.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "act as this agent (default: the operator)")
	cmd.Flags().StringVar(&name, "name", "", "a name for the new sandbox")
	return cmd
}

func newHistoryCmd(g *globals) *cobra.Command {
	var (
		q      client.HistoryQuery
		since  time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Show recorded runs, newest first",
		Example: `  vmexec history --agent demo
  vmexec history --sandbox sb-1a2b3c4d5e6f --failures --since 1h
  vmexec history --agent demo --json --limit 200`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since > 0 {
				q.Since = time.Now().Add(-since)
			}
			l, err := g.client().History(context.Background(), q)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(l)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tWHEN\tAGENT\tSANDBOX\tLANG\tVERDICT\tEXIT\tMS\tROLLED BACK\tCODE")
			for _, r := range l.Runs {
				code := strings.ReplaceAll(strings.TrimSpace(r.Code), "\n", "⏎")
				if len(code) > 40 {
					code = code[:37] + "..."
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%v\t%s\n", r.ID, ago(r.StartedAt), dash(r.AgentID), dash(r.SandboxID), r.Language, r.Verdict, r.ExitCode, r.DurationMS, r.RolledBack, code)
			}
			tw.Flush()
			if l.NextCursor != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "(%d in all; more with --cursor %s)\n", l.Total, l.NextCursor)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.AgentID, "agent", "", "only this agent's runs")
	f.StringVar(&q.SandboxID, "sandbox", "", "only this sandbox's runs")
	f.BoolVar(&q.FailuresOnly, "failures", false, "only failed and blocked runs")
	f.DurationVar(&since, "since", 0, "only runs started within this long (e.g. 1h)")
	f.IntVar(&q.Limit, "limit", 50, "at most this many runs")
	f.StringVar(&q.Cursor, "cursor", "", "continue from a previous page")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
