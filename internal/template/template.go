// Package template builds and caches the root filesystems sandboxes start from.
//
// A template is a Debian tree made by debootstrap from a [Recipe]. Its directory name
// carries a hash of the recipe, so a changed recipe builds a new template and an
// unchanged one is reused. A build happens in a temporary directory and is renamed
// into place only when complete (with its meta.json written last), so a crashed or
// interrupted build is never mistaken for a template. Builds are serialised across
// processes with a lock file.
package template

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/internal/fsutil"
)

// ErrNotBuilt means the template has not been built yet.
var ErrNotBuilt = errors.New("template not built")

// Recipe says how to build a template.
type Recipe struct {
	Name     string   `json:"name"`
	Suite    string   `json:"suite"`
	Variant  string   `json:"variant"`
	Packages []string `json:"packages"`
	// Setup is a shell script run in the new tree with chroot after debootstrap.
	Setup string `json:"setup"`
}

// Default is the template every sandbox uses unless told otherwise: the five
// languages vmexec runs, Debian's numpy, pandas and matplotlib (what agents' data code
// imports first; matplotlib's font cache is built here, so the first figure of a
// sandbox does not pay for it), and the unprivileged user (uid 1000) runs happen as.
var Default = Recipe{
	Name:    "default",
	Suite:   "bookworm",
	Variant: "minbase",
	Packages: []string{"python3", "nodejs", "golang-go", "rustc", "libc6-dev", "ca-certificates",
		"python3-numpy", "python3-pandas", "python3-matplotlib"},
	Setup: `set -e
grep -q '^user:' /etc/group || echo 'user:x:1000:' >> /etc/group
grep -q '^user:' /etc/passwd || echo 'user:x:1000:1000:vmexec sandbox user:/home/user:/bin/bash' >> /etc/passwd
grep -q '^user:' /etc/shadow || echo 'user:!:19000:0:99999:7:::' >> /etc/shadow
printf '127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
mkdir -p /home/user /.vmexec
HOME=/home/user MPLBACKEND=Agg python3 -c 'import matplotlib.pyplot'
chown -R 1000:1000 /home/user
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
`,
}

// Hash identifies the recipe's content; it changes whenever the recipe does.
func (r Recipe) Hash() string {
	c := r
	c.Packages = append([]string(nil), r.Packages...)
	sort.Strings(c.Packages)
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:12]
}

// Template is a built template.
type Template struct {
	Name      string    `json:"name"`
	Hash      string    `json:"hash"`
	Dir       string    `json:"dir"`
	RootFS    string    `json:"rootfs"`
	BuiltAt   time.Time `json:"built_at"`
	BuildSecs float64   `json:"build_seconds"`
	SizeBytes int64     `json:"size_bytes"`
	Recipe    Recipe    `json:"recipe"`
}

// Store keeps templates under one directory.
type Store struct {
	Dir string
	// Mirror is the Debian mirror for debootstrap; empty means the host's apt source.
	Mirror string
}

func (s *Store) dirFor(r Recipe) string { return filepath.Join(s.Dir, r.Name+"-"+r.Hash()) }

// Get returns the built template for r, or ErrNotBuilt.
func (s *Store) Get(r Recipe) (Template, error) {
	return readMeta(s.dirFor(r))
}

func readMeta(dir string) (Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return Template{}, fmt.Errorf("%s: %w", filepath.Base(dir), ErrNotBuilt)
	}
	if err != nil {
		return Template{}, fmt.Errorf("read template meta: %w", err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return Template{}, fmt.Errorf("parse %s/meta.json: %w", dir, err)
	}
	t.Dir, t.RootFS = dir, filepath.Join(dir, "rootfs")
	return t, nil
}

// List returns every built template, newest first.
func (s *Store) List() ([]Template, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []Template
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if t, err := readMeta(filepath.Join(s.Dir, e.Name())); err == nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BuiltAt.After(out[j].BuiltAt) })
	return out, nil
}

// Ensure returns the template for r, building it first if needed. Progress lines go
// to progress (may be nil). Concurrent callers, in this or other processes, wait for
// one build.
func (s *Store) Ensure(ctx context.Context, r Recipe, progress io.Writer) (Template, error) {
	if t, err := s.Get(r); err == nil {
		return t, nil
	}
	if progress == nil {
		progress = io.Discard
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return Template{}, fmt.Errorf("template dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(s.Dir, ".lock"), progress)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	if t, err := s.Get(r); err == nil { // another process built it while we waited
		return t, nil
	}
	return s.build(ctx, r, progress)
}

func lockFile(ctx context.Context, path string, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("template lock: %w", err)
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !said {
			fmt.Fprintln(progress, "another process is building the template; waiting for it")
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for template lock: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Store) build(ctx context.Context, r Recipe, progress io.Writer) (Template, error) {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return Template{}, fmt.Errorf("debootstrap not found (run scripts/setup, or apt-get install debootstrap): %w", err)
	}
	start := time.Now()
	final := s.dirFor(r)
	tmp := final + ".building"
	os.RemoveAll(tmp)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return Template{}, fmt.Errorf("template dir: %w", err)
	}
	mirror := s.Mirror
	if mirror == "" {
		mirror = hostMirror()
	}
	args := []string{"--variant=" + r.Variant, "--include=" + strings.Join(r.Packages, ","), r.Suite, rootfs}
	if mirror != "" {
		args = append(args, mirror)
	}
	fmt.Fprintf(progress, "building template %s-%s: debootstrap %s (a few minutes; 2.2 GB)\n", r.Name, r.Hash(), strings.Join(args, " "))
	if err := runProgress(ctx, progress, start, "debootstrap", args...); err != nil {
		return Template{}, fmt.Errorf("debootstrap: %w", err)
	}
	if r.Setup != "" {
		fmt.Fprintf(progress, "[%4.0fs] setting up the sandbox user\n", time.Since(start).Seconds())
		if err := runProgress(ctx, progress, start, "chroot", rootfs, "/bin/sh", "-c", r.Setup); err != nil {
			return Template{}, fmt.Errorf("template setup: %w", err)
		}
	}
	t := Template{Name: r.Name, Hash: r.Hash(), BuiltAt: time.Now().UTC(), Recipe: r,
		BuildSecs: time.Since(start).Seconds(), SizeBytes: fsutil.DirSize(rootfs)}
	b, _ := json.MarshalIndent(t, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), b, 0o644); err != nil {
		return Template{}, fmt.Errorf("write template meta: %w", err)
	}
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return Template{}, fmt.Errorf("install template: %w", err)
	}
	ok = true
	fmt.Fprintf(progress, "[%4.0fs] template %s-%s ready (%.1f GB)\n", time.Since(start).Seconds(), r.Name, r.Hash(), float64(t.SizeBytes)/1e9)
	return readMeta(final)
}

// runProgress runs a command, turning its output into counted progress lines.
func runProgress(ctx context.Context, progress io.Writer, start time.Time, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		n := 0
		for sc.Scan() {
			line := sc.Text()
			tail = append(tail, line)
			if len(tail) > 20 {
				tail = tail[1:]
			}
			switch {
			case strings.HasPrefix(line, "I: Retrieving"), strings.HasPrefix(line, "I: Validating"),
				strings.HasPrefix(line, "I: Extracting"), strings.HasPrefix(line, "I: Unpacking"),
				strings.HasPrefix(line, "I: Configuring"):
				n++
				if n%25 != 0 { // one line in 25 keeps the progress readable
					continue
				}
			}
			fmt.Fprintf(progress, "[%4.0fs] %s\n", time.Since(start).Seconds(), line)
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%w; last output:\n%s", err, strings.Join(tail, "\n"))
	}
	return nil
}

// hostMirror returns the Debian mirror this host's apt uses, or "" to let debootstrap
// choose.
func hostMirror() string {
	for _, f := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if strings.HasPrefix(line, "URIs:") {
				for _, u := range strings.Fields(strings.TrimPrefix(line, "URIs:")) {
					if strings.HasSuffix(strings.TrimRight(u, "/"), "/debian") {
						return u
					}
				}
			}
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "deb" && strings.HasSuffix(strings.TrimRight(f[1], "/"), "/debian") {
				return f[1]
			}
		}
	}
	return ""
}
