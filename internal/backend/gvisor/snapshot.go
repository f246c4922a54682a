package gvisor

import (
	"context"
	"fmt"
	"os"

	"github.com/vmexec/vmexec/internal/backend"
)

// Snapshot implements backend.Snapshotter with `runsc checkpoint --leave-running`: the
// image holds the sandbox's memory, processes and in-memory root overlay together.
// The guest must be idle (no request in flight); the service guarantees it.
func (b *Backend) Snapshot(ctx context.Context, s backend.Sandbox, dir string) error {
	sb, ok := s.(*Sandbox)
	if !ok {
		return fmt.Errorf("snapshot: not a gvisor sandbox")
	}
	select {
	case <-sb.exited:
		return sb.deadError()
	default:
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("snapshot dir: %w", err)
	}
	if _, err := b.runsc(ctx, "checkpoint", "--leave-running", "--image-path", dir, sb.id); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("snapshot %s: %w", sb.id, err)
	}
	return nil
}

// Restore implements backend.Snapshotter: the old container is removed and a new one
// with the same id is restored from the image, its agent reached over new pipes.
func (b *Backend) Restore(ctx context.Context, s backend.Sandbox, dir string, spec backend.Spec) (backend.Sandbox, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("snapshot image %s: %w", dir, backend.ErrNotFound)
	}
	if s != nil {
		if err := s.Destroy(ctx); err != nil {
			return nil, fmt.Errorf("restore: remove current sandbox: %w", err)
		}
	}
	sb, err := b.start(ctx, spec, dir)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return sb, nil
}

// Fork implements backend.Snapshotter.
func (b *Backend) Fork(ctx context.Context, dir string, spec backend.Spec) (backend.Sandbox, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("snapshot image %s: %w", dir, backend.ErrNotFound)
	}
	sb, err := b.start(ctx, spec, dir)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	return sb, nil
}
