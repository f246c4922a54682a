package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/client"
)

func newFilesCmd(g *globals) *cobra.Command {
	var agent string
	cmd := &cobra.Command{
		Use:   "files",
		Short: "Put files into a sandbox, get them out, list and remove them",
		Long: `Move files in and out of a sandbox (see ` + "`vmexec sandboxes list`" + ` for ids; a run's
result names its sandbox). Paths in the sandbox are absolute or relative to
/home/user, and are resolved inside it. Files put in belong to the sandbox user, and
the next run sees them. File operations wait for the sandbox's run in progress.`,
		Example: `  vmexec files put sb-1a2b3c data.csv              # to /home/user/data.csv
  vmexec files put sb-1a2b3c - input/notes.txt < notes.txt
  vmexec files get sb-1a2b3c out/report.json report.json
  vmexec files ls sb-1a2b3c --depth 2
  vmexec files rm sb-1a2b3c -r out`,
	}
	cmd.PersistentFlags().StringVarP(&agent, "agent", "a", "", "act as this agent (another agent's sandbox is refused)")
	opt := func() client.FileOptions { return client.FileOptions{AgentID: agent} }

	var mode string
	put := &cobra.Command{
		Use:   "put SANDBOX LOCAL [PATH]",
		Short: "Copy a local file (- for stdin) into a sandbox",
		Long: `Copy LOCAL (a file, or - for standard input) to PATH in the sandbox (default: the
file's name under /home/user). Missing parent directories are created; an existing
file is replaced. Prints the written file's path and size.`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = cmd.InOrStdin()
			dst := ""
			if len(args) == 3 {
				dst = args[2]
			}
			if args[1] != "-" {
				f, err := os.Open(args[1])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
				if dst == "" {
					dst = filepath.Base(args[1])
				}
			}
			if dst == "" {
				return fmt.Errorf("give the PATH in the sandbox when the file comes from stdin")
			}
			o := opt()
			if mode != "" {
				m, err := strconv.ParseUint(mode, 8, 32)
				if err != nil {
					return fmt.Errorf("--mode %q: want octal permission bits such as 755", mode)
				}
				o.Mode = uint32(m)
			}
			info, err := g.client().PutFile(context.Background(), args[0], dst, in, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%d bytes\n", info.Path, info.Size)
			return nil
		},
	}
	put.Flags().StringVar(&mode, "mode", "", "permission bits of the file, octal (default 644)")

	get := &cobra.Command{
		Use:   "get SANDBOX PATH [LOCAL]",
		Short: "Copy a file out of a sandbox (to stdout without LOCAL)",
		Args:  cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, size, err := g.client().GetFile(context.Background(), args[0], args[1], opt())
			if err != nil {
				return err
			}
			defer body.Close()
			out := cmd.OutOrStdout()
			if len(args) == 3 && args[2] != "-" {
				f, err := os.Create(args[2])
				if err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			n, err := io.Copy(out, body)
			if err == nil && size >= 0 && n != size {
				err = fmt.Errorf("got %d of %d bytes", n, size)
			}
			if err != nil {
				return fmt.Errorf("copy %s: %w", args[1], err)
			}
			return nil
		},
	}

	var depth int
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls SANDBOX [PATH]",
		Aliases: []string{"list"},
		Short:   "List a directory of a sandbox (default /home/user)",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ""
			if len(args) == 2 {
				dir = args[1]
			}
			entries, err := g.client().ListFiles(context.Background(), args[0], dir, depth, opt())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MODE\tSIZE\tMODIFIED\tPATH")
			for _, e := range entries {
				p := e.Path
				if e.Type == "dir" {
					p += "/"
				}
				fmt.Fprintf(tw, "%s %04o\t%d\t%s\t%s\n", e.Type, e.Mode, e.Size, e.MTime.Local().Format("2006-01-02 15:04"), p)
			}
			return tw.Flush()
		},
	}
	ls.Flags().IntVar(&depth, "depth", 1, "levels to list (1: the directory's entries)")
	ls.Flags().BoolVar(&asJSON, "json", false, "print the entries as JSON")

	var recursive bool
	rm := &cobra.Command{
		Use:   "rm SANDBOX PATH",
		Short: "Remove a file, or a directory with -r",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := opt()
			o.Recursive = recursive
			return g.client().RemoveFile(context.Background(), args[0], args[1], o)
		},
	}
	rm.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove a directory and everything in it")

	cmd.AddCommand(put, get, ls, rm)
	return cmd
}
