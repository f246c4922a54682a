package gvisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/vmexec/vmexec/internal/backend"
)

// Shared images (backend.SharedImager): the template snapshot. A shared image is an
// ordinary checkpoint (taken by Snapshot) renamed to images/shared-<digest>, where the
// digest covers the caller's key and what this backend puts into every sandbox: the
// runsc version, the guest agent binary's content and runsc's global flags. So a new
// runsc or agent build is simply a new reference, and the image is made again;
// backend.ImageDir leaves shared-* images to DeleteShared.

var _ backend.SharedImager = (*Backend)(nil)

// sharedInputs is the digest of what this backend puts into every sandbox, computed
// once per backend (it reads the agent binary and runs runsc --version); a failure
// (a context that ended) is not cached.
type sharedInputs struct {
	mu     sync.Mutex
	digest string
}

func (b *Backend) inputsDigest(ctx context.Context) (string, error) {
	in := &b.shared
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.digest != "" {
		return in.digest, nil
	}
	h := sha256.New()
	ver, err := exec.CommandContext(ctx, b.cfg.Runsc, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("runsc --version: %w", err)
	}
	fmt.Fprintf(h, "runsc %s\x00args %s\x00cpus %v\x00", ver, strings.Join(b.globalArgs()[2:], " "), b.cfg.CPUs)
	if len(b.cfg.GuestEnv) > 0 {
		fmt.Fprintf(h, "guest env %q\x00", b.cfg.GuestEnv)
	}
	f, err := os.Open(b.cfg.AgentPath)
	if err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	in.digest = hex.EncodeToString(h.Sum(nil))
	return in.digest, nil
}

// sharedRef is the reference of key's shared image under the backend's current inputs.
func (b *Backend) sharedRef(ctx context.Context, key string) (string, error) {
	d, err := b.inputsDigest(ctx)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(key + "\x00" + d))
	return backend.SharedPrefix + hex.EncodeToString(sum[:12]), nil
}

// SharedImage implements backend.SharedImager.
func (b *Backend) SharedImage(ctx context.Context, key string) (backend.Image, error) {
	ref, err := b.sharedRef(ctx, key)
	if err != nil {
		return backend.Image{}, err
	}
	img, err := b.imageInfo(ref)
	if err != nil {
		return backend.Image{}, err
	}
	img.Shared = true
	return img, nil
}

// SaveShared implements backend.SharedImager: a Snapshot, renamed into the shared
// reference (replacing an image already there).
func (b *Backend) SaveShared(ctx context.Context, sb backend.Sandbox, key string) (backend.Image, error) {
	ref, err := b.sharedRef(ctx, key)
	if err != nil {
		return backend.Image{}, err
	}
	img, err := b.Snapshot(ctx, sb)
	if err != nil {
		return backend.Image{}, err
	}
	dir := backend.ImageDir(b.cfg.images())
	if err := dir.DeleteShared(ref); err != nil {
		dir.Delete(img.Ref)
		return backend.Image{}, err
	}
	if err := os.Rename(dir.Path(img.Ref), dir.Path(ref)); err != nil {
		dir.Delete(img.Ref)
		return backend.Image{}, fmt.Errorf("save shared image: %w", err)
	}
	img.Ref, img.Shared = ref, true
	return img, nil
}

// DeleteShared implements backend.SharedImager.
func (b *Backend) DeleteShared(ctx context.Context, ref string) error {
	return backend.ImageDir(b.cfg.images()).DeleteShared(ref)
}
