package template

// Guest images for the microVM backend: the template tree as an ext4 disk image, a
// guest kernel, and an initramfs whose /init loads the virtio modules, mounts the disk
// and hands over to the guest agent.
//
// An image is cached next to its template, under <template dir>/microvm/, in two
// parts that change at different rates:
//
//	rootfs-<key>.ext4  the template tree (mkfs.ext4 -d), about the template's size on
//	                   disk; rebuilt only when the template is.
//	boot-<key>/        vmlinuz (a copy of the host's cloud kernel), initrd.cpio
//	                   (busybox, the kernel modules, /init and the guest agent) and
//	                   meta.json, written last; a few MB, rebuilt when the kernel, its
//	                   modules, busybox, the agent or the init script change.
//
// So a new agent build costs a new initramfs (under a second), not a new 1.3 GB disk.
// Inside the guest, /init copies the agent from the initramfs to /.vmexec/agent on a
// read-only tmpfs, so the agent a sandbox runs is always the image's.
//
// Each part is built under a temporary name and renamed into place when complete, and
// builds are serialised across processes with <template dir>/microvm/.lock. Building a
// boot part prunes the others that have not been used for BootPruneAge (every
// EnsureImage marks its boot part used): sandboxes and snapshots keep their own links to
// the kernel and initramfs they booted. Disk images go with their template.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmexec/vmexec/internal/fsutil"
)

// ErrNoKernel means no usable guest kernel, its modules or busybox was found on the
// host (install linux-image-cloud-amd64 and busybox-static: run scripts/setup).
var ErrNoKernel = errors.New("guest kernel not available")

// ImageFormat is the disk format of Image.RootFS.
const ImageFormat = "raw"

// RootFSHeadroomBytes is the free space a sandbox's root filesystem has beyond the
// template's files (the disk image is sparse: unused space costs nothing on the host).
const RootFSHeadroomBytes = 2 << 30

// BootPruneAge is how long an unused boot part is kept once a newer one is built.
const BootPruneAge = 24 * time.Hour

// imageVersion changes whenever the way images are built changes, to rebuild them.
const imageVersion = "microvm-1"

// GuestModules are the kernel modules /init loads, in this order, with their
// dependencies first (from modules.dep). Modules built into the kernel are skipped.
var GuestModules = []string{"virtio_mmio", "virtio_blk", "virtio_console", "ext4"}

// ImageOptions are the inputs of a guest image besides the template.
type ImageOptions struct {
	// AgentPath is the static guest agent binary (required). Its content is part of
	// the image's key.
	AgentPath string
	// Kernel is the guest kernel, a bzImage. Default: the newest
	// /boot/vmlinuz-*-cloud-amd64 (Debian's linux-image-cloud-amd64).
	Kernel string
	// ModulesDir is the kernel's module tree. Default /lib/modules/<kernel version>,
	// the version taken from Kernel's file name (vmlinuz-<version>).
	ModulesDir string
	// Busybox is a statically linked busybox. Default: /bin/busybox (busybox-static).
	Busybox string
}

// Image is a built guest image.
type Image struct {
	// Key identifies all of the image's inputs: a change to any gives another key.
	Key string `json:"key"`
	// Kernel is the guest kernel (bzImage), KernelVersion its version.
	Kernel        string `json:"kernel"`
	KernelVersion string `json:"kernel_version"`
	// Initrd is the initramfs (an uncompressed newc cpio archive).
	Initrd string `json:"initrd"`
	// RootFS is the ext4 disk image of the template, in ImageFormat. It is read-only:
	// each sandbox writes to its own copy-on-write overlay backed by it.
	RootFS       string `json:"rootfs"`
	RootFSFormat string `json:"rootfs_format"`
	// AgentSHA256 is the hash of the guest agent inside the initramfs.
	AgentSHA256 string `json:"agent_sha256"`
	// Modules are the modules /init loads, in order.
	Modules []string `json:"modules"`
}

func (t Template) imageDir() string { return filepath.Join(t.Dir, "microvm") }

// EnsureImage returns the guest image of template t, building what is missing or
// stale first. Progress lines go to progress (may be nil). Concurrent callers, in this
// or other processes, wait for one build.
func (s *Store) EnsureImage(ctx context.Context, t Template, opts ImageOptions, progress io.Writer) (Image, error) {
	if progress == nil {
		progress = io.Discard
	}
	if t.Dir == "" || t.RootFS == "" {
		return Image{}, fmt.Errorf("image: template %q has no directory: %w", t.Name, ErrNotBuilt)
	}
	if fi, err := os.Stat(t.RootFS); err != nil || !fi.IsDir() {
		return Image{}, fmt.Errorf("image: template root %s: %w", t.RootFS, ErrNotBuilt)
	}
	in, err := resolveInputs(opts)
	if err != nil {
		return Image{}, err
	}
	bootKey, err := in.bootKey()
	if err != nil {
		return Image{}, err
	}
	rootKey := t.rootfsKey()
	dir := t.imageDir()
	img := Image{
		Key:           shortHash(rootKey + "\n" + bootKey),
		Kernel:        filepath.Join(dir, "boot-"+bootKey, "vmlinuz"),
		KernelVersion: in.version,
		Initrd:        filepath.Join(dir, "boot-"+bootKey, "initrd.cpio"),
		RootFS:        filepath.Join(dir, "rootfs-"+rootKey+".ext4"),
		RootFSFormat:  ImageFormat,
		AgentSHA256:   in.agentSum,
		Modules:       in.moduleNames(),
	}
	bootMeta := filepath.Join(dir, "boot-"+bootKey, "meta.json")
	if exists(img.RootFS) && exists(bootMeta) {
		now := time.Now()
		os.Chtimes(bootMeta, now, now) // in use: not to be pruned
		return img, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("image dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"), progress)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	start := time.Now()
	if !exists(img.RootFS) {
		if err := buildRootFS(ctx, t.RootFS, img.RootFS, start, progress); err != nil {
			return Image{}, err
		}
	}
	if !exists(bootMeta) {
		if err := in.buildBoot(filepath.Dir(bootMeta), img, start, progress); err != nil {
			return Image{}, err
		}
		pruneBoot(dir, filepath.Dir(bootMeta), progress)
	}
	fmt.Fprintf(progress, "[%4.0fs] guest image %s ready (kernel %s)\n", time.Since(start).Seconds(), img.Key, img.KernelVersion)
	return img, nil
}

func (t Template) rootfsKey() string {
	return shortHash(strings.Join([]string{imageVersion, t.Name, t.Hash, t.BuiltAt.UTC().Format(time.RFC3339Nano),
		strconv.Itoa(RootFSHeadroomBytes)}, "\n"))
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:12]
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// buildRootFS makes the ext4 image of the tree at src: sized to fit plus headroom,
// without a journal (a sandbox's disk never outlives a crash of its VM), with no
// blocks reserved for root.
func buildRootFS(ctx context.Context, src, dst string, start time.Time, progress io.Writer) error {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return fmt.Errorf("mkfs.ext4 not found (apt-get install e2fsprogs): %w", ErrNoKernel)
	}
	used, files := treeUsage(src)
	size := used + used/10 + int64(files)*512 + RootFSHeadroomBytes
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	fmt.Fprintf(progress, "[%4.0fs] building the guest disk image from %s (%d files, %.1f GB; mkfs.ext4 -d)\n",
		time.Since(start).Seconds(), src, files, float64(used)/1e9)
	tmp := dst + ".building"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := os.Truncate(tmp, size); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "vmexec-root", "-m", "0",
		"-O", "^has_journal", "-E", "root_owner=0:0", "-d", src, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install disk image: %w", err)
	}
	ok = true
	fmt.Fprintf(progress, "[%4.0fs] guest disk image ready: %s (%.1f GB, sparse)\n", time.Since(start).Seconds(), dst, float64(size)/1e9)
	return nil
}

// treeUsage returns the bytes the tree's files take in 4 KiB blocks, and its entries.
func treeUsage(dir string) (int64, int) {
	var n int64
	var files int
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		files++
		n += 4096
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += (fi.Size() + 4095) &^ 4095
			}
		}
		return nil
	})
	return n, files
}

// imageInputs are the resolved files the boot part of an image is made from.
type imageInputs struct {
	kernel, version, modulesDir, busybox, agent string
	agentSum                                    string
	modules                                     []module // in load order
}

type module struct {
	name string // as in lsmod: underscores
	path string // absolute, possibly compressed
}

func (in imageInputs) moduleNames() []string {
	names := make([]string, len(in.modules))
	for i, m := range in.modules {
		names[i] = m.name
	}
	return names
}

func resolveInputs(opts ImageOptions) (imageInputs, error) {
	var in imageInputs
	if opts.AgentPath == "" {
		return in, errors.New("image: no guest agent given")
	}
	in.agent = opts.AgentPath
	sum, err := fileSHA256(opts.AgentPath)
	if err != nil {
		return in, fmt.Errorf("image: guest agent: %w", err)
	}
	in.agentSum = sum
	in.kernel = opts.Kernel
	if in.kernel == "" {
		if in.kernel, err = FindKernel("/boot"); err != nil {
			return in, err
		}
	}
	if !exists(in.kernel) {
		return in, fmt.Errorf("kernel %s: %w", in.kernel, ErrNoKernel)
	}
	in.version = strings.TrimPrefix(filepath.Base(in.kernel), "vmlinuz-")
	in.modulesDir = opts.ModulesDir
	if in.modulesDir == "" {
		in.modulesDir = filepath.Join("/lib/modules", in.version)
	}
	if in.modules, err = resolveModules(in.modulesDir, GuestModules); err != nil {
		return in, err
	}
	in.busybox = opts.Busybox
	if in.busybox == "" {
		in.busybox = "/bin/busybox"
	}
	if err := checkStatic(in.busybox); err != nil {
		return in, fmt.Errorf("busybox %s: %w (apt-get install busybox-static): %w", in.busybox, err, ErrNoKernel)
	}
	return in, nil
}

// FindKernel returns the newest Debian cloud kernel in bootDir (/boot/vmlinuz-*-cloud-amd64).
func FindKernel(bootDir string) (string, error) {
	ks, _ := filepath.Glob(filepath.Join(bootDir, "vmlinuz-*-cloud-amd64"))
	if len(ks) == 0 {
		return "", fmt.Errorf("no %s/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64): %w", bootDir, ErrNoKernel)
	}
	sort.Slice(ks, func(i, j int) bool { return versionLess(ks[i], ks[j]) })
	return ks[len(ks)-1], nil
}

// versionLess compares strings by their runs of digits numerically ("6.1.0-9" < "6.1.0-10").
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			na, _ := strconv.Atoi(da)
			nb, _ := strconv.Atoi(db)
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("not statically linked")
		}
	}
	return nil
}

func modName(path string) string {
	b := filepath.Base(path)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// resolveModules finds the named modules and their dependencies in modulesDir's
// modules.dep and returns them in load order. A module missing from modules.dep must be
// listed in modules.builtin.
func resolveModules(modulesDir string, names []string) ([]module, error) {
	depFile, err := os.ReadFile(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w: %w", err, ErrNoKernel)
	}
	deps := map[string][]string{} // name → dependency names
	paths := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(depFile))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(mod)
		paths[n] = filepath.Join(modulesDir, mod)
		for _, d := range strings.Fields(rest) {
			deps[n] = append(deps[n], modName(d))
		}
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	}
	var out []module
	seen := map[string]bool{}
	var visit func(n string, stack []string) error
	visit = func(n string, stack []string) error {
		if seen[n] {
			return nil
		}
		if len(stack) > 32 {
			return fmt.Errorf("kernel modules: dependency cycle at %s", n)
		}
		p, ok := paths[n]
		if !ok {
			if builtin[n] {
				seen[n] = true
				return nil
			}
			return fmt.Errorf("kernel module %s: neither in modules.dep nor built in: %w", n, ErrNoKernel)
		}
		for _, d := range deps[n] {
			if err := visit(d, append(stack, n)); err != nil {
				return err
			}
		}
		seen[n] = true
		out = append(out, module{name: n, path: p})
		return nil
	}
	for _, n := range names {
		if err := visit(strings.ReplaceAll(n, "-", "_"), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// bootKey identifies the boot part's inputs by content.
func (in imageInputs) bootKey() (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\nagent %s\n", imageVersion, initScript, in.agentSum)
	files := []string{in.kernel, in.busybox}
	for _, m := range in.modules {
		files = append(files, m.path)
	}
	for _, f := range files {
		sum, err := fileSHA256(f)
		if err != nil {
			return "", fmt.Errorf("image input: %w", err)
		}
		fmt.Fprintf(h, "%s %s\n", filepath.Base(f), sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildBoot writes the kernel and the initramfs into dir, then meta.json.
func (in imageInputs) buildBoot(dir string, img Image, start time.Time, progress io.Writer) error {
	fmt.Fprintf(progress, "[%4.0fs] building the guest initramfs (kernel %s, modules %s)\n",
		time.Since(start).Seconds(), in.version, strings.Join(img.Modules, " "))
	tmp := dir + ".building"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("boot dir: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := fsutil.CopyFile(in.kernel, filepath.Join(tmp, "vmlinuz"), 0o644); err != nil {
		return fmt.Errorf("copy kernel: %w", err)
	}
	if err := in.writeInitramfs(filepath.Join(tmp, "initrd.cpio")); err != nil {
		return err
	}
	meta := img
	meta.Kernel, meta.Initrd, meta.RootFS = "vmlinuz", "initrd.cpio", ""
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), b, 0o644); err != nil {
		return fmt.Errorf("boot meta: %w", err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("install boot dir: %w", err)
	}
	ok = true
	return nil
}

// pruneBoot removes the boot parts in dir, other than keep, unused for BootPruneAge.
func pruneBoot(dir, keep string, progress io.Writer) {
	old, _ := filepath.Glob(filepath.Join(dir, "boot-*"))
	for _, d := range old {
		if d == keep || strings.HasSuffix(d, ".building") {
			continue
		}
		fi, err := os.Stat(filepath.Join(d, "meta.json"))
		if err != nil || time.Since(fi.ModTime()) < BootPruneAge {
			continue
		}
		if os.RemoveAll(d) == nil {
			fmt.Fprintf(progress, "removed the unused guest boot files %s\n", filepath.Base(d))
		}
	}
}

func (in imageInputs) writeInitramfs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := newCpioWriter(bw)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "vmexec"} {
		w.dir(d, 0o755)
	}
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("init", 0o755, []byte(initScript))
	busybox, err := os.ReadFile(in.busybox)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	w.file("bin/busybox", 0o755, busybox)
	var order strings.Builder
	for _, m := range in.modules {
		data, err := readModule(m.path)
		if err != nil {
			return fmt.Errorf("initramfs: module %s: %w", m.name, err)
		}
		w.file("lib/modules/"+m.name+".ko", 0o644, data)
		order.WriteString(m.name + ".ko\n")
	}
	w.file("lib/modules/load.order", 0o644, []byte(order.String()))
	agent, err := os.ReadFile(in.agent)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	w.file("vmexec/agent", 0o755, agent)
	if err := w.close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return f.Close()
}

// readModule returns a module's uncompressed content (busybox insmod takes plain .ko).
func readModule(path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".ko.xz"):
		return decompress(path, "unxz", "-c")
	case strings.HasSuffix(path, ".ko.zst"):
		return decompress(path, "zstd", "-d", "-c", "-q")
	}
	return nil, fmt.Errorf("unknown module format %s", filepath.Base(path))
}

func decompress(path, tool string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(tool, append(args, path)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", tool, path, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// cpioWriter writes a "newc" cpio archive, the format the kernel unpacks as an
// initramfs. Timestamps are zero so that equal inputs give equal archives.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func newCpioWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	if c.err != nil {
		return
	}
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.ino++
	var buf bytes.Buffer
	buf.WriteString(hdr)
	buf.WriteString(name)
	buf.WriteByte(0)
	pad4(&buf, buf.Len())
	if _, c.err = c.w.Write(buf.Bytes()); c.err != nil {
		return
	}
	if _, c.err = c.w.Write(data); c.err != nil {
		return
	}
	if n := len(data) % 4; n != 0 {
		_, c.err = c.w.Write(make([]byte, 4-n))
	}
}

func pad4(b *bytes.Buffer, n int) {
	for ; n%4 != 0; n++ {
		b.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string, perm uint32) { c.entry(name, 0o040000|perm, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, 0, 0, data)
}
func (c *cpioWriter) charDev(name string, perm uint32, major, minor int) {
	c.entry(name, 0o020000|perm, major, minor, nil)
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

// initScript is the initramfs's /init. It runs busybox's sh as PID 1, loads the
// modules, mounts the root disk (/dev/vda, the sandbox's copy-on-write overlay) read-
// write, names the virtio-serial port, and execs the guest agent as the new PID 1 over
// /dev/virtio-ports/vmexec. Any failure is printed to the console (the host reports its
// last lines) and powers the VM off, which ends QEMU at once.
const initScript = `#!/bin/busybox sh
# /init of vmexec microVM guests (generated by internal/template/image.go).
bb=/bin/busybox
fail() {
	echo "vmexec-init: $*"
	$bb poweroff -f
	$bb sleep 10
	exit 1
}
$bb mount -t devtmpfs -o mode=0755 devtmpfs /dev || fail "cannot mount /dev"
$bb mount -t proc proc /proc || fail "cannot mount /proc"
$bb mount -t sysfs sysfs /sys || fail "cannot mount /sys"
while read -r m; do
	$bb insmod "/lib/modules/$m" || fail "cannot load module $m"
done < /lib/modules/load.order
i=0
while [ ! -b /dev/vda ]; do
	i=$((i+1)); [ $i -gt 1000 ] && fail "no root disk /dev/vda"
	$bb usleep 10000
done
$bb mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount the root disk"
$bb mkdir -p /newroot/.vmexec /newroot/dev /newroot/proc /newroot/sys /newroot/tmp /newroot/run
$bb mount -t tmpfs -o mode=0755,size=64m vmexec /newroot/.vmexec || fail "cannot mount /.vmexec"
$bb cp /vmexec/agent /newroot/.vmexec/agent || fail "cannot install the guest agent"
$bb mount -o remount,ro /newroot/.vmexec
$bb mkdir -p /dev/virtio-ports
i=0
while [ ! -e /dev/virtio-ports/vmexec ]; do
	for p in /sys/class/virtio-ports/*; do
		[ -r "$p/name" ] && $bb ln -sf "../${p##*/}" "/dev/virtio-ports/$($bb cat "$p/name")" 2>/dev/null
	done
	[ -e /dev/virtio-ports/vmexec ] && break
	i=$((i+1)); [ $i -gt 1000 ] && fail "no virtio-serial port named vmexec"
	$bb usleep 10000
done
$bb mount --move /dev /newroot/dev || fail "cannot move /dev"
$bb mkdir -p /newroot/dev/pts /newroot/dev/shm
$bb mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts /newroot/dev/pts
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 shm /newroot/dev/shm
$bb mount --move /proc /newroot/proc || fail "cannot move /proc"
$bb mount --move /sys /newroot/sys || fail "cannot move /sys"
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /newroot/tmp
$bb mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /newroot/run
$bb hostname sandbox
$bb ip link set lo up
exec $bb switch_root /newroot /.vmexec/agent --port /dev/virtio-ports/vmexec
`
