package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/template"
)

type check struct {
	name string
	ok   bool
	info string // what was found, or what to do
}

func newDoctorCmd(g *globals) *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: runsc, template, guest agent, KVM, QEMU, the daemon",
		Long: `Check what vmexec needs on this host and say what to do about each gap.
Exits non-zero when something the default (gVisor) backend needs is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if err := cfg.Resolve(); err != nil {
				return err
			}
			checks, required := doctor(cfg, g)
			report(cmd.OutOrStdout(), checks)
			for i, c := range checks {
				if !c.ok && i < required {
					return exitError{1}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML configuration file")
	return cmd
}

// doctor runs the checks; the first `required` ones are needed by the gVisor backend.
func doctor(cfg config.Config, g *globals) (checks []check, required int) {
	root := check{name: "root", ok: os.Geteuid() == 0, info: "running as root"}
	if !root.ok {
		root.info = "vmexec serve needs root (runsc): use sudo"
	}
	checks = append(checks, root)

	rs := check{name: "runsc"}
	if p, err := exec.LookPath(cfg.Runsc); err != nil {
		rs.info = fmt.Sprintf("%s not found: run scripts/setup (builds runsc at the pinned version)", cfg.Runsc)
	} else {
		rs.ok, rs.info = true, p
	}
	checks = append(checks, rs)

	ag := check{name: "guest agent"}
	if cfg.Agent == "" {
		ag.info = "vmexec-agent not found beside vmexec or on $PATH: run scripts/setup, or CGO_ENABLED=0 go build ./cmd/vmexec-agent"
	} else if _, err := os.Stat(cfg.Agent); err != nil {
		ag.info = fmt.Sprintf("%s: %v", cfg.Agent, err)
	} else {
		ag.ok, ag.info = true, cfg.Agent
	}
	checks = append(checks, ag)

	tp := check{name: "template"}
	if t, err := (&template.Store{Dir: cfg.TemplatesDir()}).Get(template.Default); err != nil {
		tp.info = "not built: run `vmexec template build` (or just `vmexec serve`, which builds it)"
		if _, err := exec.LookPath("debootstrap"); err != nil {
			tp.info += "; debootstrap is missing too: apt-get install debootstrap"
		}
	} else {
		tp.ok, tp.info = true, fmt.Sprintf("%s-%s at %s", t.Name, t.Hash, t.RootFS)
	}
	checks = append(checks, tp)
	required = len(checks)

	kvm := check{name: "kvm (microVM backend)"}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		kvm.info = "/dev/kvm unusable (" + err.Error() + "): microVMs would run under TCG emulation, slowly"
	} else {
		f.Close()
		kvm.ok, kvm.info = true, "/dev/kvm opens (whether a stock kernel boots under it is probed at start)"
	}
	checks = append(checks, kvm)

	q := check{name: "qemu (microVM backend)"}
	if p, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		q.info = "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (only for the microVM backend)"
	} else {
		q.ok, q.info = true, p
	}
	checks = append(checks, q)

	d := check{name: "daemon"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := g.client()
	c.MaxRetries = -1
	if h, err := c.Health(ctx); err != nil {
		d.info = "not reachable: start it with `sudo vmexec serve` (" + err.Error() + ")"
	} else {
		d.ok, d.info = true, fmt.Sprintf("%s, backend %s, %d sandboxes", h.Status, h.Backend, h.Sandboxes)
	}
	checks = append(checks, d)
	return checks, required
}

func report(w io.Writer, checks []check) {
	for _, c := range checks {
		mark := "ok  "
		if !c.ok {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "[%s] %-24s %s\n", mark, c.name, strings.TrimSpace(c.info))
	}
}
