//go:build !amd64

package microvm

// hostTSCkHz is unknown off amd64 (QEMU's x86 guests under TCG are not run there).
func hostTSCkHz() int64 { return 0 }
