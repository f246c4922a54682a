package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/snapstore"
)

// openStore returns the snapshot store cluster.s3 configures (nil when it does not),
// after checking that the bucket answers: a daemon that would upload into nothing
// fails at start, saying what to fix.
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (*snapstore.Store, error) {
	b, err := cfg.Cluster.S3.Blobs()
	if err != nil || b == nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.CheckBucket(pctx); err != nil {
		return nil, fmt.Errorf("snapshot store %s: %w (see `vmexec doctor`)", b, err)
	}
	node, _ := os.Hostname()
	st := &snapstore.Store{Blobs: b, UploadPolicy: snapstore.Policy(cfg.Cluster.S3.Upload), Node: node, Logger: log}
	log.Info("snapshot store", "where", b.String(), "upload", st.Policy())
	return st, nil
}

// storeCheck is doctor's check of cluster.s3: the endpoint answers, the bucket exists,
// and a probe object can be put, read back and deleted.
func storeCheck(cfg config.Config) (check, bool) {
	c := check{name: "snapshot store (s3)", required: true}
	if !cfg.Cluster.S3.Enabled() {
		return c, false
	}
	b, err := cfg.Cluster.S3.Blobs()
	if err != nil {
		c.info = err.Error() + ": fix cluster.s3 in the config"
		return c, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.CheckBucket(ctx); err != nil {
		c.info = fmt.Sprintf("%s: %v: check cluster.s3.endpoint is reachable from here, the bucket exists (create it), and the credentials (access_key_id/secret_access_key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) may read it", b, err)
		return c, true
	}
	if err := snapstore.Probe(ctx, b); err != nil {
		c.info = err.Error() + ": the credentials need s3:PutObject, s3:GetObject and s3:DeleteObject on the bucket (and prefix)"
		return c, true
	}
	c.ok, c.info = true, b.String()+": bucket reachable; a probe object was written, read back and deleted"
	return c, true
}

// storeHooks ties the snapshot store to cluster mode's ownership (no-op on one host
// or without a store): a manifest carries the agent's epoch on this node, and each
// upload becomes the agent's durable snapshot key (cluster.Fence.RecordDurable).
func (c clusterParts) storeHooks(st *snapstore.Store, log *slog.Logger) {
	if st == nil || c.fence == nil {
		return
	}
	st.Epoch = c.fence.Epoch
	st.Uploaded = func(m snapstore.Manifest) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.fence.RecordDurable(ctx, m.AgentID, m.SandboxID, m.Key); err != nil {
			log.Warn("recording the agent's durable snapshot key", "agent", m.AgentID, "key", m.Key, "err", err)
		}
	}
}
