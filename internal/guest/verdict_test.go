package guest

import (
	"errors"
	"syscall"
	"testing"

	"github.com/vmexec/vmexec/internal/agentproto"
)

func exited(code int) procExit             { return procExit{Status: syscall.WaitStatus(code << 8)} }
func signaled(sig syscall.Signal) procExit { return procExit{Status: syscall.WaitStatus(sig)} }

// The verdict rules of resultOf, one case per rule and per memory marker.
func TestResultOf(t *testing.T) {
	tests := []struct {
		name    string
		pr      procResult
		verdict string
		exit    int
		signal  string
	}{
		{"exit 0", procResult{exit: exited(0)}, agentproto.VerdictOK, 0, ""},
		{"exit 0 despite marker", procResult{exit: exited(0), stderrTail: []byte("MemoryError")}, agentproto.VerdictOK, 0, ""},
		{"exit 2", procResult{exit: exited(2)}, agentproto.VerdictNonzeroExit, 2, ""},
		{"timeout", procResult{exit: signaled(syscall.SIGKILL), timedOut: true}, agentproto.VerdictTimeout, 137, "SIGKILL"},
		{"timeout wins over output", procResult{exit: signaled(syscall.SIGKILL), timedOut: true, outputLimit: true}, agentproto.VerdictTimeout, 137, "SIGKILL"},
		{"output limit", procResult{exit: signaled(syscall.SIGKILL), outputLimit: true}, agentproto.VerdictOutputLimit, 137, "SIGKILL"},
		{"output limit at exit", procResult{exit: exited(0), outputLimit: true}, agentproto.VerdictOutputLimit, 0, ""},
		{"python MemoryError", procResult{exit: exited(1), stderrTail: []byte("Traceback...\nMemoryError\n")}, agentproto.VerdictMemoryLimit, 1, ""},
		{"node heap", procResult{exit: signaled(syscall.SIGABRT), stderrTail: []byte("FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n")}, agentproto.VerdictMemoryLimit, 134, "SIGABRT"},
		{"rust alloc", procResult{exit: signaled(syscall.SIGABRT), stderrTail: []byte("memory allocation of 1073741824 bytes failed\n")}, agentproto.VerdictMemoryLimit, 134, "SIGABRT"},
		{"go oom", procResult{exit: exited(2), stderrTail: []byte("fatal error: runtime: out of memory\n")}, agentproto.VerdictMemoryLimit, 2, ""},
		{"bash xmalloc", procResult{exit: exited(2), stderrTail: []byte("bash: xmalloc: cannot allocate 268042240 bytes\n")}, agentproto.VerdictMemoryLimit, 2, ""},
		{"ENOMEM", procResult{exit: exited(1), stderrTail: []byte("OSError: [Errno 12] Cannot allocate memory\n")}, agentproto.VerdictMemoryLimit, 1, ""},
		{"SIGKILL not ours", procResult{exit: signaled(syscall.SIGKILL)}, agentproto.VerdictMemoryLimit, 137, "SIGKILL"},
		{"SIGSEGV", procResult{exit: signaled(syscall.SIGSEGV)}, agentproto.VerdictKilled, 139, "SIGSEGV"},
		{"SIGABRT without marker", procResult{exit: signaled(syscall.SIGABRT), stderrTail: []byte("assertion failed")}, agentproto.VerdictKilled, 134, "SIGABRT"},
		{"fork bomb contained", procResult{exit: exited(0), contained: true}, agentproto.VerdictKilled, 137, ""},
		{"lost status", procResult{exit: procExit{Err: errors.New("gone")}}, agentproto.VerdictKilled, -1, ""},
		{"canceled by the host", procResult{exit: signaled(syscall.SIGKILL), cancelled: true, hostCancel: true}, agentproto.VerdictCanceled, 137, "SIGKILL"},
		{"canceled wins over output", procResult{exit: signaled(syscall.SIGKILL), cancelled: true, hostCancel: true, outputLimit: true}, agentproto.VerdictCanceled, 137, "SIGKILL"},
		{"agent stopping", procResult{exit: signaled(syscall.SIGKILL), cancelled: true}, agentproto.VerdictKilled, 137, "SIGKILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := resultOf(&tt.pr)
			if r.Verdict != tt.verdict || r.ExitCode != tt.exit || r.Signal != tt.signal {
				t.Errorf("got verdict=%s exit=%d signal=%q; want %s %d %q", r.Verdict, r.ExitCode, r.Signal, tt.verdict, tt.exit, tt.signal)
			}
			if r.Stdout != nil || r.Stderr != nil {
				t.Errorf("the result carries output: it is streamed before it")
			}
		})
	}
}

// Zero limits take the defaults; output limits are not capped (output is streamed, so
// a large limit costs the guest nothing).
func TestWithDefaults(t *testing.T) {
	got := withDefaults(agentproto.Limits{MaxOutputBytes: 100 << 20, MaxProcs: 7})
	want := agentproto.Limits{
		TimeoutMS:      DefaultTimeout.Milliseconds(),
		MaxOutputBytes: 100 << 20,
		MaxFileBytes:   DefaultMaxFileBytes,
		MaxProcs:       7,
		MemoryBytes:    DefaultMemoryBytes,
	}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
