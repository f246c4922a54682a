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
		{"memory watch", procResult{exit: signaled(syscall.SIGKILL), memoryLimit: true, memoryUsed: 300 << 20, memoryMax: 256 << 20}, agentproto.VerdictMemoryLimit, 137, "SIGKILL"},
		{"memory watch at exit 0", procResult{exit: exited(0), memoryLimit: true}, agentproto.VerdictMemoryLimit, 137, ""},
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

// A group is steady when its tasks sleep, or stay the same while they get CPU; a group
// whose tasks change, or want to run but get no CPU, is not (a bomb on its way).
func TestSteadyGroup(t *testing.T) {
	look := func(members map[int]member) procCounts {
		return procCounts{byPgrp: map[int]int64{7: int64(len(members))}, members: members}
	}
	sleeping := look(map[int]member{7: {cpu: 3}, 8: {cpu: 1}})
	busy := look(map[int]member{7: {running: true, cpu: 3}, 8: {cpu: 1}})
	busier := look(map[int]member{7: {running: true, cpu: 3 + steadyCPU}, 8: {cpu: 1}})
	forked := look(map[int]member{9: {running: true}, 10: {running: true}})
	cases := []struct {
		name            string
		prev, cur       procCounts
		steady, starved bool
	}{
		{"asleep", busy, sleeping, true, false},
		{"busy with CPU", busy, busier, true, false},
		{"running without CPU", busy, busy, false, true},
		{"new tasks", busy, forked, false, false},
		{"new tasks, running without CPU", forked, forked, false, true},
	}
	for _, c := range cases {
		if ok, starved := steady(c.prev, c.cur, 7); ok != c.steady || starved != c.starved {
			t.Errorf("%s: steady=%v starved=%v, want %v %v", c.name, ok, starved, c.steady, c.starved)
		}
	}
	// Peaks count: a group that reached the thresholds at one look and burned out
	// before the next is a bomb; so is one that started as many processes as the limit.
	w := groupWatch{pgid: 7, uid: 1000, limit: 40, seen: map[int]bool{}, peakUID: 35, peakGrp: 25}
	if !w.bomb(sleeping, sleeping) {
		t.Errorf("peaks at the thresholds: not a bomb")
	}
	w = groupWatch{pgid: 7, uid: 1000, limit: 40, seen: map[int]bool{}, peakUID: 12, peakGrp: 12}
	for pid := 0; pid < 40; pid++ {
		w.seen[pid] = true
	}
	if !w.bomb(sleeping, sleeping) {
		t.Errorf("40 processes started, 12 at once: not a bomb")
	}
	w.peakGrp, w.peakUID = 3, 3
	if w.bomb(sleeping, sleeping) {
		t.Errorf("40 processes one after another (3 at once): a bomb")
	}
}

func TestForkFailureMarkers(t *testing.T) {
	if !hasForkFailure([]byte("x\n/tmp/.vmexec/run-2/main.sh: fork: retry: Resource temporarily unavailable\n")) {
		t.Errorf("bash's retry message not seen")
	}
	if !hasForkFailure([]byte("a\nmain.sh: line 1: fork: retry: Resource temporarily unavailable\nbash: fork: Interrupted system call\n")) {
		t.Errorf("bash's retry message with a line number not seen")
	}
	if !hasForkFailure([]byte("sh: 1: Cannot fork")) {
		t.Errorf("dash's message (no newline yet) not seen")
	}
	if hasForkFailure([]byte("Resource temporarily unavailable\n")) {
		t.Errorf("a bare EAGAIN taken for a shell's fork failure")
	}
	if hasForkFailure([]byte("grep: Cannot fork (from an old log)\nfork: retry: Resource temporarily unavailable, said the log\n")) {
		t.Errorf("output that mentions a fork failure taken for one")
	}
}
