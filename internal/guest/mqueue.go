package guest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// POSIX message queues, for the settled check.
//
// A queue a run creates with mq_open outlives the run, as a System V object does, but
// only an mqueue filesystem lists them, and the sandbox has none mounted (the agent
// has no CAP_SYS_ADMIN in gVisor, and a mount where the run user could reach it would
// be one more thing to keep in every snapshot). So, once, the agent starts a helper
// (itself, re-executed with mqueueCommand) in a mount namespace of its own, in a new
// user namespace where it may mount when it may not otherwise (gVisor gives a process
// every capability in a user namespace it creates): the helper makes its
// mounts private, mounts the sandbox IPC namespace's mqueue filesystem on /tmp (in its
// own namespace only), opens the mount's root and passes the descriptor to the agent
// over a socket, and exits. The agent lists that directory (rewound) whenever it asks
// whether the sandbox is quiet; the open descriptor keeps the mount alive, and is in
// the sandbox's checkpoints with the rest of the agent.
//
// The queues are the IPC namespace's, shared by every agent in the process, hence one
// view per process. If the helper fails (a kernel that refuses both namespaces), the
// agent cannot tell, and no run is settled; it tries again mqueueRetry later.

// mqueueCommand is the hidden first argument of the helper: "<agent> __vmexec_mqueue".
const mqueueCommand = "__vmexec_mqueue"

// mqueueFD is the helper's socket to the agent.
const mqueueFD = 3

// mqueueWait bounds the wait for the helper's answer (a variable for its test).
var mqueueWait = 5 * time.Second

// mqueueHelperID is the uid and gid outside its user namespace of a helper started in
// one: nobody, which owns nothing the helper could touch.
const mqueueHelperID = 65534

// mqueueRetry is how long after a failed helper the next settled check tries again:
// a failure that passes (a fork refused for want of memory, a helper that timed out)
// must not leave the agent, and every snapshot of it, unable to settle a run.
const mqueueRetry = 30 * time.Second

var mqView struct {
	mu       sync.Mutex
	dir      *os.File  // the mqueue filesystem's root; nil until it could be opened
	failedAt time.Time // the last helper's failure
}

// posixQueues reports whether any POSIX message queue exists (or it cannot tell).
func (a *agent) posixQueues() bool {
	mqView.mu.Lock()
	defer mqView.mu.Unlock()
	if mqView.dir == nil && (mqView.failedAt.IsZero() || time.Since(mqView.failedAt) >= mqueueRetry) {
		f, err := a.openMqueue()
		if err != nil {
			mqView.failedAt = time.Now()
			a.log.Warn("cannot list POSIX message queues: no run is settled until it can", "err", err,
				"retry_in", mqueueRetry)
		}
		mqView.dir = f
	}
	if mqView.dir == nil {
		return true
	}
	if _, err := mqView.dir.Seek(0, io.SeekStart); err != nil {
		return true
	}
	names, err := mqView.dir.Readdirnames(1)
	return len(names) > 0 || !errors.Is(err, io.EOF)
}

// openMqueue starts the helper in a new mount namespace (in a new user namespace too
// if the agent may not create one on its own) and returns the directory it sends.
func (a *agent) openMqueue() (*os.File, error) {
	var errs []error
	for _, flags := range []uintptr{syscall.CLONE_NEWNS, syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS} {
		f, err := a.mqueueHelper(flags)
		if err == nil {
			return f, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (a *agent) mqueueHelper(flags uintptr) (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "mqueue-helper")
	defer ours.Close()
	theirs := os.NewFile(uintptr(fds[1]), "mqueue-helper")
	defer theirs.Close()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devNull.Close()
	attr := &syscall.ProcAttr{
		Files: []uintptr{devNull.Fd(), devNull.Fd(), os.Stderr.Fd(), theirs.Fd()},
		Sys:   &syscall.SysProcAttr{Cloneflags: flags},
	}
	if flags&syscall.CLONE_NEWUSER != 0 {
		// The helper must be root in the new namespace, or its exec would drop the
		// capabilities it has there. Mapping the agent's own root into it takes
		// CAP_SETFCAP, which the agent may lack; so root there is mqueueHelperID
		// outside, which the helper becomes (setuid 0 in the namespace) before exec.
		id := []syscall.SysProcIDMap{{ContainerID: 0, HostID: mqueueHelperID, Size: 1}}
		attr.Sys.UidMappings, attr.Sys.GidMappings = id, id
		attr.Sys.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	pid, exit, err := a.reaper.start(func() (int, error) {
		return syscall.ForkExec(a.opts.Launcher, []string{"vmexec-mqueue", mqueueCommand}, attr)
	})
	if err != nil {
		return nil, fmt.Errorf("start helper (clone flags %#x): %w", flags, err)
	}
	theirs.Close()
	// A helper that neither answers nor exits (a mount that hangs) must not hold the
	// settled check, and every run after it, forever: it gets mqueueWait, then SIGKILL.
	tv := unix.NsecToTimeval(mqueueWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(int(ours.Fd()), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		a.awaitExit(exit, pid)
		return nil, fmt.Errorf("helper socket timeout: %w", err)
	}
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, rerr := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if rerr != nil {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	a.awaitExit(exit, pid)
	if rerr != nil {
		return nil, fmt.Errorf("helper (clone flags %#x): %w", flags, rerr)
	}
	if oobn > 0 {
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			var fds []int
			for i := range msgs {
				if rights, err := unix.ParseUnixRights(&msgs[i]); err == nil {
					fds = append(fds, rights...)
				}
			}
			if len(fds) == 1 {
				return os.NewFile(uintptr(fds[0]), "mqueue"), nil
			}
			for _, fd := range fds { // not what the helper sends: none is kept
				syscall.Close(fd)
			}
		}
	}
	return nil, fmt.Errorf("helper (clone flags %#x): %s", flags, buf[:n])
}

// mqueueMain is the helper (see the top of this file); it never returns.
func mqueueMain() {
	sock := os.NewFile(mqueueFD, "agent")
	fail := func(what string, err error) {
		fmt.Fprintf(sock, "%s: %v", what, err)
		os.Exit(1)
	}
	// Private first, so that the mount cannot propagate to the sandbox's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fail("make mounts private", err)
	}
	if err := unix.Mount("mqueue", "/tmp", "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fail("mount mqueue", err)
	}
	fd, err := unix.Open("/tmp", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		fail("open mqueue", err)
	}
	if err := unix.Sendmsg(mqueueFD, []byte("ok"), unix.UnixRights(fd), nil, 0); err != nil {
		fail("send", err)
	}
	os.Exit(0)
}
