package gvisor

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/vmexec/vmexec/internal/backend"
)

var _ backend.ImageExporter = (*Backend)(nil)

// ExportImage implements backend.ImageExporter: a tar archive of the image's
// directory (runsc checkpoint's files).
func (b *Backend) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	return backend.ImageDir(b.cfg.images()).Export(ref, ctxWriter{ctx, w})
}

// ImportImage implements backend.ImageExporter.
func (b *Backend) ImportImage(ctx context.Context, r io.Reader) (backend.Image, error) {
	ref, err := backend.ImageDir(b.cfg.images()).Import(ctxReader{ctx, r})
	if err != nil {
		return backend.Image{}, err
	}
	return b.imageInfo(ref)
}

// ImageCompat implements backend.ImageExporter: a runsc checkpoint restores only
// with the same runsc build and platform, on a CPU with the features it was taken on.
func (b *Backend) ImageCompat(ctx context.Context) (backend.ImageCompat, error) {
	v, err := b.version(ctx)
	if err != nil {
		return backend.ImageCompat{}, err
	}
	p := b.cfg.Platform
	if p == "" {
		p = "systrap" // runsc's default
	}
	return backend.ImageCompat{Backend: Name, Version: v, Platform: p, CPUFeatures: backend.HostCPUFeatures()}, nil
}

var versions sync.Map // runsc path → its version

// version is runsc's version: the gVisor module version it was built from (a `go
// install`ed runsc says VERSION_MISSING to --version), else what --version says;
// asked once per binary.
func (b *Backend) version(ctx context.Context) (string, error) {
	if v, ok := versions.Load(b.cfg.Runsc); ok {
		return v.(string), nil
	}
	v := ""
	if bi, err := buildinfo.ReadFile(b.cfg.Runsc); err == nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	} else {
		out, err := b.runsc(ctx, "--version")
		if err != nil {
			return "", fmt.Errorf("runsc version: %w", err)
		}
		if f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0]); len(f) > 0 {
			v = f[len(f)-1]
		}
	}
	versions.Store(b.cfg.Runsc, v)
	return v, nil
}

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
