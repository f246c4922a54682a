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

// Guards the store's tie to ownership: an upload of the agent's newest state becomes
// its durable snapshot key, an upload of another sandbox of the agent does not, and
// once another node took the agent over, this node writes nothing (fenced). The
// manifest carries the epoch this node holds.
func TestStoreHooksDurableKey(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	url := srv.NewDatabase(t)
	owners := make([]*cluster.Postgres, 2)
	for i := range owners {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		if owners[i], err = cluster.NewPostgres(ctx, pool); err != nil {
			t.Fatal(err)
		}
	}
	fence := cluster.NewFence(owners[0], "node-a")
	if err := fence.Hold(ctx, "agent-1", "sb-1"); err != nil {
		t.Fatal(err)
	}
	st := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	clusterParts{owners: owners[0], fence: fence}.storeHooks(st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if got := st.Epoch("agent-1"); got != 1 {
		t.Fatalf("epoch for manifests %d, want 1", got)
	}
	key := func() string {
		o, err := owners[0].Get(ctx, "agent-1")
		if err != nil {
			t.Fatal(err)
		}
		return o.DurableSnapshotKey
	}
	st.Uploaded(snapstore.Manifest{AgentID: "agent-1", SandboxID: "sb-1", Key: snapstore.Key("sb-1", "snap-1")})
	if k := key(); k != snapstore.Key("sb-1", "snap-1") {
		t.Fatalf("durable key %q after an upload of the agent's sandbox", k)
	}
	st.Uploaded(snapstore.Manifest{AgentID: "agent-1", SandboxID: "sb-other", Key: snapstore.Key("sb-other", "snap-9")})
	if k := key(); k != snapstore.Key("sb-1", "snap-1") {
		t.Fatalf("durable key %q after an upload of another sandbox of the agent", k)
	}
	if _, err := owners[1].Takeover(ctx, "agent-1", "node-b", 1); err != nil {
		t.Fatal(err)
	}
	st.Uploaded(snapstore.Manifest{AgentID: "agent-1", SandboxID: "sb-1", Key: snapstore.Key("sb-1", "snap-2")})
	if k := key(); k != snapstore.Key("sb-1", "snap-1") {
		t.Fatalf("a node that lost the agent wrote its durable key: %q", k)
	}
}
