package gvisor

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/fsutil"
)

// An image is images/<ref>/ under the state dir, written as images/<ref>.tmp and
// renamed into place when whole: a directory with the .tmp suffix is a crash's
// leftover, never listed, and removed by ListImages.

// Snapshot implements backend.Snapshotter: a checkpoint that leaves the sandbox
// running (see Config.Checkpoint for how it is asked for); the image holds the
// sandbox's memory, processes and in-memory root overlay together. The guest must be
// idle (no request in flight); the service guarantees it.
func (b *Backend) Snapshot(ctx context.Context, s backend.Sandbox) (backend.Image, error) {
	sb, ok := s.(*Sandbox)
	if !ok {
		return backend.Image{}, fmt.Errorf("snapshot: not a gvisor sandbox")
	}
	select {
	case <-sb.exited:
		return backend.Image{}, sb.deadError()
	default:
	}
	t := time.Now()
	ref := backend.NewImageRef()
	final := b.cfg.image(ref)
	tmp := final + backend.ImageTmpSuffix
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return backend.Image{}, fmt.Errorf("snapshot dir: %w", err)
	}
	t = b.observe("snapshot", "mkdir", t)
	var err error
	if b.cfg.Checkpoint == CheckpointRunsc {
		_, err = b.runsc(ctx, "checkpoint", "--leave-running", "--image-path", tmp, sb.id)
	} else {
		err = b.checkpointDirect(ctx, sb.id, tmp)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return backend.Image{}, fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	t = b.observe("snapshot", "save ("+b.cfg.Checkpoint+")", t)
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return backend.Image{}, fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	t = b.observe("snapshot", "rename", t)
	img, err := b.imageInfo(ref)
	b.observe("snapshot", "size", t)
	return img, err
}

// Fork implements backend.Snapshotter: a new container restored from the image, its
// agent reached over new pipes; into a standby when one of spec's shape is ready (then
// the sandbox's ID is the standby's, see standby.go). runsc reads the image during the
// restore only.
func (b *Backend) Fork(ctx context.Context, ref string, spec backend.Spec) (backend.Sandbox, error) {
	dir, err := b.imageDir(ref)
	if err != nil {
		return nil, err
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	defer b.refillStandby(spec)
	t := time.Now()
	if st := b.takeStandby(ctx, spec); st != nil { // standby.go
		sb, err := b.restoreInto(ctx, st, dir)
		if err == nil {
			b.observe("restore", "total (standby, "+b.cfg.Restore+")", t)
			return sb, nil
		}
		b.log.Warn("restore into a standby failed; restoring afresh", "err", err)
	}
	sb, err := b.start(ctx, spec, dir)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	b.observe("restore", "total (afresh)", t)
	return sb, nil
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
	if fi, err := os.Stat(dir); err == nil {
		img.CreatedAt = fi.ModTime().UTC()
	}
	return img, nil
}
