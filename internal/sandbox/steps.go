package sandbox

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// steps times the phases of one run in the daemon for the debug log (the "exec
// steps" line): where a request's time goes between its arrival at the service and
// its answer, the guest's round trip included. It is nil, and costs nothing, unless
// the logger is at debug level.
type steps struct {
	start, last time.Time
	attrs       []any
}

type stepsKey struct{}

// withSteps returns ctx carrying a new step timer when debug logging is on.
func (s *Service) withSteps(ctx context.Context) (context.Context, *steps) {
	if !s.log.Enabled(ctx, slog.LevelDebug) {
		return ctx, nil
	}
	now := time.Now()
	st := &steps{start: now, last: now}
	return context.WithValue(ctx, stepsKey{}, st), st
}

// stepsOf returns ctx's step timer, or nil.
func stepsOf(ctx context.Context) *steps {
	st, _ := ctx.Value(stepsKey{}).(*steps)
	return st
}

// mark ends the step called name: the time since the previous mark.
func (st *steps) mark(name string) {
	if st == nil {
		return
	}
	now := time.Now()
	st.attrs = append(st.attrs, slog.Duration(name, now.Sub(st.last)))
	st.last = now
}

// note adds key=value to the log line.
func (st *steps) note(key string, value any) {
	if st != nil {
		st.attrs = append(st.attrs, slog.Any(key, value))
	}
}

// done logs the steps and their total.
func (st *steps) done(log *slog.Logger, execID string) {
	if st == nil {
		return
	}
	log.Debug("exec steps", append([]any{"run", execID, "total", time.Since(st.start)}, st.attrs...)...)
}

// daemonFast turns on the run path's shortcut: the record of the snapshot equal to
// the live state kept instead of read again before each run (entry.cleanRecord).
// VMEXEC_DAEMON_FAST=off turns them off (bench measures both, hostpath.go).
var daemonFast = os.Getenv("VMEXEC_DAEMON_FAST") != "off"
