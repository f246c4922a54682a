package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The sandbox's control server.
//
// Every runsc sandbox serves urpc on a unix socket, <runsc root>/runsc-<id>.sock: the
// server the runsc commands (checkpoint, pause, ...) are clients of. A `runsc
// checkpoint` is a new runsc process that loads the container's state from the runsc
// root, connects to that socket, sends one call with the image files attached, and
// exits; on this machine the process alone costs as much as the save it asks for.
// controlCall makes the same call from the daemon, with no process.
//
// The wire (gvisor.dev/gvisor/pkg/urpc): over a SOCK_STREAM unix socket, the client
// sends one JSON object {"method": ..., "arg": ...} whose first bytes carry the call's
// files as SCM_RIGHTS, and reads one JSON object back: {"success": bool, "err":
// string, "result": ...}. The argument types are runsc's (runsc/boot/controller.go,
// pkg/sentry/control); only the fields vmexec sets are declared here, with runsc's
// JSON names. The pinned runsc version (scripts/setup) is the one this was written
// against; a runsc that changed the wire fails the call with an error, which
// Snapshot reports like any failed checkpoint.

// Control server methods (runsc/boot/controller.go).
const (
	ctlCheckpoint = "containerManager.Checkpoint"
)

// controlTimeout bounds one control call; a checkpoint of a large sandbox writes its
// whole memory within it.
const controlTimeout = 2 * time.Minute

// saveOpts is pkg/sentry/control.SaveOpts. Its files, in order: the state file, the
// pages metadata file and the pages file (HavePagesFile).
type saveOpts struct {
	Metadata      map[string]string `json:"metadata"`
	HavePagesFile bool              `json:"have_pages_file"`
	// Resume keeps the sandbox running after the save (`--leave-running`).
	Resume bool
}

// Image file names (pkg/sentry/state/checkpointfiles).
const (
	stateFileName         = "checkpoint.img"
	pagesMetadataFileName = "pages_meta.img"
	pagesFileName         = "pages.img"
)

// controlSocket is the control socket of the sandbox id.
func (c Config) controlSocket(id string) string {
	return filepath.Join(c.runscRoot(), "runsc-"+id+".sock")
}

// controlCall calls method on the control server of the sandbox id with arg and
// files, and decodes the result into result (may be nil).
// ctx bounds the call (closing the connection ends the wait, not the work the server
// started).
func (b *Backend) controlCall(ctx context.Context, id, method string, arg any, files []*os.File, result any) error {
	conn, err := b.controlConn(id)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(controlTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	data, err := json.Marshal(struct {
		Method string `json:"method"`
		Arg    any    `json:"arg"`
	}{method, arg})
	if err != nil {
		return fmt.Errorf("control call %s: %w", method, err)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = syscall.UnixRights(fds...)
	}
	n, _, err := conn.WriteMsgUnix(data, oob, nil)
	if err == nil && n < len(data) {
		_, err = conn.Write(data[n:])
	}
	if err != nil {
		return fmt.Errorf("control call %s: %w", method, err)
	}
	var reply struct {
		Success bool            `json:"success"`
		Err     string          `json:"err"`
		Result  json.RawMessage `json:"result"`
	}
	if err := json.NewDecoder(conn).Decode(&reply); err != nil {
		return fmt.Errorf("control call %s: reading the reply: %w", method, err)
	}
	if !reply.Success {
		return fmt.Errorf("control call %s: %w", method, errors.New(strings.TrimSpace(reply.Err)))
	}
	if result != nil && len(reply.Result) > 0 {
		if err := json.Unmarshal(reply.Result, result); err != nil {
			return fmt.Errorf("control call %s: result: %w", method, err)
		}
	}
	return nil
}

// controlConn connects to the control server of the sandbox id.
func (b *Backend) controlConn(id string) (*net.UnixConn, error) {
	path := b.cfg.controlSocket(id)
	if len(path) >= 108 { // sun_path: reach it through /proc, as runsc does
		f, err := os.OpenFile(path, unix.O_PATH, 0)
		if err != nil {
			return nil, fmt.Errorf("control socket: %w", err)
		}
		defer f.Close()
		path = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return conn, nil
}

// checkpointDirect is `runsc checkpoint --leave-running --image-path dir id` without
// the runsc process: it creates the image files in dir (which exists and is empty)
// and asks the sandbox's control server to save into them, uncompressed, with the
// pages in a file of their own (runsc's default).
func (b *Backend) checkpointDirect(ctx context.Context, id, dir string) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, name := range []string{stateFileName, pagesMetadataFileName, pagesFileName} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("image file: %w", err)
		}
		files = append(files, f)
	}
	opts := saveOpts{Metadata: map[string]string{"compression": "none"}, HavePagesFile: true, Resume: true}
	return b.controlCall(ctx, id, ctlCheckpoint, opts, files, nil)
}
