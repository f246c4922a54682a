package snapstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
)

// dirExporter is a backend.ImageExporter over an image directory, as the file-based
// backends are, with a compat of its own.
type dirExporter struct {
	dir    backend.ImageDir
	compat backend.ImageCompat
}

func (d dirExporter) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	return d.dir.Export(ref, w)
}
func (d dirExporter) ImportImage(ctx context.Context, r io.Reader) (backend.Image, error) {
	ref, err := d.dir.Import(r)
	return backend.Image{Ref: ref}, err
}
func (d dirExporter) ImageCompat(context.Context) (backend.ImageCompat, error) { return d.compat, nil }

var compat = backend.ImageCompat{Backend: "gvisor", Version: "v1", Platform: "systrap", CPUFeatures: []string{"avx2", "sse2"}}

func newImage(t *testing.T, files map[string][]byte) (dirExporter, string) {
	t.Helper()
	d := dirExporter{dir: backend.ImageDir(t.TempDir()), compat: compat}
	ref := backend.NewImageRef()
	for name, b := range files {
		p := filepath.Join(d.dir.Path(ref), name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d, ref
}

func TestDirBlobs(t *testing.T) { snapstoretest.Run(t, snapstore.Dir(t.TempDir())) }

func TestS3Blobs(t *testing.T) { snapstoretest.Run(t, snapstoretest.S3(t)) }

// TestUploadFetch guards the round trip on both stores: an image uploaded, the
// local copy gone, fetched into another scope with every byte as it was, and the
// manifest saying where it came from.
func TestUploadFetch(t *testing.T) {
	for name, blobs := range map[string]func(t *testing.T) snapstore.Blobs{
		"dir": func(t *testing.T) snapstore.Blobs { return snapstore.Dir(t.TempDir()) },
		"s3":  func(t *testing.T) snapstore.Blobs { return snapstoretest.S3(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			big := make([]byte, 3<<20)
			rand.Read(big)
			files := map[string][]byte{"checkpoint.img": []byte(strings.Repeat("state", 1000)), "pages.img": big, "sub/meta": []byte("m")}
			src, ref := newImage(t, files)
			st := &snapstore.Store{Blobs: blobs(t), Node: "node-a"}
			key := snapstore.Key("sb-1", "snap-1")
			m, err := st.Upload(ctx, src, ref, snapstore.Manifest{Key: key, SnapshotID: "snap-1", SandboxID: "sb-1", AgentID: "ag", Parent: "snap-0", TemplateHash: "h1", Template: "default-h1"})
			if err != nil {
				t.Fatal(err)
			}
			if m.ArchiveBytes <= 0 || m.ImageBytes < int64(len(big)) || m.SHA256 == "" || m.Node != "node-a" || m.Compat.Version != "v1" {
				t.Fatalf("manifest %+v: want sizes, checksum, node and compat", m)
			}
			if ok, err := st.Exists(ctx, key); !ok || err != nil {
				t.Fatalf("exists after upload: %v, %v", ok, err)
			}
			src.dir.Delete(ref) // the local copy is gone

			dst := dirExporter{dir: backend.ImageDir(t.TempDir()), compat: compat}
			img, got, err := st.Fetch(ctx, dst, key, snapstore.Host{Compat: compat, TemplateHash: "h1"})
			if err != nil {
				t.Fatal(err)
			}
			if got.Parent != "snap-0" || got.AgentID != "ag" {
				t.Errorf("fetched manifest %+v", got)
			}
			for name, want := range files {
				b, err := os.ReadFile(filepath.Join(dst.dir.Path(img.Ref), name))
				if err != nil || !bytes.Equal(b, want) {
					t.Errorf("%s after fetch: %d bytes (%v), want %d", name, len(b), err, len(want))
				}
			}
			if err := st.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.Fetch(ctx, dst, key, snapstore.Host{Compat: compat, TemplateHash: "h1"}); !errors.Is(err, snapstore.ErrNotFound) {
				t.Fatalf("fetch after delete: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestFetchRefusesMismatch guards restore-only-where-it-fits: each field that differs
// is refused with an error naming it, and nothing is imported.
func TestFetchRefusesMismatch(t *testing.T) {
	ctx := context.Background()
	src, ref := newImage(t, map[string][]byte{"checkpoint.img": []byte("x")})
	st := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	key := snapstore.Key("sb", "snap")
	if _, err := st.Upload(ctx, src, ref, snapstore.Manifest{Key: key, SnapshotID: "snap", SandboxID: "sb", TemplateHash: "h1"}); err != nil {
		t.Fatal(err)
	}
	with := func(f func(*snapstore.Host)) snapstore.Host {
		h := snapstore.Host{Compat: compat, TemplateHash: "h1"}
		h.Compat.CPUFeatures = append([]string(nil), compat.CPUFeatures...)
		f(&h)
		return h
	}
	for _, tc := range []struct {
		name, field string
		host        snapstore.Host
	}{
		{"runsc version", "version", with(func(h *snapstore.Host) { h.Compat.Version = "v2" })},
		{"platform", "platform", with(func(h *snapstore.Host) { h.Compat.Platform = "ptrace" })},
		{"backend", "backend", with(func(h *snapstore.Host) { h.Compat.Backend = "microvm" })},
		{"cpu features", "cpu_features", with(func(h *snapstore.Host) { h.Compat.CPUFeatures = []string{"sse2"} })},
		{"template", "template_hash", with(func(h *snapstore.Host) { h.TemplateHash = "h2" })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := dirExporter{dir: backend.ImageDir(t.TempDir())}
			_, _, err := st.Fetch(ctx, dst, key, tc.host)
			if !errors.Is(err, snapstore.ErrIncompatible) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("fetch on a host with another %s: %v, want ErrIncompatible naming %s", tc.name, err, tc.field)
			}
			if ents, _ := os.ReadDir(string(dst.dir)); len(ents) != 0 {
				t.Fatalf("a refused fetch left %d entries in the image dir", len(ents))
			}
		})
	}
	// A host with more CPU features than the image's restores it.
	more := with(func(h *snapstore.Host) { h.Compat.CPUFeatures = append(h.Compat.CPUFeatures, "avx512f") })
	if _, _, err := st.Fetch(ctx, dirExporter{dir: backend.ImageDir(t.TempDir())}, key, more); err != nil {
		t.Fatalf("fetch on a host with a superset of the CPU features: %v", err)
	}
}

// TestFetchCorrupt guards the checksum: an archive changed in the store is refused
// and leaves no image.
func TestFetchCorrupt(t *testing.T) {
	ctx := context.Background()
	src, ref := newImage(t, map[string][]byte{"checkpoint.img": bytes.Repeat([]byte("abc"), 100000)})
	dir := t.TempDir()
	st := &snapstore.Store{Blobs: snapstore.Dir(dir)}
	key := snapstore.Key("sb", "snap")
	if _, err := st.Upload(ctx, src, ref, snapstore.Manifest{Key: key, SnapshotID: "snap", SandboxID: "sb", TemplateHash: "h"}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, filepath.FromSlash(key)+".tar.zst")
	b, _ := os.ReadFile(p)
	b = append(b, 0) // one more byte: the size no longer matches
	os.WriteFile(p, b, 0o600)
	dst := dirExporter{dir: backend.ImageDir(t.TempDir())}
	if _, _, err := st.Fetch(ctx, dst, key, snapstore.Host{Compat: compat, TemplateHash: "h"}); !errors.Is(err, snapstore.ErrCorrupt) {
		t.Fatalf("fetch of a changed archive: %v, want ErrCorrupt", err)
	}
	if ents, _ := os.ReadDir(string(dst.dir)); len(ents) != 0 {
		t.Fatalf("a corrupt fetch left %d entries", len(ents))
	}
}

// TestImportRefusesEscape guards the importer: an archive entry naming a path outside
// the image is refused and nothing is left.
func TestImportRefusesEscape(t *testing.T) {
	var buf bytes.Buffer
	tw := newTar(&buf, "../../etc/evil", "x")
	tw.Close()
	d := backend.ImageDir(t.TempDir())
	if _, err := d.Import(&buf); err == nil || !strings.Contains(err.Error(), "leaves the image") {
		t.Fatalf("import of an escaping entry: %v", err)
	}
	if ents, _ := os.ReadDir(string(d)); len(ents) != 0 {
		t.Fatalf("left %d entries", len(ents))
	}
}
