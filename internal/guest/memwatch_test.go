package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Memory is limited by what the run's processes hold, not by address space: 32 python
// threads, all alive at once, start under the default 512 MiB (under an address-space
// limit each thread's stack and malloc arena counted, and a dozen threads failed).
func TestThreadsUnderMemoryLimit(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	code := `import threading
from concurrent.futures import ThreadPoolExecutor
barrier = threading.Barrier(32)
def work(i):
    barrier.wait(timeout=20)  # all 32 threads exist at once
    return i
with ThreadPoolExecutor(32) as pool:
    print(sum(pool.map(work, range(32))), threading.active_count())
`
	res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: code,
		Limits: agentproto.Limits{MemoryBytes: 512 << 20, TimeoutMS: 30000}})
	if res.Verdict != agentproto.VerdictOK || strings.TrimSpace(string(res.Stdout)) != "496 33" {
		t.Fatalf("32 threads: %s", describe(res))
	}
}

// The memory watch counts all the run's processes together, also those that left the
// run's process group (setsid), and kills them all: four children holding 80 MiB each
// pass a 256 MiB limit that none of them passes alone.
func TestMemoryWatchSumsProcesses(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	code := `import os, sys, time
for i in range(4):
    if os.fork() == 0:
        if i % 2:
            os.setsid()  # out of the run's process group and session
        b = bytearray(80 << 20)  # written, so resident
        time.sleep(60)
        os._exit(0)
time.sleep(60)
`
	res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: code,
		Limits: agentproto.Limits{MemoryBytes: 256 << 20, TimeoutMS: 20000}})
	if res.Verdict != agentproto.VerdictMemoryLimit || !bytes.Contains(res.Stderr, []byte("over its memory limit of 256 MiB")) {
		t.Fatalf("four children over the limit together: %s", describe(res))
	}
	if left := processesUnder(filepath.Join(opts.RunBase, "run-")); len(left) > 0 {
		t.Fatalf("processes of the killed run still running: %v", left)
	}
}

// A run that stays within its limit is left alone, however its memory is spread.
func TestMemoryWatchWithinLimit(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	code := `import os
b = bytearray(64 << 20)
pids = [os.fork() for _ in range(1)]
if pids[0] == 0:
    c = bytearray(64 << 20)
    os._exit(0)
os.waitpid(pids[0], 0)
print("ok")
`
	res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: code,
		Limits: agentproto.Limits{MemoryBytes: 256 << 20, TimeoutMS: 20000}})
	if res.Verdict != agentproto.VerdictOK || strings.TrimSpace(string(res.Stdout)) != "ok" {
		t.Fatalf("a run within its memory limit: %s", describe(res))
	}
}

// processesUnder lists the live processes whose command line mentions dir.
func processesUnder(dir string) []string {
	var out []string
	eachProc(func(pid string, f [][]byte) {
		if string(f[0]) == "Z" {
			return
		}
		if cmd, err := os.ReadFile("/proc/" + pid + "/cmdline"); err == nil && bytes.Contains(cmd, []byte(dir)) {
			out = append(out, pid+" "+string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		}
	})
	return out
}
