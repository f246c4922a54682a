// Package gvisor is the default sandbox backend: each sandbox is a gVisor (runsc)
// container whose init process is the vmexec guest agent.
//
// Each sandbox is supervised by one foreground `runsc run` process. The agent's stdin and
// stdout are that process's pipes, which carry the agentproto protocol; its stderr (and
// runsc's own) goes to console.log in the sandbox's bundle directory. The container has
// no network (--network=none), and its root is the template tree with a writable
// in-memory overlay (--overlay2=root:memory), so the host filesystem is never visible and
// the template is never written. Memory is capped through the OCI memory limit and CPU
// time through the OCI CPU quota (Config.CPUs), both enforced by the host cgroup
// /vmexec/<id> on the sandbox's gofer and sentry, that is on everything that runs in it.
//
// Layout under Config.StateDir:
//
//	runsc/           runsc's --root (its container state)
//	bundles/<id>/    config.json and console.log of each sandbox
//	images/<ref>/    snapshot images (runsc checkpoint's files)
//
// The state dir is the backend's scope (see package backend): List and ListImages
// report only what is in it.
package gvisor

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
)

// Name is the backend's name.
const Name = "gvisor"

// AgentPathInSandbox is where the guest agent binary is bind-mounted.
const AgentPathInSandbox = "/.vmexec/agent"

// Config configures the gVisor backend.
type Config struct {
	// Runsc is the runsc binary.
	Runsc string
	// StateDir holds runsc's state, the sandboxes' bundles and the snapshot images;
	// it is the backend's scope (one per daemon).
	StateDir string
	// AgentPath is the host path of the static vmexec-agent binary.
	AgentPath string
	// Platform is runsc's --platform; empty lets runsc choose (systrap).
	Platform string
	// CPUs is each sandbox's CPU quota in cores (fractions allowed): the host cgroup
	// lets the whole sandbox use CPUs×100 ms of CPU time per 100 ms period. 0 means
	// DefaultCPUs; negative sets no quota.
	CPUs float64
	// StartTimeout bounds the wait for the agent's handshake; default 30s.
	StartTimeout time.Duration
	// Checkpoint is how a snapshot is taken: CheckpointControl (the default) asks the
	// sandbox's control server directly (control.go); CheckpointRunsc runs `runsc
	// checkpoint`, as before, kept to measure one against the other. Empty takes
	// $VMEXEC_GVISOR_CHECKPOINT, else CheckpointControl.
	Checkpoint string
	// Restore is how a restore into a standby is made: RestoreControl (the default)
	// with calls to the standby's control server (restore.go); RestoreRunsc with a
	// `runsc restore` process, as before. Empty takes $VMEXEC_GVISOR_RESTORE, else
	// RestoreControl.
	Restore string
	// NoStandby turns off the standby containers restores go into (standby.go); so
	// does $VMEXEC_GVISOR_STANDBY=off.
	NoStandby bool
	// NoStandbyWait makes a restore that finds no standby ready restore afresh
	// rather than wait for one being made, as before (standby.go); so does
	// $VMEXEC_GVISOR_STANDBY_WAIT=off.
	NoStandbyWait bool
	// Standbys is how many standbys of one sandbox shape are kept ready; 0 means
	// $VMEXEC_GVISOR_STANDBYS, else DefaultStandbys.
	Standbys int
	// Observe, when set, is told how long each phase of a snapshot or a start took
	// (bench's phase breakdown); op is "snapshot", "create" or "restore".
	Observe func(op, phase string, d time.Duration)
	// GuestEnv is added to the guest agent's environment (its VMEXEC_GUEST_* switches,
	// for bench's side-by-side measurements); it is part of the shared images' inputs.
	// Nil takes $VMEXEC_GUEST_FAST from the daemon's environment, if set.
	GuestEnv []string
	// Logger receives diagnostics; default slog.Default().
	Logger *slog.Logger
}

// Ways to take a checkpoint (Config.Checkpoint).
const (
	CheckpointControl = "control"
	CheckpointRunsc   = "runsc"
)

// DefaultCPUs is a sandbox's CPU quota when Config.CPUs is 0: one core.
const DefaultCPUs = 1.0

// Backend runs sandboxes with runsc. It implements backend.Backend,
// backend.Snapshotter and backend.SharedImager (template_snapshot.go).
type Backend struct {
	cfg      Config
	log      *slog.Logger
	shared   sharedInputs // see template_snapshot.go
	standbys standbys     // see standby.go
	// restored maps the ids of the sandboxes restored through the control server
	// to them (*Sandbox), until destroyed: runsc's root still calls them "created"
	// (restore.go).
	restored sync.Map
}

var (
	_ backend.Backend       = (*Backend)(nil)
	_ backend.Snapshotter   = (*Backend)(nil)
	_ backend.StandbyHolder = (*Backend)(nil)
)

// New checks the configuration and the host and returns a Backend. It fails with
// backend.ErrUnavailable when runsc or the agent binary is missing.
func New(cfg Config) (*Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Runsc == "" {
		cfg.Runsc = "runsc"
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.Checkpoint == "" {
		cfg.Checkpoint = cmp.Or(os.Getenv("VMEXEC_GVISOR_CHECKPOINT"), CheckpointControl)
	}
	if v := os.Getenv("VMEXEC_GUEST_FAST"); v != "" && cfg.GuestEnv == nil {
		cfg.GuestEnv = []string{"VMEXEC_GUEST_FAST=" + v} // the guest's speed-ups turned off (bench)
	}
	if cfg.Restore == "" {
		cfg.Restore = cmp.Or(os.Getenv("VMEXEC_GVISOR_RESTORE"), RestoreControl)
	}
	if cfg.Restore != RestoreControl && cfg.Restore != RestoreRunsc {
		return nil, fmt.Errorf("gvisor restore %q: want %q or %q", cfg.Restore, RestoreControl, RestoreRunsc)
	}
	if cfg.Standbys == 0 {
		cfg.Standbys = DefaultStandbys
		if v := os.Getenv("VMEXEC_GVISOR_STANDBYS"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("VMEXEC_GVISOR_STANDBYS=%q: want a count of at least 1", v)
			}
			cfg.Standbys = n
		}
	}
	if os.Getenv("VMEXEC_GVISOR_STANDBY_WAIT") == "off" {
		cfg.NoStandbyWait = true
	}
	if os.Getenv("VMEXEC_GVISOR_STANDBY") == "off" {
		cfg.NoStandby = true
	}
	if cfg.Checkpoint != CheckpointControl && cfg.Checkpoint != CheckpointRunsc {
		return nil, fmt.Errorf("gvisor checkpoint %q: want %q or %q", cfg.Checkpoint, CheckpointControl, CheckpointRunsc)
	}
	p, err := exec.LookPath(cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("runsc %q not found (run scripts/setup): %w", cfg.Runsc, backend.ErrUnavailable)
	}
	cfg.Runsc = p
	if fi, err := os.Stat(cfg.AgentPath); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("guest agent %q not found (build cmd/vmexec-agent): %w", cfg.AgentPath, backend.ErrUnavailable)
	}
	if cfg.AgentPath, err = filepath.Abs(cfg.AgentPath); err != nil {
		return nil, fmt.Errorf("agent path: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the gvisor backend needs root: %w", backend.ErrUnavailable)
	}
	for _, d := range []string{cfg.runscRoot(), cfg.bundles(), cfg.images()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	return &Backend{cfg: cfg, log: cfg.Logger.With("backend", Name)}, nil
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return Name }

func (c Config) runscRoot() string           { return filepath.Join(c.StateDir, "runsc") }
func (c Config) bundles() string             { return filepath.Join(c.StateDir, "bundles") }
func (c Config) bundle(id string) string     { return filepath.Join(c.bundles(), id) }
func (c Config) images() string              { return filepath.Join(c.StateDir, "images") }
func (c Config) image(ref string) string     { return filepath.Join(c.images(), ref) }
func (c Config) cgroupPath(id string) string { return "/vmexec/" + id }

// globalArgs are runsc's flags common to every command for this backend's sandboxes.
func (b *Backend) globalArgs() []string {
	args := []string{"--root", b.cfg.runscRoot(), "--network=none", "--overlay2=root:memory", "--gofer-network-namespace=new"}
	if b.cfg.Platform != "" {
		args = append(args, "--platform="+b.cfg.Platform)
	}
	return args
}

// observe reports a phase that began at start to Config.Observe, and returns now.
func (b *Backend) observe(op, phase string, start time.Time) time.Time {
	now := time.Now()
	if b.cfg.Observe != nil {
		b.cfg.Observe(op, phase, now.Sub(start))
	}
	return now
}

// runsc runs one short runsc command and returns its combined output.
func (b *Backend) runsc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.cfg.Runsc, append(b.globalArgs(), args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", args[0], err, strings.TrimSpace(lastLines(string(out), 5)))
	}
	return out, nil
}

type listEntry struct {
	ID      string    `json:"id"`
	Pid     int       `json:"pid"`
	Status  string    `json:"status"`
	Created time.Time `json:"created"`
}

// List implements backend.Backend: every container in this backend's runsc root, and
// bundle directories left without one.
func (b *Backend) List(ctx context.Context) ([]backend.Info, error) {
	out, err := b.runsc(ctx, "list", "--format=json")
	if err != nil {
		return nil, err
	}
	var ents []listEntry
	if s := strings.TrimSpace(string(out)); s != "" && s != "null" {
		if err := json.Unmarshal([]byte(s), &ents); err != nil {
			return nil, fmt.Errorf("runsc list: %w", err)
		}
	}
	seen := map[string]bool{}
	var infos []backend.Info
	for _, e := range ents {
		seen[e.ID] = true
		if v, ok := b.restored.Load(e.ID); ok && e.Status == "created" {
			e.Status = v.(*Sandbox).Info(ctx).Status // running, or dead
		}
		infos = append(infos, backend.Info{ID: e.ID, Backend: Name, Status: e.Status, CreatedAt: e.Created, PID: e.Pid})
	}
	dirs, _ := os.ReadDir(b.cfg.bundles())
	for _, d := range dirs {
		if !seen[d.Name()] {
			infos = append(infos, backend.Info{ID: d.Name(), Backend: Name, Status: "stopped"})
		}
	}
	return infos, nil
}

// DestroyID implements backend.Backend.
func (b *Backend) DestroyID(ctx context.Context, id string) error {
	if _, err := b.runsc(ctx, "delete", "--force", id); err != nil && !isNotExist(err) {
		return err
	}
	b.restored.Delete(id) // the container is gone: List must not find it by its old id
	if err := os.RemoveAll(b.cfg.bundle(id)); err != nil {
		return fmt.Errorf("remove bundle: %w", err)
	}
	return nil
}

func isNotExist(err error) bool {
	s := err.Error()
	return strings.Contains(s, "does not exist") || strings.Contains(s, "not found")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// oomKilled reports whether the sandbox's memory cgroup recorded the limit being hit.
func (c Config) oomKilled(id string) bool {
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", c.cgroupPath(id), "memory.oom_control"), // v1
		filepath.Join("/sys/fs/cgroup", c.cgroupPath(id), "memory.events"),             // v2
	} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && (f[0] == "oom_kill" || f[0] == "oom") && f[1] != "0" {
				return true
			}
		}
	}
	return false
}

var errExited = errors.New("runsc exited")
