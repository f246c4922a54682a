package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// Restores through the control server.
//
// A restore into a standby (standby.go) was a `runsc restore` process: it loads the
// container's state from the runsc root, sets the sandbox's network up, makes one
// containerManager.Restore call to the sandbox's control server with the image files
// attached, and then stays, blocked in a containerManager.Wait call, as the
// sandbox's supervisor. The process alone (a 40 MB Go binary started, its state
// read and locked) costs about as much as the restore it asks for. restoreDirect
// makes the same calls from the daemon (control.go's wire), and supervises the
// sandbox with its own Wait call on a connection it holds, so that a restore starts
// no process at all.
//
// What runsc's process would also do and this path does not: record the container
// as "running" in the runsc root (it stays "created" there; the backend knows
// better, see Backend.restored, and runsc's delete, checkpoint and list take a
// created container as they take a running one), and adjust oom_score_adj, which
// vmexec's specs leave unset. Config.Restore = RestoreRunsc (or
// $VMEXEC_GVISOR_RESTORE=runsc) keeps the process, to measure one against the other.

// Ways to restore into a standby (Config.Restore).
const (
	RestoreControl = "control"
	RestoreRunsc   = "runsc"
)

// Control server methods a restore uses (runsc/boot/controller.go).
const (
	ctlSetNetworkArgs = "containerManager.SetNetworkArgs"
	ctlRestore        = "containerManager.Restore"
	ctlWait           = "containerManager.Wait"
)

// restoreOpts is runsc/boot.RestoreOpts. Its files, in order: the state file, the
// pages metadata file and the pages file (HavePagesFile).
type restoreOpts struct {
	HavePagesFile  bool
	HaveDeviceFile bool
	Background     bool
}

// networkArgs is the part of runsc/boot.CreateLinksAndRoutesArgs that `runsc
// restore` sends for --network=none: the loopback interface only, marked as a
// restore's (the restored network stack is configured with it).
type networkArgs struct {
	LoopbackLinks []loopbackLink
	IsRestore     bool
}

// loopbackLink is runsc/boot.LoopbackLink.
type loopbackLink struct {
	Name      string
	Addresses []ipWithPrefix
	Routes    []route
	GVisorGRO bool
}

// ipWithPrefix is runsc/boot.IPWithPrefix.
type ipWithPrefix struct {
	Address   net.IP
	PrefixLen int
}

// route is runsc/boot.Route.
type route struct {
	Destination net.IPNet
	Gateway     net.IP
	MTU         uint32
}

// loopbackNetwork is what runsc's createDefaultLoopbackInterface sends on a
// restore: runsc/boot.DefaultLoopbackLink ("lo", 127.0.0.1/8 and ::1/128).
func loopbackNetwork() networkArgs {
	return networkArgs{IsRestore: true, LoopbackLinks: []loopbackLink{{
		Name: "lo",
		Addresses: []ipWithPrefix{
			{Address: net.IP("\x7f\x00\x00\x01"), PrefixLen: 8},
			{Address: net.IPv6loopback, PrefixLen: 128},
		},
		Routes: []route{
			{Destination: net.IPNet{IP: net.IPv4(0x7f, 0, 0, 0), Mask: net.IPv4Mask(0xff, 0, 0, 0)}},
			{Destination: net.IPNet{IP: net.IPv6loopback, Mask: net.IPMask(strings.Repeat("\xff", net.IPv6len))}},
		},
	}}}
}

// openImage opens the image files in dir for a restore: the state file, and the
// pages metadata and pages files when the image has them (HavePagesFile).
func openImage(dir string) (files []*os.File, havePages bool, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	f, err := os.Open(filepath.Join(dir, stateFileName))
	if err != nil {
		return nil, false, fmt.Errorf("image: %w", err)
	}
	files = append(files, f)
	meta, err := os.Open(filepath.Join(dir, pagesMetadataFileName))
	if errors.Is(err, os.ErrNotExist) {
		return files, false, nil // one file holds everything
	}
	if err != nil {
		return files, false, fmt.Errorf("image: %w", err)
	}
	files = append(files, meta)
	pages, err := os.Open(filepath.Join(dir, pagesFileName))
	if err != nil {
		return files, false, fmt.Errorf("image: %w", err)
	}
	return append(files, pages), true, nil
}

// restoreDirect restores the image in imageDir into the standby st through its
// control server, and reaches the restored agent over the standby's pipes. On any
// error the standby is destroyed.
func (b *Backend) restoreDirect(ctx context.Context, st *standby, imageDir string) (_ *Sandbox, err error) {
	t := time.Now()
	id := st.spec.ID
	sb := &Sandbox{b: b, id: id, created: time.Now(), pid: st.pid, pipes: st.pipes, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			b.restored.Delete(id)
			b.destroyStandby(st) // and so the sandbox: a watch sees its end
		}
	}()
	files, havePages, err := openImage(imageDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err := b.controlCall(ctx, id, ctlSetNetworkArgs, loopbackNetwork(), nil, nil); err != nil {
		return nil, fmt.Errorf("restore into standby %s: %w", id, err)
	}
	t = b.observe("restore", "network args (control)", t)
	opts := restoreOpts{HavePagesFile: havePages} // not Background: the RPC returns with the memory loaded
	if err := b.controlCall(ctx, id, ctlRestore, opts, files, nil); err != nil {
		return nil, fmt.Errorf("restore into standby %s: %w; console: %s", id, err, b.consoleTail(id))
	}
	t = b.observe("restore", "restore call (control)", t)
	// From here the sandbox runs: it is supervised by a Wait call of our own, as
	// `runsc restore` would supervise it.
	b.restored.Store(id, sb)
	if sb.watch, err = b.watchContainer(id, sb); err != nil {
		return nil, fmt.Errorf("restore into standby %s: %w", id, err)
	}
	hctx, cancel := context.WithTimeout(ctx, b.cfg.StartTimeout)
	defer cancel()
	outR := st.pipes[1]
	go func() {
		select {
		case <-sb.exited:
			outR.Close()
		case <-hctx.Done():
		}
	}()
	client, err := agentproto.Dial(hctx, outR, st.pipes[0], closerFunc(sb.closePipes))
	if err != nil {
		return nil, fmt.Errorf("restore into standby %s: %w; console: %s", id, err, b.consoleTail(id))
	}
	b.observe("restore", "handshake", t)
	sb.client = client
	sb.GuestFiles = backend.GuestFiles{Client: client, Do: sb.do}
	return sb, nil
}

// watchContainer makes containerManager.Wait for the container id on a connection
// of its own, and closes sb.exited once it returns: when the container's init (the
// agent) exits, or when the sandbox process ends and the connection with it. The
// returned closer ends the watch (the call) early.
func (b *Backend) watchContainer(id string, sb *Sandbox) (*net.UnixConn, error) {
	conn, err := b.controlConn(id)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(struct {
		Method string `json:"method"`
		Arg    any    `json:"arg"`
	}{ctlWait, id})
	if err == nil {
		_, err = conn.Write(data)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("control call %s: %w", ctlWait, err)
	}
	go func() {
		defer close(sb.exited)
		defer conn.Close()
		var reply struct {
			Success bool   `json:"success"`
			Err     string `json:"err"`
			Result  uint32 `json:"result"`
		}
		switch err := json.NewDecoder(conn).Decode(&reply); {
		case err != nil:
			sb.waitErr = fmt.Errorf("the sandbox ended (its control connection: %w)", err)
		case !reply.Success:
			sb.waitErr = fmt.Errorf("waiting for the sandbox: %s", strings.TrimSpace(reply.Err))
		default:
			sb.waitErr = fmt.Errorf("the guest agent exited (wait status %#x)", reply.Result)
		}
	}()
	return conn, nil
}

// readPIDFile reads the pid `runsc create --pid-file` wrote: the sandbox process's.
func readPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q", path, data)
	}
	return pid, nil
}
