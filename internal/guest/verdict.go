package guest

import (
	"bytes"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// memoryMarkers are what runtimes print when an allocation fails. They are looked for
// (case-insensitively) in the tail of stderr of any run that did not exit 0, whatever its language (a bash
// script may run python, and so on).
var memoryMarkers = [][]byte{
	[]byte("MemoryError"),                    // python
	[]byte("JavaScript heap out of memory"),  // node (then SIGABRT)
	[]byte("Array buffer allocation failed"), // node, Buffers under RLIMIT_AS
	[]byte("memory allocation of"),           // rust: "memory allocation of N bytes failed" (then SIGABRT)
	[]byte("runtime: out of memory"),         // go: "fatal error: runtime: out of memory"
	[]byte("cannot allocate memory"),         // ENOMEM from the C library (strerror)
	[]byte("xmalloc: cannot allocate"),       // bash
	[]byte("xrealloc: cannot allocate"),      // bash
}

// markerTail is how much of the end of stderr is searched for memory markers.
const markerTail = 8 << 10

// resultOf turns how a process ended into a result. The verdict rules, in order:
//
//  1. timeout: the deadline passed and the agent killed the process group.
//  2. output_limit: a stream passed its limit (the agent killed the group, or the
//     program exited while passing it).
//  3. ok: exited 0. Nothing else is looked at.
//  4. memory_limit: exited non-zero or by a signal with a memory marker (see
//     memoryMarkers) near the end of stderr; or killed by SIGKILL, which the agent did
//     not send: inside a sandbox the only routine sender of SIGKILL is the kernel's
//     OOM killer (a program that SIGKILLs itself is misreported, an accepted cost).
//  5. nonzero_exit: exited non-zero (this includes compile errors).
//  6. killed: any other signal; Signal names it ("SIGSEGV") and the exit code is
//     128+signo, as a shell reports it.
//
// A run whose background processes were killed as a fork bomb after it exited (see
// procResult.contained) is killed (the caller appends containedNote to stderr). A run
// the host cancelled is canceled, whatever else happened to it.
//
// The result carries no output: it was streamed, or the caller sends what was kept.
func resultOf(pr *procResult) *agentproto.ExecResult {
	r := &agentproto.ExecResult{
		StdoutTruncated: pr.stdoutTrunc,
		StderrTruncated: pr.stderrTrunc,
	}
	ws := pr.exit.Status
	switch {
	case pr.exit.Err != nil:
		r.ExitCode = -1
		r.Error = pr.exit.Err.Error()
	case ws.Signaled():
		r.ExitCode = 128 + int(ws.Signal())
		r.Signal = unix.SignalName(ws.Signal())
		if r.Signal == "" {
			r.Signal = "signal " + strconv.Itoa(int(ws.Signal()))
		}
	default:
		r.ExitCode = ws.ExitStatus()
	}

	switch {
	case pr.cancelled && pr.hostCancel:
		r.Verdict = agentproto.VerdictCanceled
		r.Error = "canceled by the host"
	case pr.timedOut:
		r.Verdict = agentproto.VerdictTimeout
	case pr.outputLimit:
		r.Verdict = agentproto.VerdictOutputLimit
	case pr.cancelled:
		r.Verdict = agentproto.VerdictKilled
		r.Error = "agent stopping"
	case pr.exit.Err != nil:
		r.Verdict = agentproto.VerdictKilled
	case pr.contained:
		r.Verdict = agentproto.VerdictKilled
		if r.ExitCode == 0 {
			r.ExitCode = 128 + int(syscall.SIGKILL) // never report a killed run as exit 0
		}
	case !ws.Signaled() && ws.ExitStatus() == 0:
		r.Verdict = agentproto.VerdictOK
	case hasMemoryMarker(pr.stderrTail), ws.Signaled() && ws.Signal() == syscall.SIGKILL:
		r.Verdict = agentproto.VerdictMemoryLimit
	case ws.Signaled():
		r.Verdict = agentproto.VerdictKilled
	default:
		r.Verdict = agentproto.VerdictNonzeroExit
	}
	return r
}

func hasMemoryMarker(stderr []byte) bool {
	tail := bytes.ToLower(stderr[max(0, len(stderr)-markerTail):])
	for _, m := range memoryMarkers {
		if bytes.Contains(tail, bytes.ToLower(m)) {
			return true
		}
	}
	return false
}

// containedNote is appended to the stderr of a run whose background fork bomb was killed.
const containedNote = "\nvmexec: background processes exhausted the process limit; their process group was killed\n"
