package e2e

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/policy"
)

// Hostile code ends with its verdict, costs the host no more than the limits, and the
// agent's next run works: in the same sandbox when it survived, else in a fresh one
// that the result announces. Policy would refuse most of this code; it is switched off
// for these agents, because the sandbox must hold without it.
func TestHostileCode(t *testing.T) {
	d := shared(t)
	var allRules []string
	for _, r := range policy.Rules() {
		allRules = append(allRules, r.ID)
	}
	cases := []struct {
		name, lang, code string
		limits           api.Limits
		verdicts         []string // acceptable verdicts
		check            func(t *testing.T, r *api.ExecResult)
	}{
		{name: "endless loop", lang: "python", code: "while True: pass", limits: api.Limits{TimeoutMS: 2000},
			verdicts: []string{api.VerdictTimeout},
			check: func(t *testing.T, r *api.ExecResult) {
				if r.DurationMS < 1900 || r.DurationMS > 10000 {
					t.Errorf("timeout after %d ms, want about 2000", r.DurationMS)
				}
			}},
		{name: "sleep past timeout", lang: "bash", code: "sleep 45", limits: api.Limits{TimeoutMS: 1500},
			verdicts: []string{api.VerdictTimeout}},
		{name: "output flood", lang: "python", code: "while True: print('x' * 1000)", limits: api.Limits{MaxOutputBytes: 64 << 10},
			verdicts: []string{api.VerdictOutputLimit},
			check: func(t *testing.T, r *api.ExecResult) {
				if !r.StdoutTruncated || len(r.Stdout) > 64<<10 || len(r.Stdout) < 32<<10 {
					t.Errorf("flood: truncated=%v len=%d, want truncated at 64 KiB", r.StdoutTruncated, len(r.Stdout))
				}
			}},
		{name: "fork bomb", lang: "bash", code: ":(){ :|:& };:", limits: api.Limits{TimeoutMS: 5000},
			verdicts: []string{api.VerdictKilled, api.VerdictTimeout, api.VerdictNonzeroExit, api.VerdictMemoryLimit}},
		{name: "python fork bomb", lang: "python", code: "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", limits: api.Limits{TimeoutMS: 5000},
			verdicts: []string{api.VerdictKilled, api.VerdictTimeout, api.VerdictMemoryLimit}},
		{name: "memory bomb", lang: "python", code: "a = []\nwhile True: a.append(bytearray(50 * 1024 * 1024))", limits: api.Limits{TimeoutMS: 20000},
			verdicts: []string{api.VerdictMemoryLimit}},
		{name: "disk fill", lang: "bash", code: "dd if=/dev/zero of=$HOME/fill bs=1M count=4000; ls -la $HOME/fill", limits: api.Limits{TimeoutMS: 30000},
			verdicts: []string{api.VerdictMemoryLimit, api.VerdictNonzeroExit, api.VerdictKilled, api.VerdictOutputLimit}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			agent := "hostile-" + strings.ReplaceAll(c.name, " ", "-")
			if _, err := d.client.SetAgentPolicy(bg(t), agent, api.ExecPolicy{DisabledRules: allRules}); err != nil {
				t.Fatal(err)
			}
			wantOK(t, d.exec(t, agent, "bash", "echo before > ~/before.txt; echo ready"), "ready")
			if c.lang == "python" {
				warmZygote(t, d, agent)
			}
			start := time.Now()
			r := d.execReq(t, api.ExecRequest{AgentID: agent, Language: c.lang, Code: c.code, Limits: c.limits})
			t.Logf("%s: %s in %v", c.name, describe(r), time.Since(start).Round(time.Millisecond))
			ok := false
			for _, v := range c.verdicts {
				ok = ok || r.Verdict == v
			}
			if !ok {
				t.Fatalf("verdict %s, want one of %v", r.Verdict, c.verdicts)
			}
			if c.check != nil {
				c.check(t, r)
			}
			// The next run works; it says whether the sandbox survived.
			next := d.exec(t, agent, "bash", "cat ~/before.txt 2>/dev/null || echo gone")
			if next.Verdict != api.VerdictOK {
				t.Fatalf("next run failed: %s", describe(next))
			}
			switch strings.TrimSpace(next.Stdout) {
			case "before":
				if r.SandboxLost || next.SandboxRecreated {
					t.Fatalf("files survived but the result said the sandbox was lost: %s / %s", describe(r), describe(next))
				}
			case "gone":
				if !r.SandboxLost || !next.SandboxRecreated {
					t.Fatalf("files are gone but the results did not say so: %s / %s", describe(r), describe(next))
				}
			default:
				t.Fatalf("next run: %s", describe(next))
			}
			wantOK(t, d.exec(t, agent, "python", "print(2+2)"), "4")
		})
	}
}

// warmZygote runs python for agent until a run is forked from the guest agent's
// waiting interpreter (the python fast path), so that the next python run is too.
func warmZygote(t *testing.T, d *daemon, agent string) {
	t.Helper()
	probe := "import os\nprint('python-zygote' in open('/proc/%d/cmdline' % os.getppid()).read())"
	for i := 0; i < 50; i++ {
		if r := d.exec(t, agent, "python", probe); strings.TrimSpace(r.Stdout) == "True" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("python runs are not forked from the zygote")
}

// The host's files are not visible inside, and nothing inside reaches the network —
// not the daemon on the host's loopback, not any other address.
func TestEscapes(t *testing.T) {
	d := shared(t)
	marker, err := os.CreateTemp("/tmp", "vmexec-host-marker-")
	if err != nil {
		t.Fatal(err)
	}
	marker.WriteString("host-secret-42")
	marker.Close()
	defer os.Remove(marker.Name())
	res := d.exec(t, "escape", "bash", fmt.Sprintf("cat %s /etc/shadow-host 2>&1; cat /proc/1/cmdline | tr '\\0' ' '; echo", marker.Name()))
	if strings.Contains(res.Stdout, "host-secret-42") {
		t.Fatalf("host file readable inside: %s", describe(res))
	}
	u, _ := url.Parse(d.url)
	code := fmt.Sprintf(`import socket
for host, port in [("127.0.0.1", %s), ("localhost", %s), ("1.1.1.1", 443), ("8.8.8.8", 53), ("192.168.1.1", 80)]:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); print("CONNECTED", host, port)
    except OSError as e:
        print("BLOCKED", host, e)
`, u.Port(), u.Port())
	res = d.exec(t, "escape", "python", code)
	if strings.Contains(res.Stdout, "CONNECTED") || strings.Count(res.Stdout, "BLOCKED") != 5 {
		t.Fatalf("network reachable from inside: %q %q", res.Stdout, res.Stderr)
	}
	// Real, effective, saved and filesystem ids are all the run user's, with no
	// supplementary groups (the launcher drops them on the thread that execs).
	res = d.exec(t, "escape", "bash", "grep -E '^(Uid|Gid|Groups):' /proc/self/status")
	if want := "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\n"; strings.ReplaceAll(res.Stdout, " ", "") != want {
		t.Fatalf("credentials inside the sandbox: got %q, want %q (%s)", res.Stdout, want, describe(res))
	}
}

// The daemon leaves no runsc process when it stops, and one that crashed leaves
// sandboxes that the next daemon removes at start.
func TestRestartLeavesNoOrphans(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, daemonOpts{dataDir: dir, extra: []string{"--pool-size", "1"}})
	r := d.exec(t, "restart", "bash", "echo hi")
	wantOK(t, r, "hi")
	old := r.SandboxID
	if len(runscProcs(dir)) == 0 {
		t.Fatal("no runsc process found for a live sandbox; the check itself is broken")
	}
	d.kill() // a crash: its sandboxes stay behind
	if procs := runscProcs(old); len(procs) == 0 {
		t.Fatalf("expected the crashed daemon's sandbox %s to linger", old)
	}
	d.start()
	deadline := time.Now().Add(10 * time.Second)
	for len(runscProcs(old)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if procs := runscProcs(old); len(procs) > 0 {
		t.Fatalf("sandbox %s of the crashed daemon still running after restart: %v", old, procs)
	}
	wantOK(t, d.exec(t, "restart", "bash", "echo again"), "again")
	d.stop()
	deadline = time.Now().Add(10 * time.Second)
	for len(runscProcs(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if procs := runscProcs(dir); len(procs) > 0 {
		t.Fatalf("runsc processes left after the daemon stopped: %v", procs)
	}
}
