package backend

import (
	"context"
	"io"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// GuestFiles implements Sandbox's Ping and file methods for a backend whose guest
// agent speaks agentproto through one Client, as both of today's backends do. Every
// call goes through Do, the backend's own wrapper (it fails fast on a dead sandbox and
// classifies a failed call into this package's errors). A backend embeds it in its
// sandbox type and sets both fields once the client is dialled.
type GuestFiles struct {
	Client *agentproto.Client
	Do     func(ctx context.Context, call func() error) error
}

// Ping implements Sandbox.
func (g *GuestFiles) Ping(ctx context.Context) error {
	return g.Do(ctx, func() error { return g.Client.Ping(ctx) })
}

// WriteFile implements Sandbox.
func (g *GuestFiles) WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) error {
	return g.Do(ctx, func() error { return g.Client.WriteFile(ctx, path, mode, r) })
}

// OpenFile implements Sandbox.
func (g *GuestFiles) OpenFile(ctx context.Context, path string) (fi agentproto.FileInfo, rc io.ReadCloser, err error) {
	err = g.Do(ctx, func() error {
		fi, rc, err = g.Client.OpenFile(ctx, path)
		return err
	})
	return fi, rc, err
}

// StatFile implements Sandbox.
func (g *GuestFiles) StatFile(ctx context.Context, path string) (fi agentproto.FileInfo, err error) {
	err = g.Do(ctx, func() error {
		fi, err = g.Client.StatFile(ctx, path)
		return err
	})
	return fi, err
}

// ListFiles implements Sandbox.
func (g *GuestFiles) ListFiles(ctx context.Context, path string, depth int) (list []agentproto.FileInfo, err error) {
	err = g.Do(ctx, func() error {
		list, err = g.Client.ListFiles(ctx, path, depth)
		return err
	})
	return list, err
}

// MakeDir implements Sandbox.
func (g *GuestFiles) MakeDir(ctx context.Context, path string) error {
	return g.Do(ctx, func() error { return g.Client.MakeDir(ctx, path) })
}

// RemoveFile implements Sandbox.
func (g *GuestFiles) RemoveFile(ctx context.Context, path string, recursive bool) error {
	return g.Do(ctx, func() error { return g.Client.RemoveFile(ctx, path, recursive) })
}
