package config

import (
	"os"
	"strconv"
	"strings"
)

// The default of sandbox.max_sandboxes comes from the host's memory:
//
//	max_sandboxes = clamp((MemTotal − HostReserveMiB) / PerSandboxMiB, MinSandboxes, MaxSandboxesCap)
//
// An idle sandbox costs its runsc processes about 30–36 MiB of host memory (PSS,
// measured by `go run ./bench -density N`: ~31 MiB booted, ~35 MiB restored from the
// template snapshot, after one run each); PerSandboxMiB leaves room for each to run
// something on top. HostReserveMiB is kept for the host, the daemon and the page
// cache of the template. On a 24 GiB host (MemTotal 23.5 GiB) that is 344; where MemTotal
// cannot be read, MinSandboxes. The memory budget (memory_budget_mb) still bounds
// the memory limits given out, so hosts whose sandboxes are given much memory meet
// that bound first.
const (
	PerSandboxMiB   = 64
	HostReserveMiB  = 2048
	MinSandboxes    = 16
	MaxSandboxesCap = 1024
)

// DefaultMaxSandboxes is max_sandboxes for a host of memTotalMiB (see above).
func DefaultMaxSandboxes(memTotalMiB int64) int {
	n := (memTotalMiB - HostReserveMiB) / PerSandboxMiB
	return int(min(max(n, MinSandboxes), MaxSandboxesCap))
}

// hostMemTotalMiB is MemTotal of /proc/meminfo in MiB, 0 when it cannot be read.
func hostMemTotalMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb >> 10
		}
	}
	return 0
}
