package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/microvm/qmp"
	"github.com/vmexec/vmexec/internal/fsutil"
)

// A snapshot directory holds these files, and the kernel and initramfs the VM booted
// (vmlinuz, initrd.cpio); meta.json is written last, so a directory without it is not
// a snapshot.
const (
	stateFile = "state" // the VM's RAM and device state: a QEMU migration stream
	// diskFile ("disk.qcow2") is the disk's writable layer, backed by the image's disk.
	snapMetaFile = "meta.json"
	snapVersion  = 1
)

// snapMeta describes a snapshot: the machine that must be started to restore it.
type snapMeta struct {
	Version int       `json:"version"`
	Backend string    `json:"backend"`
	Sandbox string    `json:"sandbox"`
	Taken   time.Time `json:"taken"`
	VM      vmMeta    `json:"vm"`
	// Seconds spent with the VM stopped, and sizes, for the curious.
	PausedSeconds float64 `json:"paused_seconds"`
	StateBytes    int64   `json:"state_bytes"`
	DiskBytes     int64   `json:"disk_bytes"`
}

// Snapshot implements backend.Snapshotter. The VM is stopped while its state is
// written and its disk layer copied, then continues; the guest must be idle (no
// request in flight), which the service guarantees. The image is written under
// images/<ref>.tmp and renamed into place when whole.
func (b *Backend) Snapshot(ctx context.Context, s backend.Sandbox) (backend.Image, error) {
	sb, ok := s.(*Sandbox)
	if !ok {
		return backend.Image{}, fmt.Errorf("snapshot: not a %s sandbox", Name)
	}
	if err := sb.waitWarm(ctx); err != nil {
		return backend.Image{}, fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	if !sb.proc.alive() {
		return backend.Image{}, sb.deadError()
	}
	ref := backend.NewImageRef()
	final := b.cfg.image(ref)
	tmp := final + backend.ImageTmpSuffix
	if err := b.snapshotInto(ctx, sb, tmp); err != nil {
		os.RemoveAll(tmp)
		return backend.Image{}, fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return backend.Image{}, fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	return b.imageInfo(ref)
}

// snapshotInto writes sb's image into dir.
func (b *Backend) snapshotInto(ctx context.Context, sb *Sandbox, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("snapshot dir: %w", err)
	}
	state, disk := filepath.Join(dir, stateFile+".tmp"), filepath.Join(dir, diskFile+".tmp")
	start := time.Now()
	if err := sb.save(ctx, state, disk); err != nil {
		return err
	}
	paused := time.Since(start)
	if sb.meta.Lower {
		// Make the layer stand alone: fold the restored snapshot's layer below it into
		// it, so that it is backed by the image's disk directly. Only data above the
		// base is read.
		if err := b.qemuImg(ctx, "rebase", "-q", "-f", "qcow2", "-b", sb.meta.Base, "-F", sb.meta.BaseFormat, disk); err != nil {
			return err
		}
	}
	for _, f := range []string{stateFile, diskFile} {
		if err := os.Rename(filepath.Join(dir, f+".tmp"), filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	// The restore needs the very kernel and initramfs the VM booted.
	if err := linkOrCopy(sb.meta.Kernel, filepath.Join(dir, kernelFile)); err != nil {
		return fmt.Errorf("snapshot kernel: %w", err)
	}
	if err := linkOrCopy(sb.meta.Initrd, filepath.Join(dir, initrdFile)); err != nil {
		return fmt.Errorf("snapshot initramfs: %w", err)
	}
	vm := sb.meta
	vm.Lower = false
	vm.Kernel, vm.Initrd = kernelFile, initrdFile // relative to the snapshot
	m := snapMeta{Version: snapVersion, Backend: Name, Sandbox: sb.id, Taken: time.Now().UTC(), VM: vm,
		PausedSeconds: paused.Seconds(), StateBytes: fileSize(filepath.Join(dir, stateFile)), DiskBytes: fileSize(filepath.Join(dir, diskFile))}
	if err := writeJSON(filepath.Join(dir, snapMetaFile), m); err != nil {
		return fmt.Errorf("snapshot meta: %w", err)
	}
	b.log.Debug("snapshot taken", "id", sb.id, "dir", dir, "paused_ms", paused.Milliseconds(), "state_bytes", m.StateBytes, "disk_bytes", m.DiskBytes)
	return nil
}

// save stops the VM, migrates its state into statePath, copies its disk layer to
// diskPath and lets the VM continue, whatever happened.
func (sb *Sandbox) save(ctx context.Context, statePath, diskPath string) (err error) {
	q := sb.qmp
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if cerr := q.Execute(cctx, "cont", nil, nil); cerr != nil && err == nil {
			err = fmt.Errorf("resume the VM: %w", cerr)
		}
	}()
	// The default bandwidth cap (128 MiB/s) would only slow a paused VM's save down.
	if err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(statePath)}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, q); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		q.Execute(cctx, "migrate_cancel", nil, nil)
		cancel()
		return err
	}
	// The migration has flushed the disk and QEMU holds it inactive until cont: the
	// layer on disk now matches the saved memory.
	if err := fsutil.CopyFile(filepath.Join(sb.dir, diskFile), diskPath, 0o600); err != nil {
		return fmt.Errorf("copy disk layer: %w", err)
	}
	return nil
}

// incoming loads the VM state saved in statePath into a QEMU started with
// -incoming defer, and runs the VM.
func (sb *Sandbox) incoming(ctx context.Context, statePath string) error {
	if err := sb.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(statePath)}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, sb.qmp); err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	// The VM was stopped when saved, so it is stopped now.
	return sb.qmp.Execute(ctx, "cont", nil, nil)
}

// waitMigration polls query-migrate until the migration (outgoing, or incoming on a
// destination) completes or fails; a MIGRATION event cuts a poll interval short.
func waitMigration(ctx context.Context, q *qmp.Client) error {
	for {
		var info struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.Execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration: %w", ctx.Err())
		case <-q.Done():
			return fmt.Errorf("migration: %w", qmp.ErrClosed)
		case <-q.Events():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func readSnapMeta(dir string) (snapMeta, error) {
	var m snapMeta
	b, err := os.ReadFile(filepath.Join(dir, snapMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("snapshot image %s: %w", dir, backend.ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("snapshot image: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("snapshot image %s: %w", dir, err)
	}
	if m.Backend != Name || m.Version != snapVersion {
		return m, fmt.Errorf("snapshot image %s: backend %q version %d, want %s version %d", dir, m.Backend, m.Version, Name, snapVersion)
	}
	m.VM.Kernel, m.VM.Initrd = filepath.Join(dir, m.VM.Kernel), filepath.Join(dir, m.VM.Initrd)
	for _, f := range []string{m.VM.Kernel, m.VM.Initrd, m.VM.Base, filepath.Join(dir, stateFile), filepath.Join(dir, diskFile)} {
		if !exists(f) {
			return m, fmt.Errorf("snapshot image %s: %s is gone: %w", dir, f, backend.ErrNotFound)
		}
	}
	return m, nil
}

// Fork implements backend.Snapshotter. The new VM has the snapshot's memory and CPUs,
// whatever spec says.
func (b *Backend) Fork(ctx context.Context, ref string, spec backend.Spec) (backend.Sandbox, error) {
	dir, err := b.imageDir(ref)
	if err != nil {
		return nil, err
	}
	m, err := readSnapMeta(dir)
	if err != nil {
		return nil, err
	}
	return b.fromSnapshot(ctx, m, dir, spec, "fork")
}

// DeleteImage implements backend.Snapshotter.
func (b *Backend) DeleteImage(ctx context.Context, ref string) error {
	return backend.ImageDir(b.cfg.images()).Delete(ref)
}

// ListImages implements backend.Snapshotter; it removes half-written images.
func (b *Backend) ListImages(ctx context.Context) ([]backend.Image, error) {
	return backend.ImageDir(b.cfg.images()).List(b.imageInfo)
}

func (b *Backend) imageDir(ref string) (string, error) {
	return backend.ImageDir(b.cfg.images()).Open(ref)
}

func (b *Backend) imageInfo(ref string) (backend.Image, error) {
	dir, err := b.imageDir(ref)
	if err != nil {
		return backend.Image{}, err
	}
	img := backend.Image{Ref: ref, SizeBytes: fsutil.DirSize(dir)}
	if m, err := readSnapMeta(dir); err == nil {
		img.CreatedAt = m.Taken
	}
	return img, nil
}

func (b *Backend) fromSnapshot(ctx context.Context, m snapMeta, dir string, spec backend.Spec, op string) (backend.Sandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	vm := m.VM
	vm.ID = spec.ID
	start := time.Now()
	sb, err := b.start(ctx, vm, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	b.log.Debug("sandbox restored", "op", op, "id", spec.ID, "from", dir, "ms", time.Since(start).Milliseconds())
	return sb, nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}
