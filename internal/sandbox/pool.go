package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
)

// The template snapshot: what makes a new agent's first run as fast as a warm run.
//
// Booting a sandbox from the template and then taking its first pre-run checkpoint
// costs hundreds of milliseconds, and a freshly booted sandbox has no python zygote
// yet, so its first python run pays the interpreter's start-up too. Instead, once per
// template the service boots one sandbox, warms it (see warmTemplate: a python run
// with the default limits, which builds the change-set baseline and starts the python
// zygote, then waits until the zygote and its forked spare are ready) and saves it
// ONCE as a shared image of the default backend (backend.SharedImager). Then:
//
//   - pool sandboxes (and new sandboxes of the default backend and memory when the
//     pool is empty) are restores of that image, not boots; a pool sandbox also runs
//     one throwaway python run while it waits (see startPooled), so that the memory
//     its first run touches is mapped again;
//   - such a sandbox's first pre-run snapshot IS the shared image: startedFrom records
//     a snapshot (kind pre_run, 0 bytes: its disk is shared) naming it as the
//     sandbox's current and clean snapshot, so the first run takes no checkpoint, and
//     a failed first run rolls back to it like to any snapshot;
//   - the shared image is never removed by one sandbox's retention or deletion
//     (DeleteImage leaves shared images alone); pruneShared removes, at start, shared
//     images of an older key that no snapshot record names any more.
//
// # Key
//
// The image is made again whenever what went into it changes: templateKey covers
// the template's name and hash, the warm-up recipe (templateRecipe) and the default
// limits and change areas the warm-up ran with (the zygote serves only runs whose
// limits match its own); the backend adds its own inputs (for gVisor the runsc version
// and the guest agent binary). A daemon that finds the image for its key on disk uses
// it without rebuilding.
//
// # Life
//
// Start looks the image up; if it is missing, it is made in the background (progress
// in the log) while the first requests boot sandboxes the old way; pool fills wait
// for it. A failure is logged and the service goes on without it (sandboxes boot from
// the template, as before); it is tried again at the next start.
//
// # What differs between restores
//
// Every restore starts with the image's memory. The guest agent reseeds the kernel's
// random state from the entropy each connection's hello carries (internal/guest
// reseed.go), before anything runs; python's random, uuid4 and tempfile seed from
// os.urandom when a run first uses them. The hostname is the same in every sandbox
// ("sandbox") whether restored or booted.

// templateRecipe names the warm-up warmTemplate performs; change it when the warm-up
// changes, so that images made by the old one are not used.
const templateRecipe = "python-zygote-v1"

// templateSnap is the service's state of its template snapshot.
type templateSnap struct {
	once sync.Once
	done chan struct{} // closed once settled: made, found, or given up
	ref  string        // the shared image, set before done closes ("" without one)
	key  string
}

// templateEnabled reports whether the service uses a template snapshot: the default
// backend can keep shared images and the configuration does not turn it off.
func (s *Service) templateEnabled() (backend.SharedImager, bool) {
	if s.cfg.TemplateSnapshot != nil && !*s.cfg.TemplateSnapshot {
		return nil, false
	}
	si, ok := s.def.(backend.SharedImager)
	_, snaps := s.def.(backend.Snapshotter)
	return si, ok && snaps
}

// templateKey is the caller's half of the template snapshot's key (see Key above).
func (s *Service) templateKey() string {
	lim, _ := s.cfg.resolve(api.Limits{})
	scan := s.changeScan(api.ExecRequest{})
	h := sha256.New()
	fmt.Fprintf(h, "template %s %s %s\x00recipe %s\x00limits %d %d %d %d\x00", s.tpl.Name, s.tpl.Hash, s.tpl.RootFS,
		templateRecipe, lim.MemoryMB, lim.MaxProcs, lim.MaxFileBytes, s.cfg.HostMaxPIDs)
	if scan != nil {
		fmt.Fprintf(h, "changes %s %d", strings.Join(scan.Paths, ","), scan.MaxEntries)
	}
	return "template-" + s.tpl.Name + "-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// startTemplateSnapshot finds the template snapshot or starts making it in the
// background; the pool fills once it is settled. Called by Start.
func (s *Service) startTemplateSnapshot(ctx context.Context) {
	t := &s.tsnap
	t.once.Do(func() { t.done = make(chan struct{}) })
	si, ok := s.templateEnabled()
	if !ok {
		close(t.done)
		return
	}
	t.key = s.templateKey()
	img, err := si.SharedImage(ctx, t.key)
	// Now, before any snapshot is in flight: listing images removes half-written ones.
	s.pruneShared(ctx, si, img.Ref)
	if err == nil {
		t.ref = img.Ref
		close(t.done)
		s.log.Info("template snapshot found", "image", img.Ref, "bytes", img.SizeBytes) // after done: tests wait for it
		return
	}
	s.log.Info("making the template snapshot (once per template, runsc and agent build)", "template", s.tpl.Name, "key", t.key)
	// Room for the warm-up sandbox is taken now, before the pool's fills count.
	release, err := s.admit(ctx, s.cfg.Defaults.MemoryMB, nil)
	if err != nil {
		s.log.Warn("no room to make the template snapshot; sandboxes boot from the template", "err", err)
		close(t.done)
		return
	}
	started := s.goBackground(func() {
		// Stopped as soon as Close begins.
		ctx, cancel := context.WithTimeout(s.runs, 5*time.Minute)
		defer cancel()
		t0 := time.Now()
		ref, err := s.makeTemplateSnapshot(ctx, si, t.key)
		release()
		t.ref = ref
		close(t.done)
		if err != nil {
			s.log.Warn("no template snapshot; sandboxes boot from the template (tried again at the next start)", "err", err)
		} else {
			s.log.Info("template snapshot ready", "image", ref, "took", time.Since(t0).Round(time.Millisecond))
		}
		s.fillPool()
	})
	if !started {
		release()
		close(t.done)
	}
}

// templateRef is the template snapshot's image, or "" when there is none (yet: with
// wait, it waits until it is settled or ctx ends).
func (s *Service) templateRef(ctx context.Context, wait bool) string {
	t := &s.tsnap
	t.once.Do(func() { t.done = make(chan struct{}) })
	if wait {
		select {
		case <-t.done:
		case <-ctx.Done():
			return ""
		}
	}
	select {
	case <-t.done:
		return t.ref
	default:
		return ""
	}
}

// makeTemplateSnapshot boots a sandbox from the template, warms it and saves it as
// the shared image for key; the sandbox is destroyed after. The caller has admitted
// it.
func (s *Service) makeTemplateSnapshot(ctx context.Context, si backend.SharedImager, key string) (string, error) {
	t0 := time.Now()
	sb, err := s.def.Create(ctx, s.spec(randID("tpl-", 6)+"-0", s.cfg.Defaults.MemoryMB))
	if err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	defer sb.Destroy(context.Background())
	s.log.Info("template snapshot: sandbox booted", "took", time.Since(t0).Round(time.Millisecond))
	if err := s.warmTemplate(ctx, sb); err != nil {
		return "", fmt.Errorf("warm-up: %w", err)
	}
	s.log.Info("template snapshot: warmed (python zygote ready)", "took", time.Since(t0).Round(time.Millisecond))
	img, err := si.SaveShared(ctx, sb, key)
	if err != nil {
		return "", fmt.Errorf("save: %w", err)
	}
	s.log.Info("template snapshot: saved", "image", img.Ref, "bytes", img.SizeBytes, "took", time.Since(t0).Round(time.Millisecond))
	return img.Ref, nil
}

// forkedProbe prints True when it runs forked from the python zygote: a forked run's
// /proc/self/cmdline is the zygote's (see internal/guest/zygote.go).
const forkedProbe = "print('python-zygote' in open('/proc/self/cmdline').read())"

// warmRequest is a warm-up run of lang code with the default limits and change scan,
// as a run of an agent that sets none would be.
func (s *Service) warmRequest(lang, code string) (*agentproto.ExecRequest, error) {
	lim, err := s.cfg.resolve(api.Limits{})
	if err != nil {
		return nil, err
	}
	return &agentproto.ExecRequest{Language: lang, Code: code,
		Limits: agentproto.Limits{TimeoutMS: 20_000, MaxOutputBytes: lim.MaxOutputBytes, MaxFileBytes: lim.MaxFileBytes,
			MaxProcs: lim.MaxProcs, MemoryBytes: lim.MemoryMB << 20},
		Changes: s.changeScan(api.ExecRequest{})}, nil
}

// warmRun runs a warm-up run in sb and returns its trimmed stdout; a run that does not
// end ok is an error.
func (s *Service) warmRun(ctx context.Context, sb backend.Sandbox, lang, code string) (string, error) {
	req, err := s.warmRequest(lang, code)
	if err != nil {
		return "", err
	}
	res, err := sb.Exec(ctx, req, nil)
	if err != nil {
		return "", err
	}
	if res.Verdict != agentproto.VerdictOK {
		return "", fmt.Errorf("%s warm-up run ended %s: %s%s", lang, res.Verdict, res.Stderr, res.Error)
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

// warmTemplate starts in sb what first runs need: a python run with the default
// limits and change scan (so the guest's change baseline exists and the zygote it
// starts afterwards serves default runs), then python runs until one is forked from
// the zygote, then a wait until the zygote has forked its spare for the next run.
func (s *Service) warmTemplate(ctx context.Context, sb backend.Sandbox) error {
	ok := false
	for i := 0; i < 100 && !ok; i++ {
		out, err := s.warmRun(ctx, sb, "python", forkedProbe)
		if err != nil {
			return err
		}
		if ok = out == "True"; !ok {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if !ok {
		return errors.New("the python zygote did not start")
	}
	// The zygote and its spare: two processes running the zygote's script.
	const spare = `for i in $(seq 200); do
  [ "$(grep -l 'python-zygot[e]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)" -ge 2 ] && exit 0
  sleep 0.01
done
exit 1`
	if _, err := s.warmRun(ctx, sb, "bash", spare); err != nil {
		return fmt.Errorf("the zygote's spare: %w", err)
	}
	return nil
}

// pruneShared removes shared images other than current (the template snapshot, if
// it exists already) that no snapshot record names: made for an older template,
// runsc or agent. Called by Start only, after recover: reconcileImages has listed
// the images and records at start already (unnamedShared), and no snapshot is in
// flight yet.
func (s *Service) pruneShared(ctx context.Context, si backend.SharedImager, current string) {
	for _, ref := range s.unnamedShared[s.def.Name()] {
		if ref == current {
			continue
		}
		s.log.Info("removing a template snapshot no longer used", "image", ref)
		if err := si.DeleteShared(ctx, ref); err != nil {
			s.log.Warn("removing an old template snapshot", "image", ref, "err", err)
		}
	}
	s.unnamedShared = nil
}

// startFresh starts e's first sandbox: restored from the template snapshot when e
// is of the default backend and memory and the snapshot is ready (base names its
// image then), else booted from the template.
func (s *Service) startFresh(ctx context.Context, e *entry) (sb backend.Sandbox, base string, err error) {
	if e.backend == s.def.Name() && e.memoryMB == s.cfg.Defaults.MemoryMB {
		if ref := s.templateRef(ctx, false); ref != "" {
			sb, err := s.snapperOf(e).Fork(ctx, ref, s.specFor(e))
			if err == nil {
				return sb, ref, nil
			}
			s.log.Warn("restore from the template snapshot failed; booting from the template", "image", ref, "err", err)
		}
	}
	sb, err = s.backendOf(e).Create(ctx, s.specFor(e))
	return sb, "", err
}

// poolRefillDelay is how long the refill of a pool sandbox just handed out waits.
// The refill (a restore and its warm-up run) takes the host's CPU for a while, and a
// new agent's first run, which comes right after the hand-out, took about twice as long
// next to it; a first run is over well within the delay, and the pool is one sandbox
// short meanwhile. VMEXEC_POOL_REFILL_DELAY (a duration; 0: at once, as before) sets it.
var poolRefillDelay = refillDelay(os.Getenv("VMEXEC_POOL_REFILL_DELAY"))

func refillDelay(v string) time.Duration {
	const def = 250 * time.Millisecond
	if v == "" {
		return def
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return d
	}
	slog.Warn("VMEXEC_POOL_REFILL_DELAY is not a duration of 0 or more; using the default", "value", v, "default", def)
	return def
}

// refillPool is fillPool after poolRefillDelay, in the background (ended early by
// Close).
func (s *Service) refillPool() {
	if poolRefillDelay == 0 {
		s.fillPool()
		return
	}
	s.goBackground(func() {
		t := time.NewTimer(poolRefillDelay)
		defer t.Stop()
		select {
		case <-t.C:
			s.fillPool()
		case <-s.work.Done():
		}
	})
}

// startPooled starts a pool sandbox with backend id: like startFresh, once the
// template snapshot is settled.
func (s *Service) startPooled(ctx context.Context, id string) (pooled, error) {
	spec := s.spec(id+"-0", s.cfg.Defaults.MemoryMB)
	if ref := s.templateRef(ctx, true); ref != "" {
		sb, err := s.snapperFor(s.def.Name()).Fork(ctx, ref, spec)
		if err == nil {
			// A restored sandbox's memory is mapped again as it is touched, which
			// costs its first python run ~20 ms more than a warm one; a run now, while
			// it waits in the pool, does that. It leaves nothing behind (its run
			// directory is removed, it writes no file), so the state is still the
			// shared image's as far as any program can tell.
			if _, werr := s.warmRun(ctx, sb, "python", "pass"); werr != nil {
				s.log.Warn("pool: warm-up run after the restore", "id", id, "err", werr)
			}
			return pooled{id: id, sb: sb, base: ref}, nil
		}
		s.log.Warn("pool: restore from the template snapshot failed; booting from the template", "image", ref, "err", err)
	}
	sb, err := s.def.Create(ctx, spec)
	if err != nil {
		return pooled{}, err
	}
	return pooled{id: id, sb: sb}, nil
}

// startedFrom records that e's live state is the shared image base, untouched: its
// first snapshot, current and clean, so that its first run takes no checkpoint; turn
// held. The record counts no bytes (the image's disk is shared).
func (e *entry) startedFrom(ctx context.Context, base string) {
	rec := history.Snapshot{ID: randID("snap-", 8), SandboxID: e.id, AgentID: e.agentID, Kind: history.SnapshotPreRun,
		Description: "the template snapshot (shared by every sandbox started from it)", Path: base, CreatedAt: time.Now().UTC()}
	if err := e.s.hist.PutSnapshot(ctx, rec); err != nil {
		e.s.log.Warn("recording the template snapshot; the first run takes its own", "id", e.id, "err", err)
		return
	}
	e.cleanSnap, e.current = rec.ID, rec.ID
	e.persist(ctx)
}
