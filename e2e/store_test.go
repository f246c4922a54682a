package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
)

// Cluster mode part 1 through the daemon: with cluster.s3 in its config, a daemon's
// sandbox is uploaded to S3 (SeaweedFS) when it stops; a daemon on another data dir
// holding only the history (a new node) resumes it from S3 with its file and its
// background process, and says so.
func TestSnapshotStoreAcrossNodes(t *testing.T) {
	srv := snapstoretest.StartServer(t)
	cfg := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cluster:\n  s3:\n    endpoint: %s\n    bucket: %s\n    access_key_id: %s\n    secret_access_key: %s\n    prefix: e2e/\n",
		srv.Endpoint, snapstoretest.Bucket, snapstoretest.AccessKey, snapstoretest.SecretKey)), 0o600)
	ctx := context.Background()
	first := t.TempDir()
	d := startDaemon(t, daemonOpts{dataDir: first, extra: []string{"--config", cfg, "--pool-size", "0"}})
	r, err := d.client.Exec(ctx, api.ExecRequest{AgentID: "s3-e2e", Language: "bash",
		Code: "echo from-node-1 > ~/state.txt; nohup sleep 100000 >/dev/null 2>&1 & echo $! > ~/sleep.pid"})
	if err != nil || r.Verdict != api.VerdictOK {
		t.Fatalf("exec: %+v %v", r, err)
	}
	d.stop() // suspends the sandbox and uploads its snapshot before exiting

	// Node 2: the history only.
	second := t.TempDir()
	for _, f := range []string{"history.db", "history.db-wal", "history.db-shm"} {
		b, err := os.ReadFile(filepath.Join(first, f))
		if err != nil && f == "history.db" {
			t.Fatal(err)
		}
		if err == nil {
			os.WriteFile(filepath.Join(second, f), b, 0o600)
		}
	}
	d2 := startDaemon(t, daemonOpts{dataDir: second, extra: []string{"--config", cfg, "--pool-size", "0"}})
	got, err := d2.client.Exec(ctx, api.ExecRequest{AgentID: "s3-e2e", Language: "bash", Code: "cat ~/state.txt; kill -0 $(cat ~/sleep.pid) && echo running"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Stdout != "from-node-1\nrunning\n" || got.SandboxID != r.SandboxID || !strings.Contains(strings.Join(got.Warnings, "\n"), "snapshot store") {
		t.Fatalf("on node 2: %+v; want the file, the process running and a warning that it came from the store", got)
	}
	if !strings.Contains(d2.log.String(), "snapshot restored from the snapshot store") {
		t.Errorf("node 2's log does not say where the snapshot came from")
	}
}

// Cluster mode parts 1 and 3 together, through real daemons: two nodes share one
// PostgreSQL and one S3 bucket. Node 1 runs the agent (a file, a background process),
// uploads its state and records the durable snapshot key in the agent's ownership
// row; after a takeover (as a router would do), node 2, which has none of node 1's
// images, restores the agent's sandbox from S3 with the file and the process, and
// says so.
func TestClusterTakeoverRestoresFromS3(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	s3 := snapstoretest.StartServer(t)
	node := func(name string) *daemon {
		p := filepath.Join(t.TempDir(), "vmexec.yaml")
		cfg := fmt.Sprintf("cluster:\n  postgres_url: %s\n  node_name: %s\n  s3:\n    endpoint: %s\n    bucket: %s\n    access_key_id: %s\n    secret_access_key: %s\nsandbox:\n  pool_size: 0\n",
			url, name, s3.Endpoint, snapstoretest.Bucket, snapstoretest.AccessKey, snapstoretest.SecretKey)
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return startDaemon(t, daemonOpts{extra: []string{"--config", p}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1 := node("node-1")
	first, err := n1.client.Exec(ctx, api.ExecRequest{AgentID: "agent-s3", Language: "bash", Durable: true,
		Code: "echo from-node-1 > ~/state.txt; nohup sleep 100000 >/dev/null 2>&1 & echo $! > ~/sleep.pid"})
	if err != nil || first.Verdict != api.VerdictOK || !first.Durable {
		t.Fatalf("run on node-1: %+v %v", first, err)
	}
	hist, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	own := clusterOwnership(t, ctx, url)
	// Node 1's durable state is uploaded and named in the ownership row.
	var want string
	deadline := time.Now().Add(time.Minute)
	for {
		sbs, _ := hist.ListSandboxes(ctx)
		o, _ := own.Get(ctx, "agent-s3")
		for _, sb := range sbs {
			if sb.ID == first.SandboxID {
				want = snapstore.Key(sb.ID, sb.CurrentSnapshotID)
			}
		}
		if want != "" && o.DurableSnapshotKey == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ownership row's durable snapshot key is %q, want %q (the current snapshot's)", o.DurableSnapshotKey, want)
		}
		time.Sleep(50 * time.Millisecond)
	}

	n2 := node("node-2")
	o, err := own.Get(ctx, "agent-s3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Takeover(ctx, "agent-s3", "node-2", o.Epoch); err != nil {
		t.Fatal(err)
	}
	got, err := n2.client.Exec(ctx, api.ExecRequest{AgentID: "agent-s3", Language: "bash", Code: "cat ~/state.txt; kill -0 $(cat ~/sleep.pid) && echo running"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Stdout != "from-node-1\nrunning\n" || got.SandboxID != first.SandboxID || !strings.Contains(strings.Join(got.Warnings, "\n"), "snapshot store") {
		t.Fatalf("on node-2 after the takeover: %+v; want node-1's file and process, restored from S3, saying so", got)
	}
}
