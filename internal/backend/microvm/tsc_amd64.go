package microvm

import (
	"sync"
	"time"
)

func rdtsc() uint64

// hostTSCkHz measures the host's TSC frequency once per process (about 0.1 s): the
// best of a few samples of the TSC against the monotonic clock, each bracketed tightly.
var hostTSCkHz = sync.OnceValue(func() int64 {
	sample := func() (time.Time, uint64, time.Duration) {
		t0 := time.Now()
		c := rdtsc()
		return t0, c, time.Since(t0)
	}
	var bestWindow time.Duration = -1
	var khz int64
	for range 3 {
		t0, c0, w0 := sample()
		time.Sleep(30 * time.Millisecond)
		t1, c1, w1 := sample()
		if w := w0 + w1; bestWindow < 0 || w < bestWindow {
			bestWindow = w
			khz = int64(float64(c1-c0) / float64(t1.Sub(t0).Nanoseconds()) * 1e6)
		}
	}
	return khz
})
