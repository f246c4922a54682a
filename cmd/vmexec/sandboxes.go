package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/api"
)

func newSandboxesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandboxes",
		Aliases: []string{"sandbox", "sb"},
		Short:   "List, create and remove sandboxes",
	}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the server's sandboxes",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sbs, err := g.client().ListSandboxes(context.Background())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tAGENT\tSTATUS\tRUNS\tMEMORY\tCREATED\tLAST USED")
			for _, s := range sbs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\n", s.ID, dash(s.AgentID), s.Status, s.Runs, s.MemoryMB, ago(s.CreatedAt), ago(s.LastUsedAt))
			}
			return tw.Flush()
		},
	}
	var agent, name string
	var memoryMB int64
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox (agents get one automatically on their first run)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := g.client().CreateSandbox(context.Background(), api.CreateSandboxRequest{AgentID: agent, Name: name, MemoryMB: memoryMB})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), sb.ID)
			return nil
		},
	}
	create.Flags().StringVar(&agent, "agent", "", "agent the sandbox belongs to")
	create.Flags().StringVar(&name, "name", "", "a name to show in lists")
	create.Flags().Int64Var(&memoryMB, "memory-mb", 0, "memory in MiB (default the server's)")
	rm := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"delete"},
		Short:   "Destroy sandboxes",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, id := range args {
				if err := g.client().DeleteSandbox(context.Background(), id); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), id)
			}
			return nil
		},
	}
	cmd.AddCommand(list, create, rm)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}
