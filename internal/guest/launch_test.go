package guest

import (
	"os"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// privilegeProbe prints the run's privilege state, then starts the setuid-root binary
// su (blocked reading a password from a FIFO), waits until su has been exec'd and prints
// its ids: with no_new_privs its effective uid is the run user's, without it 0.
const privilegeProbe = `grep -E '^(NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status
f=$(mktemp -u); mkfifo "$f"; exec 3<>"$f"
su -c id root <&3 >/dev/null 2>&1 &
pid=$!
until grep -qE '^Name:[[:space:]]+su$' /proc/$pid/status 2>/dev/null; do sleep 0.01; done
grep '^Uid:' /proc/$pid/status
kill $pid; wait; rm -f "$f"`

// wantNoPrivileges checks privilegeProbe's output: no_new_privs set, no capability in
// any set, and su running without root.
func wantNoPrivileges(t *testing.T, out string) {
	t.Helper()
	fields := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	want := map[string]string{
		"NoNewPrivs": "1", "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
		"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"Uid": "1000 1000 1000 1000", // su: real, effective, saved, filesystem
	}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("%s: %q, want %q (output:\n%s)", k, fields[k], v, out)
		}
	}
}

// A run has no privileges and cannot gain any: no_new_privs is set, every capability
// set (the bounding set included) is empty, and a setuid-root binary runs as the run user.
func TestRunHasNoPrivileges(t *testing.T) {
	user := sandboxUser()
	if user == nil || user.UID != 1000 {
		t.Skip("needs root and a uid-1000 user to run programs as")
	}
	if fi, err := os.Stat("/usr/bin/su"); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Skip("needs a setuid-root /usr/bin/su on this host")
	}
	c := startAgent(t, testOptions(t, user))
	res := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: privilegeProbe})
	if res.Verdict != agentproto.VerdictOK {
		t.Fatalf("probe failed: %s", describe(res))
	}
	wantNoPrivileges(t, string(res.Stdout))
}
