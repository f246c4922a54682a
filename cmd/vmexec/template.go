package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/template"
)

func newTemplateCmd() *cobra.Command {
	var dataDir, mirror, microVM, agentPath string
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Build and list sandbox templates (root filesystems)",
		Long: `Templates are the root filesystems sandboxes start from: Debian bookworm (minbase)
with python3, nodejs, golang-go, rustc, libc6-dev and ca-certificates, built with
debootstrap into <data-dir>/templates and reused. A template is rebuilt only when its
recipe changes. Building needs root, debootstrap and about a minute. With the Debian
cloud kernel installed, the microVM backend's guest image (kernel, initramfs, ext4 disk)
is built from the same tree and cached beside it.`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", config.Default().DataDir, "data directory")
	store := func() *template.Store {
		if v := os.Getenv("VMEXEC_DATA_DIR"); v != "" && !cmd.PersistentFlags().Changed("data-dir") {
			dataDir = v
		}
		return &template.Store{Dir: config.Config{DataDir: dataDir}.TemplatesDir(), Mirror: mirror}
	}
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the default template if it is missing or its recipe changed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			s := store()
			if microVM != "auto" && microVM != "yes" && microVM != "no" {
				return fmt.Errorf("--microvm %q: want auto, yes or no", microVM)
			}
			t, err := s.Ensure(ctx, template.Default, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "template %s-%s: %s\n", t.Name, t.Hash, t.RootFS)
			if microVM == "no" {
				return nil
			}
			// The microVM guest image: the cloud kernel, an initramfs and the tree as
			// an ext4 disk. Built when the host has the kernel (auto) or demanded (yes).
			agent := agentPath
			if agent == "" {
				agent = config.DefaultAgentPath()
			}
			img, err := s.EnsureImage(ctx, t, template.ImageOptions{AgentPath: agent}, cmd.ErrOrStderr())
			switch {
			case err == nil:
				fmt.Fprintf(cmd.OutOrStdout(), "microVM image %s: kernel %s, disk %s\n", img.Key, img.KernelVersion, img.RootFS)
			case microVM == "auto":
				fmt.Fprintf(cmd.ErrOrStderr(), "no microVM image (%v); the gVisor backend does not need one\n", err)
			default:
				return fmt.Errorf("microVM image: %w", err)
			}
			return nil
		},
	}
	build.Flags().StringVar(&mirror, "mirror", "", "Debian mirror URL (default: the one this host's apt uses)")
	build.Flags().StringVar(&microVM, "microvm", "auto", "also build the microVM guest image: auto (when the host has the cloud kernel), yes, no")
	build.Flags().StringVar(&agentPath, "agent", "", "guest agent binary for the microVM image (default vmexec-agent beside vmexec)")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List built templates",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, err := store().List()
			if err != nil {
				return err
			}
			cur := template.Default.Name + "-" + template.Default.Hash()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE\tCURRENT\tSIZE\tBUILT\tPATH")
			for _, t := range ts {
				id := t.Name + "-" + t.Hash
				mark := ""
				if id == cur {
					mark = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%.1f GB\t%s\t%s\n", id, mark, float64(t.SizeBytes)/1e9, t.BuiltAt.Format("2006-01-02 15:04"), t.RootFS)
			}
			if len(ts) == 0 {
				fmt.Fprintln(tw, "(none: run `vmexec template build`)")
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(build, list)
	return cmd
}
