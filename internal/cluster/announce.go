package cluster

import (
	"context"
	"log/slog"
	"time"
)

// HeartbeatEvery is how often a daemon tells the registry it is ready; ReadyWithin
// (three beats) is how recent a beat must be for the router to count the node ready.
const (
	HeartbeatEvery = 10 * time.Second
	ReadyWithin    = 3 * HeartbeatEvery
)

// Announce registers n and heartbeats every `every` with the load that load
// reports, until ctx ends; then it deregisters n (a clean shutdown), so routers stop
// placing agents on it at once rather than after ReadyWithin. A failed beat is
// logged and retried at the next; it never stops the daemon.
func Announce(ctx context.Context, nodes Nodes, n Node, every time.Duration, load func() int64, log *slog.Logger) {
	n.Load = load()
	if err := nodes.Register(ctx, n); err != nil {
		log.Warn("registering this node in the cluster", "node", n.Name, "err", err)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := nodes.Deregister(dctx, n.Name); err != nil {
				log.Warn("deregistering this node", "node", n.Name, "err", err)
			}
			cancel()
			return
		case <-t.C:
		}
		err := nodes.Heartbeat(ctx, n.Name, load())
		if err != nil && ctx.Err() == nil {
			// Deleted meanwhile (or never registered): register again.
			n.Load = load()
			err = nodes.Register(ctx, n)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("cluster heartbeat", "node", n.Name, "err", err)
		}
	}
}
