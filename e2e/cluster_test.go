package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
	"github.com/vmexec/vmexec/internal/testenv"
)

// The cluster test (cluster mode part 2): PostgreSQL, an S3 server (SeaweedFS),
// three daemons and routers, each in a network namespace of its own on a bridge the
// test builds (netLab), so nothing leaves the lab. It is slow (minutes: a takeover
// waits for the dead node's heartbeat to age), so it runs only with
// VMEXEC_CLUSTER_E2E=1 (scripts/test sets it).

const clusterE2EVar = "VMEXEC_CLUSTER_E2E"

// lab hosts' last address octets.
const (
	pgHost     = 2
	s3Host     = 3
	clientHost = 30
	readyFor   = "15s" // the routers' readiness window: 1.5 heartbeats
)

type clusterLab struct {
	t        *testing.T
	lab      *netLab
	pgURL    string
	pool     *pgxpool.Pool
	s3URL    string
	nodes    map[string]*clusterNode
	routers  map[string]*labProc
	routerIP map[string]string
	hc       *http.Client
	key      string // the cluster's admin key (in PostgreSQL)
	base     string // every file of the lab; removed after its processes stop
	dirs     int
}

// dir makes a fresh directory under the lab's base (not t.TempDir: its removal
// would run before the lab's processes are stopped).
func (c *clusterLab) dir() string {
	c.dirs++
	d := filepath.Join(c.base, strconv.Itoa(c.dirs))
	if err := os.MkdirAll(d, 0o755); err != nil {
		c.t.Fatal(err)
	}
	return d
}

type clusterNode struct {
	name, addr, dataDir, cfg string
	proc                     *labProc
}

// TestClusterHelper is not a test: the cluster test runs this binary inside a lab
// namespace to create the S3 bucket from there (the S3 client has no dialer to
// inject).
func TestClusterHelper(t *testing.T) {
	if os.Getenv("VMEXEC_CLUSTER_HELPER") != "bucket" {
		t.Skip("helper process of TestCluster")
	}
	cfg := snapstore.S3Config{Endpoint: os.Getenv("VMEXEC_HELPER_S3"), Bucket: snapstoretest.Bucket,
		AccessKeyID: snapstoretest.AccessKey, SecretAccessKey: snapstoretest.SecretKey, PathStyle: true}
	b, err := snapstore.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.CreateBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if err := snapstore.Probe(ctx, b); err != nil {
		t.Fatal(err)
	}
}

func newClusterLab(t *testing.T) *clusterLab {
	t.Helper()
	if os.Getenv(clusterE2EVar) != "1" {
		t.Skipf("the cluster test takes minutes and builds network namespaces: set %s=1 (scripts/test does)", clusterE2EVar)
	}
	testenv.Root(t)
	pgBin := pgtest.BinDir()
	if pgBin == "" {
		t.Skip("PostgreSQL not installed: run scripts/setup --tests")
	}
	weed := testenv.Weed(t)
	base, err := os.MkdirTemp("", "vmxc-lab-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)                    // PostgreSQL's user must reach its directory
	t.Cleanup(func() { os.RemoveAll(base) }) // after the lab's processes end (cleanups run last-registered first)
	c := &clusterLab{t: t, base: base, lab: newNetLab(t), nodes: map[string]*clusterNode{}, routers: map[string]*labProc{}, routerIP: map[string]string{}}
	c.hc = &http.Client{Transport: &http.Transport{DialContext: c.lab.dial("client"), MaxIdleConnsPerHost: 16}}
	c.lab.host("client", clientHost)
	c.startPostgres(pgBin)
	c.startS3(weed)
	// An admin key in the cluster's PostgreSQL: the daemons listen beyond loopback,
	// so they require keys; the routers check them too and use this one to adopt.
	cmd := exec.Command("nsenter", "--net=/var/run/netns/"+c.lab.ns("client"), "--", testenv.Vmexec(t), "keys", "create", "--name", "ops", "--admin")
	cmd.Env = append(os.Environ(), "VMEXEC_POSTGRES_URL="+c.pgURL)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("vmexec keys create: %v", err)
	}
	c.key = strings.TrimSpace(string(out))
	return c
}

func (c *clusterLab) startPostgres(bin string) {
	t := c.t
	ip := c.lab.host("pg", pgHost)
	base := c.dir()
	data := filepath.Join(base, "data")
	os.Mkdir(data, 0o700)
	if out, err := exec.Command("chown", "-R", "postgres:postgres", base).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	if out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", data, "-U", "vmexec",
		"--auth=trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v %s", err, out)
	}
	f, _ := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "host all all %s.0/24 trust\n", labNet)
	f.Close()
	c.lab.start("postgres", "pg", nil, "runuser", "-u", "postgres", "--", filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses="+ip, "-p", "5432", "-k", base, "-c", "fsync=off", "-c", "max_connections=300")
	c.pgURL = "postgres://vmexec@" + ip + ":5432/postgres?sslmode=disable"
	cfg, err := pgxpool.ParseConfig(c.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	dial := c.lab.dial("client")
	cfg.ConnConfig.DialFunc = dial
	waitFor(t, "PostgreSQL in its namespace", 60*time.Second, func() bool {
		p, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err == nil && p.Ping(context.Background()) == nil {
			c.pool = p
			return true
		}
		if p != nil {
			p.Close()
		}
		return false
	})
	t.Cleanup(c.pool.Close)
}

func (c *clusterLab) startS3(weed string) {
	t := c.t
	ip := c.lab.host("s3", s3Host)
	dir := c.dir()
	c.lab.start("weed", "s3", []string{"AWS_ACCESS_KEY_ID=" + snapstoretest.AccessKey, "AWS_SECRET_ACCESS_KEY=" + snapstoretest.SecretKey, "HOME=" + dir},
		weed, "mini", "-dir="+filepath.Join(dir, "data"), "-ip="+ip, "-ip.bind="+ip,
		// Nothing leaves the lab: no telemetry (and a URL that goes nowhere, should a
		// later version ignore the switch), no metrics push.
		"-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:1/", "-master.metrics.address=",
		"-master.port=9333", "-master.port.grpc=19333", "-volume.port=8082", "-volume.port.grpc=18082",
		"-filer.port=8888", "-filer.port.grpc=18888", "-s3.port=8333", "-s3.port.grpc=18333",
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
		"-admin.port=23646", "-admin.port.grpc=33646", "-admin.port.legacy=0", "-bucket="+snapstoretest.Bucket)
	c.s3URL = "http://" + ip + ":8333"
	waitFor(t, "the S3 bucket, from inside the lab", 120*time.Second, func() bool {
		cmd := exec.Command("nsenter", "--net=/var/run/netns/"+c.lab.ns("client"), "--", os.Args[0], "-test.run=^TestClusterHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "VMEXEC_CLUSTER_HELPER=bucket", "VMEXEC_HELPER_S3="+c.s3URL)
		out, err := cmd.CombinedOutput()
		return err == nil && !strings.Contains(string(out), "SKIP")
	})
}

// startNode starts daemon name (10.213.0.<octet>:8080) with its own data dir.
func (c *clusterLab) startNode(name string, octet int) *clusterNode {
	ip := c.lab.host(name, octet)
	n := &clusterNode{name: name, addr: ip + ":8080", dataDir: c.dir()}
	n.cfg = filepath.Join(c.dir(), "vmexec.yaml")
	os.WriteFile(n.cfg, []byte(fmt.Sprintf(`cluster:
  postgres_url: %s
  node_name: %s
  address: %s
  s3: {endpoint: %s, bucket: %s, access_key_id: %s, secret_access_key: %s, prefix: lab/}
`, c.pgURL, name, n.addr, c.s3URL, snapstoretest.Bucket, snapstoretest.AccessKey, snapstoretest.SecretKey)), 0o600)
	c.nodes[name] = n
	c.runNode(n)
	return n
}

func (c *clusterLab) runNode(n *clusterNode) {
	t := c.t
	tpl := testenv.Template(t)
	n.proc = c.lab.start(n.name, n.name, nil, testenv.Vmexec(t), "serve", "--addr", n.addr, "--data-dir", n.dataDir,
		"--template-dir", filepath.Dir(tpl.Dir), "--runsc", testenv.Runsc(t), "--agent", testenv.Agent(t),
		"--config", n.cfg, "--pool-size", "0", "--log-level", "debug")
	cl := c.client("http://" + n.addr)
	waitFor(t, "daemon "+n.name, 3*time.Minute, func() bool {
		if n.proc.exited() {
			t.Fatalf("daemon %s exited at start:\n%s", n.name, tail(n.proc.log.String(), 40))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cl.Health(ctx)
		return err == nil
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon %s log:\n%s", n.name, tail(n.proc.log.String(), 50))
		}
	})
}

// crash SIGKILLs node n's daemon and every runsc process of its sandboxes.
func (c *clusterLab) crash(n *clusterNode) {
	n.proc.kill()
	for _, p := range runscProcs(n.dataDir) {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		if pid > 0 {
			if proc, err := os.FindProcess(pid); err == nil {
				proc.Kill()
			}
		}
	}
	waitFor(c.t, "node "+n.name+"'s runsc processes to end", 30*time.Second, func() bool { return len(runscProcs(n.dataDir)) == 0 })
}

// startRouter starts router name (10.213.0.<octet>:8090), adding its host first.
func (c *clusterLab) startRouter(name string, octet int) *labProc {
	t := c.t
	ip, ok := c.routerIP[name]
	if !ok {
		ip = c.lab.host(name, octet)
		c.routerIP[name] = ip
	}
	p := c.lab.start(name, name, []string{"VMEXEC_POSTGRES_URL=" + c.pgURL, "VMEXEC_ROUTER_ADMIN_KEY=" + c.key}, testenv.Vmexec(t), "router",
		"--addr", ip+":8090", "--ready-within", readyFor, "--takeover-wait", "90s", "--log-level", "debug")
	c.routers[name] = p
	waitFor(t, "router "+name, time.Minute, func() bool {
		resp, err := c.hc.Get("http://" + ip + ":8090/router/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("router %s log:\n%s", name, tail(p.log.String(), 50))
		}
	})
	return p
}

// headers records the cluster headers of each response.
type headers struct {
	base http.RoundTripper
	mu   sync.Mutex
	node string
	from string
}

func (h *headers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.base.RoundTrip(r)
	if err == nil {
		h.mu.Lock()
		h.node, h.from = resp.Header.Get("X-Vmexec-Node"), resp.Header.Get("X-Vmexec-Taken-Over-From")
		h.mu.Unlock()
	}
	return resp, err
}

func (h *headers) last() (node, from string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.node, h.from
}

func (c *clusterLab) client(url string) *client.Client {
	return &client.Client{BaseURL: url, HTTPClient: c.hc, MaxRetries: -1, APIKey: c.key}
}

// viaRouter is a client of router name that records the headers of its answers.
func (c *clusterLab) viaRouter(name string) (*client.Client, *headers) {
	h := &headers{base: c.hc.Transport}
	return &client.Client{BaseURL: "http://" + c.routerIP[name] + ":8090", HTTPClient: &http.Client{Transport: h}, MaxRetries: -1, APIKey: c.key}, h
}

func (c *clusterLab) owner(agent string) (node string, epoch int64) {
	c.t.Helper()
	if err := c.pool.QueryRow(context.Background(), `SELECT node, epoch FROM cluster_owners WHERE agent = $1`, agent).Scan(&node, &epoch); err != nil {
		c.t.Fatalf("owner of %s: %v", agent, err)
	}
	return node, epoch
}

// waitDurable waits until sandbox sb's current snapshot is in the snapshot store
// (its node logged the upload).
func (c *clusterLab) waitDurable(n *clusterNode, sb string) {
	c.t.Helper()
	var cur string
	waitFor(c.t, "sandbox "+sb+"'s current snapshot uploaded", 2*time.Minute, func() bool {
		if err := c.pool.QueryRow(context.Background(), `SELECT current_snapshot FROM sandboxes WHERE id = $1`, sb).Scan(&cur); err != nil || cur == "" {
			return false
		}
		for _, line := range strings.Split(n.proc.log.String(), "\n") {
			if strings.Contains(line, "snapshot uploaded") && strings.Contains(line, "snapshot="+cur) {
				return true
			}
		}
		return false
	})
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logf is the transcript: what the test did and saw, in order.
func logf(t *testing.T, start time.Time, format string, args ...any) {
	t.Helper()
	t.Logf("[%6.1fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// TestCluster guards cluster mode end to end: agent A's file and background process
// survive its node's death (daemon and runsc SIGKILLed once A's snapshot is in S3);
// A's next run through the router lands on another node with both, its history
// continuous, rollback and fork working there; the dead node, restarted, is refused
// A; a router restart loses nothing; two routers racing to take over one agent end
// with one owner.
func TestCluster(t *testing.T) {
	c := newClusterLab(t)
	start := time.Now()
	c.startNode("n1", 11)
	c.startNode("n2", 12)
	c.startNode("n3", 13)
	c.startRouter("r1", 21)
	logf(t, start, "lab up: postgres %s, s3 %s, nodes n1 n2 n3, router r1", c.pgURL, c.s3URL)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	rc, hdr := c.viaRouter("r1")

	const A = "cluster-a"
	r, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Durable: true,
		Code: "echo from-the-first-node > ~/state.txt; nohup sleep 100000 >/dev/null 2>&1 & echo $! > ~/sleep.pid; echo started"})
	if err != nil || r.Verdict != api.VerdictOK {
		t.Fatalf("A's first run: %+v %v", r, err)
	}
	firstName, _ := hdr.last()
	first := c.nodes[firstName]
	if first == nil {
		t.Fatalf("the router did not say which node served the run (X-Vmexec-Node %q)", firstName)
	}
	logf(t, start, "A's first run %s: placed on %s, sandbox %s, file written, sleep started", r.ExecutionID, firstName, r.SandboxID)
	c.waitDurable(first, r.SandboxID)
	_, epoch1 := c.owner(A)
	logf(t, start, "A's snapshot is in S3; owner %s at epoch %d", firstName, epoch1)

	c.crash(first)
	killed := time.Now()
	logf(t, start, "SIGKILLed %s's daemon and its runsc processes", firstName)

	got, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "cat ~/state.txt; kill -0 $(cat ~/sleep.pid) && echo running"})
	if err != nil {
		t.Fatalf("A's run after the crash: %v\nrouter log:\n%s", err, tail(c.routers["r1"].log.String(), 40))
	}
	took := time.Since(killed)
	node, from := hdr.last()
	newOwner, epoch2 := c.owner(A)
	logf(t, start, "A's next run %s: served by %s (taken over from %q), owner %s at epoch %d, %.1fs after the kill; stdout %q",
		got.ExecutionID, node, from, newOwner, epoch2, took.Seconds(), got.Stdout)
	if got.Stdout != "from-the-first-node\nrunning\n" || got.SandboxID != r.SandboxID {
		t.Fatalf("after the takeover: %s; want the file and the process, in sandbox %s", describe(got), r.SandboxID)
	}
	if node == firstName || node != newOwner || from != firstName || epoch2 != epoch1+1 {
		t.Fatalf("served by %s (taken over from %q), owner %s at epoch %d; want another node, from %s, epoch %d", node, from, newOwner, epoch2, firstName, epoch1+1)
	}
	if !strings.Contains(strings.Join(got.Warnings, "\n"), "taken over by node "+node) {
		t.Errorf("the run does not say it was taken over: %q", got.Warnings)
	}
	for _, line := range strings.Split(c.routers["r1"].log.String(), "\n") {
		if strings.Contains(line, "took agent over") || strings.Contains(line, "adopted the agent") || strings.Contains(line, "owner unreachable") {
			t.Logf("    router: %s", line)
		}
	}

	hist, err := rc.History(ctx, client.HistoryQuery{AgentID: A})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, run := range hist.Runs {
		ids[run.ID] = true
	}
	if !ids[r.ExecutionID] || !ids[got.ExecutionID] {
		t.Fatalf("A's history through the router lacks a run: %d runs, want %s and %s", len(hist.Runs), r.ExecutionID, got.ExecutionID)
	}
	logf(t, start, "A's history is continuous: %d runs, from both nodes", len(hist.Runs))

	// Rollback and fork on the new node.
	ch, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "echo changed > ~/state.txt; exit 3",
		History: &api.ExecPolicy{AutoRollbackOnFailure: ptrBool(false)}})
	if err != nil || ch.PreSnapshotID == "" {
		t.Fatalf("a failing run: %+v %v", ch, err)
	}
	if _, err := rc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: A, SnapshotID: ch.PreSnapshotID}); err != nil {
		t.Fatalf("rollback on %s: %v", node, err)
	}
	back, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "cat ~/state.txt"})
	if err != nil || back.Stdout != "from-the-first-node\n" {
		t.Fatalf("after the rollback: %+v %v", back, err)
	}
	fork, err := rc.Fork(ctx, ch.PreSnapshotID, api.ForkRequest{AgentID: A})
	if err != nil {
		t.Fatalf("fork on %s: %v", node, err)
	}
	fr, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, SandboxID: fork.ID, Language: "bash", Code: "cat ~/state.txt"})
	if err != nil || fr.Stdout != "from-the-first-node\n" {
		t.Fatalf("in the fork: %+v %v", fr, err)
	}
	logf(t, start, "rollback and fork work on %s (fork %s)", node, fork.ID)

	// The dead node comes back and is refused A.
	c.runNode(first)
	_, err = c.client("http://"+first.addr).Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "echo split-brain"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusConflict || !strings.Contains(ce.Message, node) {
		t.Fatalf("restarted %s, asked directly for A: %v; want 409 naming %s", firstName, err, node)
	}
	logf(t, start, "restarted %s refuses A: %s", firstName, ce.Message)

	// A router restart loses nothing.
	c.routers["r1"].stop(30 * time.Second)
	c.startRouter("r1", 21)
	again, err := rc.Exec(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "cat ~/state.txt"})
	n3, from3 := hdr.last()
	if _, e := c.owner(A); err != nil || again.Stdout != "from-the-first-node\n" || n3 != node || from3 != "" || e != epoch2 {
		t.Fatalf("after a router restart: %+v %v, node %s, from %q, epoch %d", again, err, n3, from3, e)
	}
	logf(t, start, "router r1 restarted: A still on %s at epoch %d", n3, epoch2)

	// SSE through the router.
	var streamed strings.Builder
	sres, err := rc.ExecStream(ctx, api.ExecRequest{AgentID: A, Language: "bash", Code: "echo one; sleep 0.2; echo two"},
		client.Output{Stdout: func(s string) { streamed.WriteString(s) }})
	if err != nil || sres.Verdict != api.VerdictOK || streamed.String() != "one\ntwo\n" {
		t.Fatalf("streaming through the router: %+v %v, streamed %q", sres, err, streamed.String())
	}

	// Two routers race to take one agent over.
	c.startRouter("r2", 22)
	rc2, _ := c.viaRouter("r2")
	var C string
	var victim *clusterNode
	for i := 0; victim == nil && i < 30; i++ {
		agent := fmt.Sprintf("cluster-race-%d", i)
		cr, err := rc.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Durable: true, Code: "echo race > ~/r.txt"})
		if err != nil {
			t.Fatal(err)
		}
		if on, _ := hdr.last(); on != node {
			C, victim = agent, c.nodes[on]
			c.waitDurable(victim, cr.SandboxID)
		}
	}
	if victim == nil {
		t.Fatal("30 agents all placed on one node")
	}
	_, ce1 := c.owner(C)
	c.crash(victim)
	logf(t, start, "SIGKILLed %s, owner of %s at epoch %d; racing r1 and r2", victim.name, C, ce1)
	var wg sync.WaitGroup
	outs := make([]string, 6)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := rc
			if i%2 == 1 {
				cl = rc2
			}
			res, err := cl.Exec(ctx, api.ExecRequest{AgentID: C, Language: "bash", Code: "cat ~/r.txt"})
			if err != nil {
				outs[i] = "error: " + err.Error()
				return
			}
			outs[i] = res.Stdout
		}()
	}
	wg.Wait()
	cOwner, ce2 := c.owner(C)
	for i, o := range outs {
		if o != "race\n" {
			t.Errorf("racing request %d: %q", i, o)
		}
	}
	if ce2 != ce1+1 || cOwner == victim.name {
		t.Fatalf("after the race %s is %s's at epoch %d; want one takeover (epoch %d) away from %s", C, cOwner, ce2, ce1+1, victim.name)
	}
	logf(t, start, "both routers agree: %s is %s's at epoch %d (one takeover); all 6 requests answered", C, cOwner, ce2)
}

func ptrBool(b bool) *bool { return &b }
