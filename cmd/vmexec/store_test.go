package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
)

// Guards doctor's cluster.s3 check: off when not configured, ok against a real S3
// server, and a failure that says what to do for a server that is not there, a bucket
// that does not exist, and wrong credentials.
func TestDoctorStoreCheck(t *testing.T) {
	if _, on := storeCheck(config.Default()); on {
		t.Fatal("the store is checked without being configured")
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + l.Addr().String()
	l.Close()
	c, _ := storeCheck(config.Config{Cluster: config.Cluster{S3: config.S3{Endpoint: closed, Bucket: "b"}}})
	if c.ok || !c.required || !strings.Contains(c.info, "reachable") {
		t.Fatalf("unreachable endpoint: %+v", c)
	}

	srv := snapstoretest.StartServer(t)
	good := config.S3{Endpoint: srv.Endpoint, Bucket: snapstoretest.Bucket, AccessKeyID: snapstoretest.AccessKey, SecretAccessKey: snapstoretest.SecretKey}
	for _, tc := range []struct {
		name string
		mod  func(*config.S3)
		ok   bool
		say  string
	}{
		{"working", func(*config.S3) {}, true, "probe object"},
		{"missing bucket", func(s *config.S3) { s.Bucket = "no-such-bucket" }, false, "bucket exists"},
		{"bad credentials", func(s *config.S3) { s.SecretAccessKey = "wrong" }, false, "credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.mod(&s)
			c, on := storeCheck(config.Config{Cluster: config.Cluster{S3: s}})
			if !on || c.ok != tc.ok || !strings.Contains(c.info, tc.say) {
				t.Fatalf("check = %+v; want ok=%v and a message containing %q", c, tc.ok, tc.say)
			}
		})
	}
}

// Guards the wiring of the store to ownership (cluster.Fence.RecordDurable has the
// rules): manifests carry the epoch this node holds, and an upload of the agent's
// sandbox becomes its durable snapshot key.
func TestStoreHooksDurableKey(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	owners, err := cluster.NewPostgres(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	fence := cluster.NewFence(owners, "node-a")
	if err := fence.Hold(ctx, "agent-1", "sb-1"); err != nil {
		t.Fatal(err)
	}
	st := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	clusterParts{owners: owners, fence: fence}.storeHooks(st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if got := st.Epoch("agent-1"); got != 1 {
		t.Fatalf("epoch for manifests %d, want 1", got)
	}
	st.Uploaded(snapstore.Manifest{AgentID: "agent-1", SandboxID: "sb-1", Key: snapstore.Key("sb-1", "snap-1")})
	if o, err := owners.Get(ctx, "agent-1"); err != nil || o.DurableSnapshotKey != snapstore.Key("sb-1", "snap-1") {
		t.Fatalf("after an upload of the agent's sandbox: %+v, %v", o, err)
	}
	var none clusterParts // one host: the store is left alone
	plain := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	none.storeHooks(plain, slog.Default())
	if plain.Epoch != nil || plain.Uploaded != nil {
		t.Error("storeHooks on one host set the store's hooks")
	}
}
