package guest

import (
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// runTrace records the phases of one run for ExecRequest.Trace (bench's view of where
// a run's time goes inside the guest). A nil *runTrace records nothing, so the
// untraced path pays one nil check per phase.
type runTrace struct {
	start time.Time
	mu    sync.Mutex
	pts   []agentproto.TracePoint
}

func newRunTrace(on bool, start time.Time) *runTrace {
	if !on {
		return nil
	}
	return &runTrace{start: start}
}

// mark records that the run reached phase name now.
func (t *runTrace) mark(name string) {
	if t == nil {
		return
	}
	d := time.Since(t.start).Microseconds()
	t.mu.Lock()
	t.pts = append(t.pts, agentproto.TracePoint{Name: name, US: d})
	t.mu.Unlock()
}

// points returns what was recorded.
func (t *runTrace) points() []agentproto.TracePoint {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]agentproto.TracePoint(nil), t.pts...)
}
