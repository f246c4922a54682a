package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/backend/microvm"
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
	var probeKVM bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: runsc, template, guest agent, KVM, QEMU, the daemon, cluster mode's PostgreSQL",
		Long: `Check what vmexec needs on this host and say what to do about each gap.
Exits non-zero when something the default (gVisor) backend needs is missing.
Whether microVMs get KVM is read from a running daemon; --probe-kvm boots one to
find out without it. In cluster mode (cluster.postgres_url set) it also checks that
PostgreSQL answers, that its schema is migrated or can be, and that this host's clock
agrees with the database's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if err := cfg.Resolve(); err != nil {
				return err
			}
			checks, required := doctor(cfg, g, probeKVM)
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
	cmd.Flags().BoolVar(&probeKVM, "probe-kvm", false, "boot one microVM to find out whether KVM runs a guest here (a few seconds)")
	return cmd
}

// doctor runs the checks; the first `required` ones are needed by the gVisor backend.
func doctor(cfg config.Config, g *globals, probeKVM bool) (checks []check, required int) {
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
	checks = append(checks, clusterChecks(cfg)...) // cluster mode's PostgreSQL
	required = len(checks)

	q := check{name: "qemu (microVM backend)"}
	if p, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		q.info = "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (only for the microVM backend)"
	} else {
		q.ok, q.info = true, p
	}
	checks = append(checks, q)

	d, accel := daemonCheck(g)
	checks = append(checks, kvmCheck(cfg, accel, probeKVM), d)
	return checks, required
}

// daemonCheck asks the daemon for its health, and for the accelerator its microVM
// backend settled on ("" when it has none, or is not running).
func daemonCheck(g *globals) (check, string) {
	d := check{name: "daemon"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := g.client()
	c.MaxRetries = -1
	h, err := c.Health(ctx)
	if err != nil {
		d.info = "not reachable: start it with `sudo vmexec serve` (" + err.Error() + ")"
		return d, ""
	}
	d.ok, d.info = true, fmt.Sprintf("%s, backend %s, %d sandboxes", h.Status, h.Backend, h.Sandboxes)
	bs, _ := c.Backends(ctx)
	for _, b := range bs {
		if b.Name == microvm.Name && b.Accel != microvm.AccelAuto {
			return d, b.Accel
		}
	}
	return d, ""
}

// kvmCheck says whether microVMs run under KVM. /dev/kvm opening is not enough: under
// some nested hypervisors a stock guest kernel hangs at boot. What a running daemon's
// microVM backend settled on answers it; failing that, a probe boot when asked.
func kvmCheck(cfg config.Config, daemonAccel string, probe bool) check {
	kvm := check{name: "kvm (microVM backend)"}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		kvm.info = "/dev/kvm unusable (" + err.Error() + "): microVMs would run under TCG emulation, slowly"
		return kvm
	}
	f.Close()
	accel, source := daemonAccel, "the running daemon"
	if accel == "" && probe {
		accel, err = probeAccel(cfg)
		if err != nil {
			kvm.info = "probe boot failed: " + err.Error()
			return kvm
		}
		source = "a probe boot"
	}
	switch accel {
	case microvm.AccelKVM:
		kvm.ok, kvm.info = true, "microVMs run under KVM (as "+source+" found)"
	case microvm.AccelTCG:
		kvm.info = "/dev/kvm opens, but a guest kernel does not boot under it (as " + source + " found; nested KVM?): microVMs run under TCG emulation, several times slower"
	default:
		kvm.ok, kvm.info = true, "/dev/kvm opens; whether a guest kernel boots under it: `vmexec doctor --probe-kvm` (boots one microVM)"
	}
	return kvm
}

// probeAccel boots one throwaway microVM with the accelerator on auto and reports
// the one it settled on.
func probeAccel(cfg config.Config) (string, error) {
	tpl, err := (&template.Store{Dir: cfg.TemplatesDir()}).Get(template.Default)
	if err != nil {
		return "", fmt.Errorf("no template: run `vmexec template build`: %w", err)
	}
	dir, err := os.MkdirTemp("", "vmexec-doctor-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	be, err := microvm.New(microvm.Config{StateDir: dir, AgentPath: cfg.Agent, Accel: microvm.AccelAuto, NoWarmUp: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Progress: os.Stderr})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := be.Prepare(ctx, tpl, os.Stderr); err != nil {
		return "", err
	}
	return be.Accel(), nil
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
