package guest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// changeLine is a compact form of a change for comparisons: "+ path", "~ path", "- path"
// (paths relative to home), with "/" after a directory.
func changeLines(home string, cs []agentproto.Change) []string {
	out := []string{}
	for _, c := range cs {
		sign := map[string]string{agentproto.ChangeCreated: "+", agentproto.ChangeModified: "~", agentproto.ChangeDeleted: "-"}[c.Kind]
		p := strings.TrimPrefix(strings.TrimPrefix(c.Path, home), "/")
		if c.Type == agentproto.FileTypeDir {
			p += "/"
		}
		out = append(out, sign+" "+p)
	}
	return out
}

// A run's result lists what it created, modified and deleted under the scanned areas,
// a rename as a delete and a create, and nothing for a run that touched nothing —
// in both ways of computing it: inotify watches kept across runs (the default), and a
// scan before and after each run. Files written between runs (here by the test itself,
// as the files API or a background process would) are not the next run's.
func TestRunChanges(t *testing.T) {
	for _, mode := range []struct {
		name string
		scan bool
	}{{"watch", false}, {"scan", true}} {
		t.Run(mode.name, func(t *testing.T) {
			opts := testOptions(t, sandboxUser())
			opts.DisableChangeWatch = mode.scan
			testRunChanges(t, opts)
		})
	}
}

func testRunChanges(t *testing.T, opts Options) {
	c := startAgent(t, opts)
	tests := []struct {
		name  string
		setup map[string]string // files in home before the run
		code  string
		want  []string
	}{
		{"create", nil, "echo hello > report.csv", []string{"+ report.csv"}},
		{"modify", map[string]string{"data.json": "{}"}, "echo '{\"a\":1}' > data.json", []string{"~ data.json"}},
		{"chmod", map[string]string{"run.sh": "x"}, "chmod 755 run.sh", []string{"~ run.sh"}},
		{"delete", map[string]string{"old.log": "x"}, "rm old.log", []string{"- old.log"}},
		{"rename", map[string]string{"a.txt": "x"}, "mv a.txt b.txt", []string{"- a.txt", "+ b.txt"}},
		{"tree", nil, "mkdir -p out/sub && echo 1 > out/sub/x", []string{"+ out/", "+ out/sub/", "+ out/sub/x"}},
		{"nothing", map[string]string{"keep": "x"}, "cat keep >/dev/null", []string{}},
		{"rename dir", map[string]string{"d/x": "1", "d/e/y": "2"}, "mv d d2",
			[]string{"- d/", "- d/e/", "- d/e/y", "- d/x", "+ d2/", "+ d2/e/", "+ d2/e/y", "+ d2/x"}},
		{"remove tree", map[string]string{"d/x": "1"}, "rm -r d", []string{"- d/", "- d/x"}},
		{"replace file", map[string]string{"f": "1"}, "echo 22 > g && mv g f", []string{"~ f"}},
		{"created then removed", nil, "echo 1 > tmp && rm tmp", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := opts.Home
			os.RemoveAll(home)
			if err := os.MkdirAll(home, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, body := range tt.setup {
				p := filepath.Join(home, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				for d := p; d != home; d = filepath.Dir(d) {
					chownToRunUser(t, opts, d)
				}
			}
			chownToRunUser(t, opts, home)
			res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash", Code: tt.code,
				Changes: &agentproto.ChangeScan{Paths: []string{home}}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != agentproto.VerdictOK {
				t.Fatalf("verdict %s: %s", res.Verdict, res.Stderr)
			}
			if diff := cmp.Diff(tt.want, changeLines(home, res.Changes)); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if res.ChangesTruncated {
				t.Error("changes_truncated on a small run")
			}
		})
	}
	// A created file reports its size and mode.
	res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash",
		Code: "head -c 12345 /dev/zero > big.bin && chmod 600 big.bin", Changes: &agentproto.ChangeScan{Paths: []string{opts.Home}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 1 || res.Changes[0].Size != 12345 || res.Changes[0].Mode != 0o600 || res.Changes[0].Type != "file" {
		t.Errorf("changes = %+v, want big.bin of 12345 bytes, mode 0600", res.Changes)
	}
	// Without the option, no change set (and no scan).
	res, err = c.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash", Code: "echo x > y"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changes != nil || res.ChangesScanUS != 0 {
		t.Errorf("a run without changes requested reported %+v (scan %d us)", res.Changes, res.ChangesScanUS)
	}
}

func chownToRunUser(t *testing.T, opts Options, p string) {
	t.Helper()
	if os.Geteuid() == 0 && opts.RunUser != nil {
		if err := os.Chown(p, int(opts.RunUser.UID), int(opts.RunUser.GID)); err != nil {
			t.Fatal(err)
		}
	}
}

// A run creating 10,000 files reports the first 1,000 (by path) and says the list is
// truncated.
func TestRunChangesBounded(t *testing.T) {
	for _, scan := range []bool{false, true} {
		opts := testOptions(t, sandboxUser())
		opts.DisableChangeWatch = scan
		testRunChangesBounded(t, opts)
	}
}

func testRunChangesBounded(t *testing.T, opts Options) {
	c := startAgent(t, opts)
	res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash",
		Code:    "mkdir many && cd many && for i in $(seq 1 10000); do : > f$i; done",
		Changes: &agentproto.ChangeScan{Paths: []string{opts.Home}}, Limits: agentproto.Limits{TimeoutMS: 120000}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictOK {
		t.Fatalf("verdict %s: %s", res.Verdict, res.Stderr)
	}
	if len(res.Changes) != DefaultMaxChanges || !res.ChangesTruncated {
		t.Errorf("scan only %v: %d changes, truncated %v; want %d, truncated", opts.DisableChangeWatch, len(res.Changes), res.ChangesTruncated, DefaultMaxChanges)
	}
}

// A scan that stops at its entry bound never claims that the paths it did not reach
// were deleted (or created), and says the result is truncated.
func TestScanBoundNoFalseClaims(t *testing.T) {
	root := t.TempDir()
	for d := range 10 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range 1000 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Two scans that stopped at different points (as a time budget does) of a tree
	// nothing changed.
	short := scanTree([]string{root}, nil, 3000, time.Minute)
	long := scanTree([]string{root}, nil, 6000, time.Minute)
	for _, c := range []struct {
		name          string
		before, after *treeScan
	}{{"after reached further", short, long}, {"before reached further", long, short}} {
		changes, truncated := compareScans(c.before, c.after, 100_000)
		if !truncated {
			t.Errorf("%s: scans over the bound, not truncated", c.name)
		}
		if len(changes) != 0 {
			t.Errorf("%s: an unchanged tree scanned partially reports %d changes, e.g. %+v", c.name, len(changes), changes[0])
		}
	}
}

// The scan skips the excluded paths (the agent's own run directories): files created
// there are not the run's changes.
func TestScanExcludesAgentFiles(t *testing.T) {
	root := t.TempDir()
	own := filepath.Join(root, ".vmexec")
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Fatal(err)
	}
	before := scanTree([]string{root}, []string{own}, DefaultMaxScan, time.Minute)
	os.WriteFile(filepath.Join(own, "run-1.py"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "mine"), []byte("x"), 0o644)
	after := scanTree([]string{root}, []string{own}, DefaultMaxScan, time.Minute)
	changes, _ := compareScans(before, after, 100)
	if diff := cmp.Diff([]string{"+ mine"}, changeLines(root, changes)); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

func TestOutermost(t *testing.T) {
	got := outermost([]string{"/tmp", "/home/user/w", "/home/user", "/tmp", "/tmpx"})
	if diff := cmp.Diff([]string{"/home/user", "/tmp", "/tmpx"}, got); diff != "" {
		t.Error(diff)
	}
}

// An area that is a file, or one that a run removes and makes again, is still
// reported right (the watch cannot serve them; the agent scans).
func TestRunChangesAreaEdgeCases(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	run := func(code string, area string) []string {
		t.Helper()
		res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash", Code: code,
			Changes: &agentproto.ChangeScan{Paths: []string{area}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != agentproto.VerdictOK {
			t.Fatalf("verdict %s: %s", res.Verdict, res.Stderr)
		}
		return changeLines(opts.Home, res.Changes)
	}
	run("echo 1 > notes.txt; mkdir -p work; echo 1 > work/a", opts.Home)
	if diff := cmp.Diff([]string{"~ notes.txt"}, run("echo 2 > notes.txt", "notes.txt")); diff != "" {
		t.Errorf("a file as the area (-want +got):\n%s", diff)
	}
	run("true", "work") // the watch of work is made
	if diff := cmp.Diff([]string{"- work/a"}, run("rm -r work && mkdir work", "work")); diff != "" {
		t.Errorf("the area removed and made again (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"+ work/b"}, run("echo 1 > work/b", "work")); diff != "" {
		t.Errorf("a change in the area made again (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"- work/", "- work/b"}, run("rm -r work", "work")); diff != "" {
		t.Errorf("the area removed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"+ work/", "+ work/c"}, run("mkdir work; echo 1 > work/c", "work")); diff != "" {
		t.Errorf("the area made again in a later run (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"+ work/d"}, run("echo 1 > work/d", "work")); diff != "" {
		t.Errorf("the run after (-want +got):\n%s", diff)
	}
}
