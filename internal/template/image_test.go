package template

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// cpioEntry is one entry of a newc archive, as a reader sees it.
type cpioEntry struct {
	Name       string
	Mode       uint32
	RdevMajor  int
	RdevMinor  int
	Data       string
	DataLength int
}

// readCpio parses a newc archive up to its trailer.
func readCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) int {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field at %d: %v", off, err)
		}
		return int(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no header at offset %d", off)
		}
		mode, size, rmaj, rmin, nameLen := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+nameLen-1])
		dataOff := align(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			if dataOff != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-dataOff)
			}
			return out
		}
		e := cpioEntry{Name: name, Mode: uint32(mode), RdevMajor: rmaj, RdevMinor: rmin, DataLength: size}
		if size < 4096 {
			e.Data = string(b[dataOff : dataOff+size])
		}
		out = append(out, e)
		off = align(dataOff + size)
	}
}

// Guards the initramfs format: entries the kernel unpacks with the right names,
// types, device numbers and contents, 4-byte aligned, ending with the trailer.
func TestCpioWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCpioWriter(&buf)
	w.dir("bin", 0o755)
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("init", 0o755, []byte("#!/bin/sh\n"))
	w.file("odd", 0o644, []byte("12345"))
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	got := readCpio(t, buf.Bytes())
	want := []cpioEntry{
		{Name: "bin", Mode: 0o040755},
		{Name: "dev/console", Mode: 0o020600, RdevMajor: 5, RdevMinor: 1},
		{Name: "init", Mode: 0o100755, Data: "#!/bin/sh\n", DataLength: 10},
		{Name: "odd", Mode: 0o100644, Data: "12345", DataLength: 5},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("archive (-want +got):\n%s", d)
	}
	// Cross-check with a real cpio reader when there is one.
	if bb, err := exec.LookPath("busybox"); err == nil {
		cmd := exec.Command(bb, "cpio", "-t")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("busybox cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); !cmp.Equal(got, []string{"bin", "dev/console", "init", "odd"}) {
			t.Fatalf("busybox cpio lists %v", got)
		}
	}
}

// fakeModules makes a modules directory: virtio_mmio needs virtio which needs
// virtio_ring; virtio_blk is gzip-compressed; ext4 is built in.
func fakeModules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"kernel/drivers/virtio/virtio_ring.ko":    "ring",
		"kernel/drivers/virtio/virtio.ko":         "virtio",
		"kernel/drivers/virtio/virtio_mmio.ko":    "mmio",
		"kernel/drivers/char/virtio_console.ko":   "console",
		"kernel/drivers/block/virtio_blk.ko.gz":   "",
		"modules.builtin":                         "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n",
		"kernel/drivers/net/unrelated-module.ko":  "x",
		"kernel/drivers/virtio/virtio_balloon.ko": "balloon",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if strings.HasSuffix(name, ".gz") {
			f, _ := os.Create(p)
			zw := gzip.NewWriter(f)
			zw.Write([]byte("blk"))
			zw.Close()
			f.Close()
			continue
		}
		os.WriteFile(p, []byte(content), 0o644)
	}
	dep := `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_balloon.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/unrelated-module.ko:
`
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	return dir
}

// Guards module loading: dependencies come before the modules that need them, each
// once; built-in modules are skipped; a compressed module is unpacked; a module the
// kernel lacks altogether is an error naming it.
func TestResolveModules(t *testing.T) {
	dir := fakeModules(t)
	mods, err := resolveModules(dir, GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.name)
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console"}
	if d := cmp.Diff(want, names); d != "" {
		t.Fatalf("load order (-want +got):\n%s", d)
	}
	data, err := readModule(mods[3].path)
	if err != nil || string(data) != "blk" {
		t.Fatalf("compressed module: %q, %v", data, err)
	}
	if _, err := resolveModules(dir, []string{"unrelated-module"}); err != nil {
		t.Fatalf("dash in a module name: %v", err)
	}
	_, err = resolveModules(dir, []string{"virtio_fs"})
	if !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "virtio_fs") {
		t.Fatalf("missing module: %v", err)
	}
}

// Guards kernel selection: the newest cloud kernel by version, not by string order.
func TestFindKernel(t *testing.T) {
	dir := t.TempDir()
	if _, err := FindKernel(dir); !errors.Is(err, ErrNoKernel) {
		t.Fatalf("empty /boot: %v", err)
	}
	for _, v := range []string{"6.1.0-9", "6.1.0-10", "5.10.0-30"} {
		os.WriteFile(filepath.Join(dir, "vmlinuz-"+v+"-cloud-amd64"), nil, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "vmlinuz-6.2.0-1-amd64"), nil, 0o644) // not a cloud kernel
	got, err := FindKernel(dir)
	if err != nil || filepath.Base(got) != "vmlinuz-6.1.0-10-cloud-amd64" {
		t.Fatalf("FindKernel = %s, %v", got, err)
	}
}

// fakeTemplate makes a built template with a tiny tree.
func fakeTemplate(t *testing.T) (*Store, Template) {
	t.Helper()
	s := &Store{Dir: t.TempDir()}
	r := Recipe{Name: "tiny", Suite: "bookworm", Variant: "minbase"}
	dir := s.dirFor(r)
	os.MkdirAll(filepath.Join(dir, "rootfs", "home", "user"), 0o755)
	os.WriteFile(filepath.Join(dir, "rootfs", "hello.txt"), []byte("hello from the template\n"), 0o644)
	meta := `{"name":"tiny","hash":"` + r.Hash() + `","built_at":"2026-01-02T03:04:05Z"}`
	os.WriteFile(filepath.Join(dir, "meta.json"), []byte(meta), 0o644)
	tpl, err := s.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	return s, tpl
}

// Guards the image cache: a first call builds the disk and the initramfs; an unchanged
// second call builds nothing; a new agent rebuilds only the initramfs (never the big
// disk image); a rebuilt template gets a new disk image. And the artefacts hold what
// the guest needs: the template's files in the ext4 image, /init and the agent in the
// initramfs.
func TestEnsureImage(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed: run scripts/setup (e2fsprogs)")
	}
	if err := checkStatic("/bin/busybox"); err != nil {
		t.Skipf("no static /bin/busybox (%v): run scripts/setup (busybox-static)", err)
	}
	s, tpl := fakeTemplate(t)
	work := t.TempDir()
	kernel := filepath.Join(work, "vmlinuz-6.1.0-99-cloud-amd64")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	agent := filepath.Join(work, "agent")
	os.WriteFile(agent, []byte("agent v1"), 0o755)
	opts := ImageOptions{AgentPath: agent, Kernel: kernel, ModulesDir: fakeModules(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var progress bytes.Buffer
	img, err := s.EnsureImage(ctx, tpl, opts, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(progress.String(), "mkfs.ext4") || !strings.Contains(progress.String(), "initramfs") {
		t.Fatalf("progress: %q", progress.String())
	}
	if img.KernelVersion != "6.1.0-99-cloud-amd64" || img.RootFSFormat != "raw" {
		t.Fatalf("image: %+v", img)
	}
	if k, _ := os.ReadFile(img.Kernel); string(k) != "not really a kernel" {
		t.Fatalf("kernel copy: %q", k)
	}
	if fi, err := os.Stat(img.RootFS); err != nil || fi.Mode().Perm()&0o222 != 0 || fi.Size() < RootFSHeadroomBytes {
		t.Fatalf("disk image: %v %v", fi, err)
	}
	if debugfs, err := exec.LookPath("debugfs"); err == nil {
		out, err := exec.Command(debugfs, "-R", "cat /hello.txt", img.RootFS).Output()
		if err != nil || string(out) != "hello from the template\n" {
			t.Fatalf("template file in the disk image: %q, %v", out, err)
		}
	}
	cpio, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]cpioEntry{}
	for _, e := range readCpio(t, cpio) {
		files[e.Name] = e
	}
	if files["vmexec/agent"].Data != "agent v1" || files["init"].DataLength != len(initScript) {
		t.Fatalf("initramfs agent %q", files["vmexec/agent"].Data)
	}
	if files["lib/modules/load.order"].Data != "virtio_ring.ko\nvirtio.ko\nvirtio_mmio.ko\nvirtio_blk.ko\nvirtio_console.ko\n" {
		t.Fatalf("load order %q", files["lib/modules/load.order"].Data)
	}
	if files["lib/modules/virtio_blk.ko"].Data != "blk" || files["dev/console"].RdevMajor != 5 || files["bin/busybox"].DataLength == 0 {
		t.Fatalf("initramfs entries: %+v", files)
	}

	// Unchanged inputs: nothing is built.
	progress.Reset()
	again, err := s.EnsureImage(ctx, tpl, opts, &progress)
	if err != nil || again.Key != img.Key || progress.Len() != 0 {
		t.Fatalf("second call rebuilt: key %s→%s, progress %q, %v", img.Key, again.Key, progress.String(), err)
	}

	// A new agent: a new initramfs over the same disk image; boot files unused for
	// long are pruned, recent ones kept.
	stale := filepath.Join(filepath.Dir(filepath.Dir(img.Initrd)), "boot-000000000000")
	os.MkdirAll(stale, 0o755)
	os.WriteFile(filepath.Join(stale, "meta.json"), nil, 0o644)
	long := time.Now().Add(-BootPruneAge - time.Hour)
	os.Chtimes(filepath.Join(stale, "meta.json"), long, long)
	os.WriteFile(agent, []byte("agent v2"), 0o755)
	progress.Reset()
	v2, err := s.EnsureImage(ctx, tpl, opts, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Key == img.Key || v2.Initrd == img.Initrd || v2.RootFS != img.RootFS || strings.Contains(progress.String(), "mkfs") {
		t.Fatalf("agent change: %+v vs %+v, progress %q", v2, img, progress.String())
	}
	if _, err := os.Stat(img.Initrd); err != nil {
		t.Fatalf("a recently used initramfs was pruned: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("boot files unused for long were kept: %v", err)
	}

	// A rebuilt template: a new disk image.
	tpl.BuiltAt = tpl.BuiltAt.Add(time.Hour)
	v3, err := s.EnsureImage(ctx, tpl, opts, nil)
	if err != nil || v3.RootFS == v2.RootFS {
		t.Fatalf("template rebuild kept the disk image: %+v, %v", v3, err)
	}

	// No kernel modules: a clear error.
	opts.ModulesDir = t.TempDir()
	if _, err := s.EnsureImage(ctx, tpl, opts, nil); !errors.Is(err, ErrNoKernel) {
		t.Fatalf("missing modules: %v", err)
	}
}
