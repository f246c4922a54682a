package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// Guards the files API with a large file: 50 MiB goes in and comes out byte-identical,
// is the sandbox user's, and a run sees exactly those bytes.
func TestFiles50MiB(t *testing.T) {
	d := shared(t)
	ctx := context.Background()
	const agent = "files-big"
	sb := d.exec(t, agent, "bash", "true").SandboxID
	data := make([]byte, 50<<20)
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	rng.Read(data)
	sum := sha256.Sum256(data)
	info, err := d.client.PutFile(ctx, sb, "big/data.bin", bytes.NewReader(data), client.FileOptions{AgentID: agent})
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != "/home/user/big/data.bin" || info.Size != int64(len(data)) || info.Type != api.FileTypeFile {
		t.Fatalf("put: %+v", info)
	}
	body, size, err := d.client.GetFile(ctx, sb, "/home/user/big/data.bin", client.FileOptions{AgentID: agent})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, body)
	body.Close()
	if err != nil || n != int64(len(data)) || size != n || !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Fatalf("get: %d bytes (Content-Length %d), err %v, identical %v", n, size, err, bytes.Equal(h.Sum(nil), sum[:]))
	}
	want := "1000 1000 " + hex.EncodeToString(sum[:])
	wantOK(t, d.exec(t, agent, "bash", "echo $(stat -c '%u' big big/data.bin) $(sha256sum < big/data.bin | cut -d' ' -f1)"), want)
}

// Guards the rest of the files API against the real guest: listing, removal, files a
// run wrote, paths resolved inside the sandbox, and the 404/400/403 answers.
func TestFilesAPI(t *testing.T) {
	d := shared(t)
	ctx := context.Background()
	const agent = "files-api"
	res := d.exec(t, agent, "bash", "mkdir -p out/deep && echo report > out/r.txt && echo x > out/deep/y && cat /etc/os-release")
	sb, osRelease := res.SandboxID, res.Stdout
	opt := client.FileOptions{AgentID: agent}

	entries, err := d.client.ListFiles(ctx, sb, "out", 2, opt)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range entries {
		paths = append(paths, e.Path+":"+e.Type)
	}
	got := strings.Join(paths, " ")
	for _, want := range []string{"/home/user/out/r.txt:file", "/home/user/out/deep:dir", "/home/user/out/deep/y:file"} {
		if !strings.Contains(got, want) {
			t.Errorf("list out (depth 2) = %s; missing %s", got, want)
		}
	}
	read := func(p string) (string, error) {
		body, _, err := d.client.GetFile(ctx, sb, p, opt)
		if err != nil {
			return "", err
		}
		defer body.Close()
		b, err := io.ReadAll(body)
		return string(b), err
	}
	if s, err := read("out/r.txt"); err != nil || s != "report\n" {
		t.Fatalf("a file a run wrote: %q, %v", s, err)
	}
	// ".." is resolved inside the sandbox: it reaches the sandbox's root, not the host's.
	if s, err := read("../../../../../etc/os-release"); err != nil || s != osRelease {
		t.Fatalf("../../etc/os-release: %v; want the sandbox's own", err)
	}
	// So is a symlink: one to / made by a run leads to the sandbox's root.
	wantOK(t, d.exec(t, agent, "bash", "ln -s / ~/root && echo ok"), "ok")
	if s, err := read("root/etc/os-release"); err != nil || s != osRelease {
		t.Fatalf("root/etc/os-release through a symlink: %v; want the sandbox's own", err)
	}
	_, missing := read("nope.txt")
	_, dir := read("out")
	_, _, other := d.client.GetFile(ctx, sb, "out/r.txt", client.FileOptions{AgentID: "files-intruder"})
	_, listFile := d.client.ListFiles(ctx, sb, "out/r.txt", 1, opt)
	for _, c := range []struct {
		name string
		err  error
		want int
	}{
		{"missing file", missing, http.StatusNotFound},
		{"a directory read as a file", dir, http.StatusBadRequest},
		{"another agent's sandbox", other, http.StatusForbidden},
		{"a file listed as a directory", listFile, http.StatusBadRequest},
		{"removing a missing file", d.client.RemoveFile(ctx, sb, "nope.txt", opt), http.StatusNotFound},
	} {
		if !isStatus(c.err, c.want) {
			t.Errorf("%s: %v; want HTTP %d", c.name, c.err, c.want)
		}
	}
	if err := d.client.RemoveFile(ctx, sb, "out", client.FileOptions{AgentID: agent, Recursive: true}); err != nil {
		t.Fatal(err)
	}
	wantOK(t, d.exec(t, agent, "bash", "ls out 2>/dev/null || echo gone"), "gone")
}

// Guards the per-file limit: a file over the server's max_file_bytes maximum is 413,
// whether its size is declared or not, and leaves nothing behind.
func TestFilesTooLarge(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(cfg, []byte("sandbox:\n  defaults:\n    max_file_bytes: 1048576\n  max:\n    max_file_bytes: 1048576\n"), 0o644)
	d := startDaemon(t, daemonOpts{extra: []string{"--config", cfg, "--pool-size", "0"}})
	ctx := context.Background()
	sb := d.exec(t, "files-limit", "bash", "true").SandboxID
	exact := bytes.Repeat([]byte("a"), 1<<20)
	if _, err := d.client.PutFile(ctx, sb, "exact", bytes.NewReader(exact), client.FileOptions{}); err != nil {
		t.Fatalf("a file of exactly the limit: %v", err)
	}
	over := append(exact, 'b')
	_, declared := d.client.PutFile(ctx, sb, "over1", bytes.NewReader(over), client.FileOptions{})
	_, chunked := d.client.PutFile(ctx, sb, "over2", io.MultiReader(bytes.NewReader(over)), client.FileOptions{})
	for name, err := range map[string]error{"with Content-Length": declared, "chunked": chunked} {
		if !isStatus(err, http.StatusRequestEntityTooLarge) {
			t.Errorf("over the limit, %s: %v; want 413", name, err)
		}
	}
	wantOK(t, d.exec(t, "files-limit", "bash", "ls; stat -c %s exact"), "exact\n1048576")
}

// Guards the CLI's files commands: put, ls, get and rm do what they say, and each has
// its help.
func TestCLIFiles(t *testing.T) {
	d := shared(t)
	sb := d.exec(t, "files-cli", "bash", "true").SandboxID
	dir := t.TempDir()
	src := filepath.Join(dir, "notes.txt")
	os.WriteFile(src, []byte("hello from the host\n"), 0o644)
	if out := mustVmexec(t, d, "files", "put", sb, src, "in/notes.txt"); !strings.Contains(out, "/home/user/in/notes.txt") {
		t.Fatalf("put: %q", out)
	}
	if out := mustVmexec(t, d, "files", "ls", sb, "in"); !strings.Contains(out, "/home/user/in/notes.txt") {
		t.Fatalf("ls: %q", out)
	}
	dst := filepath.Join(dir, "back.txt")
	mustVmexec(t, d, "files", "get", sb, "in/notes.txt", dst)
	if b, _ := os.ReadFile(dst); string(b) != "hello from the host\n" {
		t.Fatalf("get: %q", b)
	}
	if out := mustVmexec(t, d, "files", "get", sb, "in/notes.txt"); out != "hello from the host\n" {
		t.Fatalf("get to stdout: %q", out)
	}
	mustVmexec(t, d, "files", "rm", sb, "-r", "in")
	if _, errOut, code := vmexec(t, nil, "--url", d.url, "files", "get", sb, "in/notes.txt"); code == 0 || !strings.Contains(errOut, "404") {
		t.Fatalf("get after rm: exit %d, %q", code, errOut)
	}
	for _, sub := range []string{"put", "get", "ls", "rm"} {
		if out := mustVmexec(t, d, "files", sub, "--help"); !strings.Contains(out, "Usage:") {
			t.Errorf("files %s --help: %q", sub, out)
		}
	}
}
