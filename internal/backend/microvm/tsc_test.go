package microvm

import (
	"runtime"
	"testing"
)

// Guards the TSC measurement TCG guests are booted with (tsc_early_khz): a plausible
// frequency, stable across measurements.
func TestHostTSC(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("amd64 only")
	}
	khz := hostTSCkHz()
	if khz < 200_000 || khz > 10_000_000 {
		t.Fatalf("host TSC %d kHz is implausible", khz)
	}
	t.Logf("host TSC: %d kHz", khz)
}
