package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
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
