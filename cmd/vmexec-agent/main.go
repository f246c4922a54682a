// Command vmexec-agent is the guest agent: PID 1 inside every vmexec sandbox. It speaks
// agentproto over its stdin/stdout (the gVisor backend) or over a virtio-serial port
// (--port, the microVM backend) and runs the programs it is sent; see package guest.
//
// It must be built static: CGO_ENABLED=0 go build ./cmd/vmexec-agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmexec/vmexec/internal/guest"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Before anything else: the agent re-executes itself as the launcher of programs.
	guest.MaybeLaunch()

	port := flag.String("port", "", "serve over this serial device (e.g. /dev/virtio-ports/vmexec) instead of stdin/stdout")
	home := flag.String("home", "", "run user's home and default working directory (default /home/user)")
	runDir := flag.String("run-dir", "", "directory for per-run directories (default /tmp/.vmexec)")
	uid := flag.Int("uid", -1, "run programs as this uid (default 1000 when root, else the agent's own)")
	gid := flag.Int("gid", -1, "run programs as this gid (default: same as uid)")
	debug := flag.Bool("debug", false, "log debug messages")
	flag.Parse()

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	pid1 := os.Getpid() == 1
	opts := guest.Options{
		Version:    version,
		Home:       *home,
		RunBase:    *runDir,
		Persistent: pid1,
		ReapAll:    pid1,
		Logger:     log,
	}
	if *uid >= 0 {
		g := *gid
		if g < 0 {
			g = *uid
		}
		opts.RunUser = &guest.RunUser{UID: uint32(*uid), GID: uint32(g)}
	}

	var r io.Reader = os.Stdin
	var w io.Writer = os.Stdout
	if *port != "" {
		f, err := os.OpenFile(*port, os.O_RDWR, 0)
		if err != nil {
			log.Error("cannot open port", "port", *port, "err", err)
			os.Exit(1)
		}
		r, w = f, f
	}
	// A write to a closed stdout must fail with EPIPE, not kill the agent (and with it
	// the sandbox). Notify, unlike Ignore, is not inherited by the programs it runs.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	err := guest.Serve(context.Background(), r, w, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec-agent:", err)
		os.Exit(1)
	}
}
