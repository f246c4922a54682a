package guest

import (
	"encoding/binary"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reseeding after a restore.
//
// Every sandbox restored from one image (the shared template snapshot, a fork, a
// rollback) starts with that image's memory, and so with its kernel's random state:
// without help, two restores of one image could hand their programs the same
// /dev/urandom bytes, and so the same python random, uuid4 and temporary names. The
// host therefore sends fresh entropy in each connection's hello (each restore is a
// new connection), and the agent mixes it in before it answers, so nothing a program
// of the new session runs sees the old state:
//
//   - it writes the bytes to /dev/urandom (mixed in, uncredited; any user may);
//   - it credits them with RNDADDENTROPY and forces a reseed of the kernel's CRNG with
//     RNDRESEEDCRNG, where the agent may (CAP_SYS_ADMIN: a microVM's agent; a Linux
//     kernel reseeds its CRNG from the input pool only every minute otherwise).
//
// gVisor's kernel draws every getrandom and /dev/urandom read from the host's
// getrandom, so its restores differ anyway and its /dev/urandom ignores writes; the
// reseed is what makes a guest with a real kernel (a microVM) differ too. Python's
// random, uuid4, secrets and tempfile draw their seeds from os.urandom when a program
// first uses them (the zygote imports none of them, and a forked run seeds its own on
// import), so the kernel's reseed is theirs too.

// reseed mixes entropy into the kernel's random state; errors are logged at debug
// level (an agent without CAP_SYS_ADMIN cannot credit, and need not).
func (a *agent) reseed(entropy []byte) {
	if len(entropy) == 0 {
		return
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		a.log.Debug("reseed: open /dev/urandom", "err", err)
		return
	}
	defer f.Close()
	if _, err := f.Write(entropy); err != nil {
		a.log.Debug("reseed: write /dev/urandom", "err", err)
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+((len(entropy)+3)&^3))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(entropy)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(entropy)))
	copy(info[8:], entropy)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		a.log.Debug("reseed: RNDADDENTROPY", "err", errno)
		return
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		a.log.Debug("reseed: RNDRESEEDCRNG", "err", errno)
	}
}
