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
			fmt.Fprintln(tw, "ID\tAGENT\tBACKEND\tSTATUS\tRUNS\tMEMORY\tSNAPSHOTS\tCREATED\tLAST USED")
			for _, s := range sbs {
				be := s.Backend
				if s.Accel != "" {
					be += " (" + s.Accel + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%d (%.0f MB)\t%s\t%s\n", s.ID, dash(s.AgentID), be, s.Status, s.Runs, s.MemoryMB,
					s.Snapshots, float64(s.SnapshotBytes)/1e6, ago(s.CreatedAt), ago(s.LastUsedAt))
			}
			return tw.Flush()
		},
	}
	var agent, name, backend string
	var memoryMB int64
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox (agents get one automatically on their first run)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := g.client().CreateSandbox(context.Background(), api.CreateSandboxRequest{AgentID: agent, Name: name, MemoryMB: memoryMB, Backend: backend})
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
	create.Flags().StringVar(&backend, "backend", "", "gvisor or microvm (default the server's; see `vmexec backends`)")
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

func newBackendsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backends",
		Short: "List the server's backends and their accelerators",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bs, err := g.client().Backends(context.Background())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "BACKEND\tDEFAULT\tACCEL\tSNAPSHOTS")
			for _, b := range bs {
				fmt.Fprintf(tw, "%s\t%v\t%s\t%v\n", b.Name, b.Default, dash(b.Accel), b.Snapshots)
			}
			return tw.Flush()
		},
	}
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
