package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
	"github.com/vmexec/vmexec/internal/template"
)

// printStore measures the snapshot store (cluster mode): for a default sandbox and
// for one holding 100 MB (of random bytes, which zstd cannot shrink: the worst case),
// the upload of its snapshot to S3 (SeaweedFS on loopback, `weed mini`, started
// here) and its restore from there on another node's scope (fetch + import + restore
// + first round trip), against the local restore of the same image (restore + first
// round trip) measured in the same run.
func printStore(tmp, runsc, agentPath string, tpl template.Template, weed string, n int) error {
	srv, err := snapstoretest.Start(weed, filepath.Join(tmp, "weed"))
	if err != nil {
		return err
	}
	defer srv.Stop()
	blobs, err := snapstore.NewS3(srv.Config())
	if err != nil {
		return err
	}
	st := &snapstore.Store{Blobs: blobs}
	node := func(name string) (*gvisor.Backend, error) {
		return gvisor.New(gvisor.Config{Runsc: runsc, StateDir: filepath.Join(tmp, "store-"+name), AgentPath: agentPath})
	}
	a, err := node("a")
	if err != nil {
		return err
	}
	b, err := node("b")
	if err != nil {
		return err
	}
	compat, err := b.ImageCompat(context.Background())
	if err != nil {
		return err
	}
	host := snapstore.Host{Compat: compat, TemplateHash: tpl.Hash}

	fmt.Printf("\n%-36s %4s %10s %10s %14s %12s\n", "snapshot store (S3 on loopback)", "n", "p50", "p95", "p50/local", "archive")
	for _, c := range []struct{ name, setup string }{
		{"default sandbox", "true"},
		{"sandbox holding 100 MB", "head -c 100M /dev/urandom > ~/big.bin"},
	} {
		if err := storeCase(a, b, st, host, tpl, c.name, c.setup, n); err != nil {
			return err
		}
	}
	return nil
}

func storeCase(a, b *gvisor.Backend, st *snapstore.Store, host snapstore.Host, tpl template.Template, name, setup string, n int) error {
	ctx := context.Background()
	spec := func(id string) backend.Spec {
		return backend.Spec{ID: id, Template: tpl, MemoryBytes: 512 << 20, MaxPIDs: 4096}
	}
	slug := strings.ReplaceAll(name, " ", "-")
	sb, err := a.Create(ctx, spec("bench-store-"+slug))
	if err != nil {
		return err
	}
	defer sb.Destroy(ctx)
	if r, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: setup}, nil); err != nil || r.ExitCode != 0 {
		return fmt.Errorf("%s setup: %+v %v", name, r, err)
	}
	img, err := a.Snapshot(ctx, sb)
	if err != nil {
		return err
	}
	defer a.DeleteImage(ctx, img.Ref)
	restore := func(be *gvisor.Backend, ref string, i int) error {
		f, err := be.Fork(ctx, ref, spec(fmt.Sprintf("bench-store-%s-%d", slug, i)))
		if err != nil {
			return err
		}
		defer f.Destroy(ctx)
		return f.Ping(ctx)
	}
	// Interleaved, one of each per round, so that the host's load (these machines are
	// shared) falls on the three alike.
	local, up, fromStore := series{name: name + ": local restore"}, series{name: name + ": upload"}, series{name: name + ": restore from store"}
	var archive int64
	timed := func(s *series, f func() error) error {
		t := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		s.d = append(s.d, time.Since(t))
		return nil
	}
	for i := 0; i < n; i++ {
		key := snapstore.Key("bench", fmt.Sprintf("%s-%d", slug, i))
		if err := timed(&local, func() error { return restore(a, img.Ref, i) }); err != nil {
			return err
		}
		if err := timed(&up, func() error {
			m, err := st.Upload(ctx, a, img.Ref, snapstore.Manifest{Key: key, SnapshotID: "bench", SandboxID: "bench", TemplateHash: tpl.Hash})
			archive = m.ArchiveBytes
			return err
		}); err != nil {
			return err
		}
		if err := timed(&fromStore, func() error {
			imported, _, err := st.Fetch(ctx, b, key, host)
			if err != nil {
				return err
			}
			defer b.DeleteImage(ctx, imported.Ref)
			return restore(b, imported.Ref, n+i)
		}); err != nil {
			return err
		}
	}
	for i := 0; i < n; i++ {
		st.Delete(ctx, snapstore.Key("bench", fmt.Sprintf("%s-%d", slug, i)))
	}
	base := local.pct(0.5)
	fmt.Printf("%-36s %4s %10s\n", name+": image", "", mb(img.SizeBytes))
	for _, s := range []series{local, up, fromStore} {
		extra := ""
		if s.name == up.name {
			extra = mb(archive)
		}
		fmt.Printf("%-36s %4d %10s %10s %13.2fx %12s\n", s.name, len(s.d), s.pct(0.5).Round(time.Millisecond), s.pct(0.95).Round(time.Millisecond),
			float64(s.pct(0.5))/float64(base), extra)
	}
	return nil
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// weedPath is the SeaweedFS binary scripts/setup built, or "".
func weedPath(dataDir string) string {
	for _, p := range []string{os.Getenv("VMEXEC_WEED"), filepath.Join(dataDir, "tools", "weed")} {
		if fi, err := os.Stat(p); p != "" && err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

type storeOpts struct {
	on, only bool
	n        int
}

var storeFlags storeOpts
