package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// LaunchCommand is the hidden first argument with which the agent re-executes itself
// as the launcher of one program: "<agent> __vmexec_launch <json launchSpec>".
//
// Go cannot set resource limits or credentials between fork and exec of a child, and
// setting them on a running child races with its start. So every program is started
// through a tiny launcher process: the agent forks /proc/self/exe with this argument
// (in a new process group, with the run's pipes as fds 0-2 and a status pipe as fd 3);
// the launcher sets the run's rlimits, empties its capability bounding set, drops to
// the run user, clears its capabilities, sets no_new_privs and execs the program.
// If any step fails, the launcher writes the reason to fd 3 and exits 127; if the exec
// succeeds, fd 3 (close-on-exec) is closed with nothing written. The agent therefore
// tells "could not start" apart from "started and failed".
const LaunchCommand = "__vmexec_launch"

// launchExitCode is the launcher's exit code when it fails before exec.
const launchExitCode = 127

// launchStatusFD is the launcher's status pipe.
const launchStatusFD = 3

// launchSpec is what the launcher applies before exec. Zero limits are not set.
type launchSpec struct {
	Argv []string `json:"argv"`
	Dir  string   `json:"dir"`
	// Setuid drops to UID/GID (with no supplementary groups) before exec.
	Setuid   bool   `json:"setuid,omitempty"`
	UID      uint32 `json:"uid,omitempty"`
	GID      uint32 `json:"gid,omitempty"`
	FileSize int64  `json:"fsize,omitempty"` // RLIMIT_FSIZE
	NProc    int64  `json:"nproc,omitempty"` // RLIMIT_NPROC
}

// MaybeLaunch runs the launcher and never returns if os.Args asks for it; otherwise it
// returns at once. Call it first thing in main (and in TestMain of tests that run
// programs), before any other initialisation.
func MaybeLaunch() {
	if len(os.Args) == 3 && os.Args[1] == LaunchCommand {
		launch(os.Args[2])
	}
	if len(os.Args) == 2 && os.Args[1] == mqueueCommand {
		mqueueMain() // see mqueue.go
	}
}

// launch is the launcher: apply the spec and exec, or report why not and exit.
func launch(arg string) {
	// The status pipe must not leak into the program; set it first so that every
	// later failure can still be reported through it.
	syscall.CloseOnExec(launchStatusFD)
	// Credentials are dropped on this thread only, and this thread execs (see dropTo).
	runtime.LockOSThread()
	err := applyAndExec(arg)
	status := os.NewFile(launchStatusFD, "status")
	fmt.Fprintf(status, "%v", err)
	os.Exit(launchExitCode)
}

func applyAndExec(arg string) error {
	var s launchSpec
	if err := json.Unmarshal([]byte(arg), &s); err != nil {
		return fmt.Errorf("bad launch spec: %w", err)
	}
	if len(s.Argv) == 0 {
		return errors.New("bad launch spec: empty argv")
	}
	// Resolve the program as root, like the rest of the set-up; execve checks that the
	// run user may execute it.
	path, err := exec.LookPath(s.Argv[0])
	if err != nil && !errors.Is(err, exec.ErrDot) {
		return err
	}
	if s.Dir != "" {
		if err := os.Chdir(s.Dir); err != nil {
			return err
		}
	}
	limits := []struct {
		res int
		val int64
	}{
		{unix.RLIMIT_CORE, 0},
		{unix.RLIMIT_FSIZE, s.FileSize},
		{unix.RLIMIT_NPROC, s.NProc},
	}
	for _, l := range limits {
		if l.val == 0 && l.res != unix.RLIMIT_CORE {
			continue
		}
		if err := setrlimit(l.res, l.val); err != nil {
			return err
		}
	}
	if s.Setuid {
		if err := dropBoundingSet(); err != nil {
			return err
		}
		if err := dropTo(s.UID, s.GID); err != nil {
			return err
		}
		if err := clearCapabilities(); err != nil {
			return err
		}
	}
	if err := noNewPrivileges(); err != nil {
		return err
	}
	err = syscall.Exec(path, s.Argv, os.Environ())
	if errors.Is(err, syscall.EAGAIN) {
		return fmt.Errorf("exec %s: %w (%s)", path, err, nprocExhausted)
	}
	return fmt.Errorf("exec %s: %w", path, err)
}

// dropTo drops the calling thread, which must be locked to its goroutine and is the one
// that execs, to uid and gid with no supplementary groups. Only this thread: the Go
// runtime's other threads stay root and vanish at exec. syscall.Setuid would change every
// thread, and each would count against the run's RLIMIT_NPROC when execve checks it, so
// how many processes a run may start would depend on how many threads the launcher
// happened to have (varying from run to run). New threads the runtime starts from now on
// come from its template thread, which LockOSThread started while still root.
func dropTo(uid, gid uint32) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGID, uintptr(gid), 0, 0); e != 0 {
		return fmt.Errorf("setgid %d: %w", gid, e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETUID, uintptr(uid), 0, 0); e != 0 {
		return fmt.Errorf("setuid %d: %w", uid, e)
	}
	return nil
}

// dropBoundingSet empties the calling thread's capability bounding set (it needs
// CAP_SETPCAP, so it comes before dropTo): no exec, of a setuid or file-capability
// binary included, can give the program a capability again.
func dropBoundingSet() error {
	for c := 0; c <= 63; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, syscall.EINVAL) {
			return nil // past the last capability this kernel knows
		}
		if err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// clearCapabilities empties the calling thread's capability sets. After a setuid from
// root to another user the permitted and effective sets are already empty; the
// inheritable and ambient sets may not be.
func clearCapabilities() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	return nil
}

// noNewPrivileges sets no_new_privs on the calling thread, inherited by everything the
// program starts: setuid and setgid bits and file capabilities are ignored at exec, so
// neither the program nor its children ever gain a privilege (su, mount and passwd run
// as the run user and fail).
func noNewPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// nprocExhausted is in the launcher's error when the run user is at its process limit.
const nprocExhausted = "the run user is at its process limit"

// setrlimit sets both the soft and the hard limit. Without CAP_SYS_RESOURCE a hard
// limit cannot be raised, so a value above the current hard limit is clamped to it:
// the run gets the tighter bound.
func setrlimit(res int, val int64) error {
	lim := unix.Rlimit{Cur: uint64(val), Max: uint64(val)}
	err := unix.Setrlimit(res, &lim)
	if errors.Is(err, syscall.EPERM) {
		var old unix.Rlimit
		if unix.Getrlimit(res, &old) == nil && lim.Max > old.Max {
			lim = unix.Rlimit{Cur: old.Max, Max: old.Max}
			err = unix.Setrlimit(res, &lim)
		}
	}
	if err != nil {
		return fmt.Errorf("setrlimit %d=%d: %w", res, val, err)
	}
	return nil
}
