package microvm

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	"github.com/vmexec/vmexec/internal/backend"
)

var _ backend.ImageExporter = (*Backend)(nil)

// ExportImage implements backend.ImageExporter: a tar archive of the snapshot's
// directory (the VM's state, its disk layer, meta.json, the kernel and initramfs it
// booted). The disk layer is backed by the template's guest disk image, which is not
// in the archive: the restoring host needs the same template (the snapshot store
// checks its hash) under the same templates directory.
func (b *Backend) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	return backend.ImageDir(b.cfg.images()).Export(ref, writerCtx{ctx, w})
}

// ImportImage implements backend.ImageExporter. An image whose base disk is not on
// this host imports, but Fork reports it ErrNotFound (its meta names a missing file).
func (b *Backend) ImportImage(ctx context.Context, r io.Reader) (backend.Image, error) {
	ref, err := backend.ImageDir(b.cfg.images()).Import(readerCtx{ctx, r})
	if err != nil {
		return backend.Image{}, err
	}
	if _, err := readSnapMeta(b.cfg.image(ref)); err != nil {
		backend.ImageDir(b.cfg.images()).Delete(ref)
		return backend.Image{}, fmt.Errorf("import image: %w", err)
	}
	return b.imageInfo(ref)
}

// ImageCompat implements backend.ImageExporter: a QEMU migration stream restores with
// the same QEMU and accelerator; under KVM (-cpu host) on a CPU with the features it
// was taken on (TCG emulates a fixed CPU).
func (b *Backend) ImageCompat(ctx context.Context) (backend.ImageCompat, error) {
	v, err := qemuVersion(ctx, b.cfg.QEMU)
	if err != nil {
		return backend.ImageCompat{}, err
	}
	c := backend.ImageCompat{Backend: Name, Version: v, Platform: b.Accel()}
	if c.Platform == AccelKVM {
		c.CPUFeatures = backend.HostCPUFeatures()
	}
	return c, nil
}

var qemuVersions sync.Map // binary → version

func qemuVersion(ctx context.Context, qemu string) (string, error) {
	if v, ok := qemuVersions.Load(qemu); ok {
		return v.(string), nil
	}
	out, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("qemu version: %w", err)
	}
	v := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]) // "QEMU emulator version 7.2.x (Debian …)"
	qemuVersions.Store(qemu, v)
	return v, nil
}

type writerCtx struct {
	ctx context.Context
	w   io.Writer
}

func (c writerCtx) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (c readerCtx) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
