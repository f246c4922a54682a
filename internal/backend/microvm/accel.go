package microvm

import (
	"os"
	"sync"
	"time"
)

// accelChoice is an accelerator with the -cpu it needs.
type accelChoice struct {
	Accel string
	CPU   string
}

// attempt is one way to boot a sandbox, tried in order until one reaches the agent.
type attempt struct {
	accelChoice
	timeout time.Duration
}

// The accelerator found to work, per QEMU binary, for the life of the process: the
// KVM probe costs a boot, and its answer does not change while the host runs.
var accels struct {
	probeMu sync.Mutex // held while a probe boot runs
	mu      sync.Mutex
	known   map[string]accelChoice
}

func (b *Backend) knownAccel() (accelChoice, bool) {
	if b.cfg.Accel == AccelTCG {
		return accelChoice{Accel: AccelTCG}, true
	}
	accels.mu.Lock()
	defer accels.mu.Unlock()
	c, ok := accels.known[b.cfg.QEMU]
	if ok && b.cfg.Accel == AccelKVM && c.Accel != AccelKVM {
		return accelChoice{}, false
	}
	return c, ok
}

func (b *Backend) rememberAccel(c accelChoice) {
	accels.mu.Lock()
	defer accels.mu.Unlock()
	if accels.known == nil {
		accels.known = map[string]accelChoice{}
	}
	accels.known[b.cfg.QEMU] = c
}

// kvmCPUs are the -cpu values tried under KVM: plain host first; some nested hosts
// reject an MSR of it and need arch-capabilities off to start at all.
var kvmCPUs = []string{"host", "host,-arch-capabilities"}

// attempts returns how to boot a new sandbox, and whether the first to succeed answers
// the probe (the caller then holds accels.probeMu and records the result).
func (b *Backend) attempts() ([]attempt, bool) {
	st := b.cfg.StartTimeout
	if c, ok := b.knownAccel(); ok {
		return []attempt{{c, st}}, false
	}
	var out []attempt
	if b.cfg.Accel == AccelKVM {
		for _, cpu := range kvmCPUs {
			out = append(out, attempt{accelChoice{AccelKVM, cpu}, st})
		}
		return out, true
	}
	// auto
	if !kvmUsable() {
		return []attempt{{accelChoice{Accel: AccelTCG}, st}}, true
	}
	for _, cpu := range kvmCPUs {
		out = append(out, attempt{accelChoice{AccelKVM, cpu}, b.cfg.ProbeTimeout})
	}
	return append(out, attempt{accelChoice{Accel: AccelTCG}, st}), true
}

// plan returns the boot attempts for a new sandbox. When they make up a probe it
// holds the probe lock (one probe at a time) until release is called; a sandbox that
// waited for another's probe gets its outcome instead.
func (b *Backend) plan() (atts []attempt, probing bool, release func()) {
	if atts, probing = b.attempts(); !probing {
		return atts, false, func() {}
	}
	accels.probeMu.Lock()
	if atts, probing = b.attempts(); probing {
		return atts, true, accels.probeMu.Unlock
	}
	accels.probeMu.Unlock()
	return atts, false, func() {}
}

// settle records the outcome of a probe.
func (b *Backend) settle(c accelChoice) {
	b.rememberAccel(c)
	if c.Accel == AccelTCG && b.cfg.Accel == AccelAuto {
		b.log.Warn("KVM is not usable for microVMs on this host; using TCG emulation (several times slower)", "kvm_device", kvmUsable())
		return
	}
	b.log.Info("microVM accelerator chosen", "accel", c.Accel, "cpu", c.CPU)
}

// kvmUsable reports whether /dev/kvm can be opened; whether a guest actually runs under
// it is what the probe boot finds out.
func kvmUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
