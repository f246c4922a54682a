package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
)

// With -cluster: cluster mode's costs, on loopback (PostgreSQL, SeaweedFS, two
// daemons and a router, all on 127.0.0.1): the router's overhead per request (the
// same run, p50/p95, through the router and straight to the owning node,
// interleaved), and the takeover time from a node's death (daemon and runsc
// SIGKILLed once the agent's snapshot is in S3) to the agent's next successful run
// through the router. The takeover waits for the dead node's heartbeat to age past
// the router's --ready-within (15 s here), which dominates it.

type clusterOpts struct {
	on, only bool
	n        int
}

var clusterFlags clusterOpts

// syncBuf is a daemon's log, read while written.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type benchProc struct {
	cmd *exec.Cmd
	log *syncBuf
	url string
	dir string
}

func freePort() string {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().String()
}

func startProc(dir, bin string, env []string, args ...string) (*benchProc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &benchProc{cmd: cmd, log: &syncBuf{}, dir: dir}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return p, cmd.Start()
}

func (p *benchProc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
}

func (p *benchProc) term() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	p.cmd.Wait()
}

func waitHTTP(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer within %v", url, limit)
}

// startPostgres runs a throwaway PostgreSQL on loopback as the postgres user.
func startPostgres(tmp string) (*benchProc, string, error) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		return nil, "", fmt.Errorf("-cluster: PostgreSQL not installed (scripts/setup --tests installs it)")
	}
	bin := filepath.Dir(bins[len(bins)-1])
	base := filepath.Join(tmp, "pg")
	os.MkdirAll(filepath.Join(base, "data"), 0o700)
	os.Chmod(tmp, 0o755)
	if out, err := exec.Command("chown", "-R", "postgres:postgres", base).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("chown: %v %s", err, out)
	}
	if out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", filepath.Join(base, "data"),
		"-U", "vmexec", "--auth=trust", "--no-sync").CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("initdb: %v %s", err, out)
	}
	addr := freePort()
	_, port, _ := net.SplitHostPort(addr)
	p, err := startProc(base, "runuser", nil, "-u", "postgres", "--", filepath.Join(bin, "postgres"), "-D", filepath.Join(base, "data"),
		"-c", "listen_addresses=127.0.0.1", "-p", port, "-k", base, "-c", "fsync=off")
	if err != nil {
		return nil, "", err
	}
	url := "postgres://vmexec@127.0.0.1:" + port + "/postgres?sslmode=disable"
	for i := 0; i < 300; i++ {
		if c, err := pgx.Connect(context.Background(), url); err == nil {
			c.Close(context.Background())
			return p, url, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.kill()
	return nil, "", fmt.Errorf("PostgreSQL did not start: %s", p.log.String())
}

// printCluster measures and prints the cluster section.
func printCluster(tmp, runsc, tplDir, weed string, n int) error {
	pg, pgURL, err := startPostgres(tmp)
	if err != nil {
		return err
	}
	defer pg.kill()
	srv, err := snapstoretest.Start(weed, filepath.Join(tmp, "cweed"))
	if err != nil {
		return err
	}
	defer srv.Stop()
	bin := filepath.Join(tmp, "vmexec")
	nodes := map[string]*benchProc{}
	startNode := func(name string, dir string) error {
		addr := freePort()
		cfg := filepath.Join(tmp, name+".yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("cluster:\n  postgres_url: %s\n  node_name: %s\n  s3: {endpoint: %s, bucket: %s, access_key_id: %s, secret_access_key: %s, prefix: bench/}\n",
			pgURL, name, srv.Endpoint, snapstoretest.Bucket, snapstoretest.AccessKey, snapstoretest.SecretKey)), 0o600)
		p, err := startProc(dir, bin, nil, "serve", "--addr", addr, "--data-dir", dir, "--template-dir", filepath.Dir(tplDir),
			"--runsc", runsc, "--agent", filepath.Join(tmp, "vmexec-agent"), "--config", cfg, "--pool-size", "0", "--log-level", "info")
		if err != nil {
			return err
		}
		p.url = "http://" + addr
		nodes[name] = p
		return waitHTTP(p.url+"/health", 3*time.Minute)
	}
	for _, name := range []string{"n1", "n2"} {
		dir, _ := os.MkdirTemp(tmp, name+"-")
		if err := startNode(name, dir); err != nil {
			return err
		}
	}
	defer func() {
		for _, p := range nodes {
			p.term()
		}
	}()
	raddr := freePort()
	router, err := startProc(tmp, bin, []string{"VMEXEC_POSTGRES_URL=" + pgURL}, "router", "--addr", raddr, "--ready-within", "15s", "--takeover-wait", "90s", "--log-level", "info")
	if err != nil {
		return err
	}
	defer router.term()
	if err := waitHTTP("http://"+raddr+"/router/health", time.Minute); err != nil {
		return err
	}
	hdr := &lastNode{base: http.DefaultTransport}
	rc := &client.Client{BaseURL: "http://" + raddr, HTTPClient: &http.Client{Transport: hdr}, MaxRetries: -1}
	ctx := context.Background()
	run := func(c *client.Client, agent string) error {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: "print(1)"})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}

	// Overhead: one agent, its runs alternately through the router and straight to
	// its node.
	if err := run(rc, "bench-route"); err != nil {
		return err
	}
	owner := nodes[hdr.get()]
	if owner == nil {
		return fmt.Errorf("the router did not name the node (X-Vmexec-Node %q)", hdr.get())
	}
	direct := client.New(owner.url)
	var viaRouter, straight series
	viaRouter.name, straight.name = "run through the router", "run straight to its node"
	for i := 0; i < n; i++ {
		for _, s := range []*series{&viaRouter, &straight} {
			c := rc
			if s == &straight {
				c = direct
			}
			t0 := time.Now()
			if err := run(c, "bench-route"); err != nil {
				return err
			}
			s.d = append(s.d, time.Since(t0))
		}
	}
	// A cheap request too (the sandbox's description: the router finds its agent in
	// the history, then its owner), where the router's share is not lost in a run's
	// checkpoint.
	sb, err := direct.ListSandboxes(ctx)
	if err != nil || len(sb) == 0 {
		return fmt.Errorf("the agent's sandbox: %v %v", sb, err)
	}
	var getRouter, getStraight series
	getRouter.name, getStraight.name = "GET sandbox via the router", "GET sandbox straight"
	for i := 0; i < 4*n; i++ {
		for _, s := range []*series{&getRouter, &getStraight} {
			c := rc
			if s == &getStraight {
				c = direct
			}
			t0 := time.Now()
			if _, err := c.GetSandbox(ctx, sb[0].ID); err != nil {
				return err
			}
			s.d = append(s.d, time.Since(t0))
		}
	}
	fmt.Printf("\n%-30s %6s %10s %10s %12s\n", "cluster (loopback)", "n", "p50", "p95", "p50/direct")
	for _, p := range [][2]series{{straight, viaRouter}, {getStraight, getRouter}} {
		for _, s := range p {
			printRow(30, s, 10*time.Microsecond, p[0].pct(0.5))
		}
		fmt.Printf("%-30s %6s %10s %10s\n", "  router overhead", "", (p[1].pct(0.5) - p[0].pct(0.5)).Round(10*time.Microsecond), (p[1].pct(0.95) - p[0].pct(0.95)).Round(10*time.Microsecond))
	}

	// Takeover: kill the agent's node once its state is in S3; time to the next
	// successful run through the router. The node is restarted for the next trial.
	var took series
	took.name = "takeover: death → next run"
	for i := 0; i < max(1, clusterFlags.n); i++ {
		agent := fmt.Sprintf("bench-takeover-%d", i)
		r, err := rc.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Durable: true, Code: "echo kept > ~/f"})
		if err != nil {
			return err
		}
		name := hdr.get()
		p := nodes[name]
		if err := waitUploaded(p, pgURL, r.SandboxID); err != nil {
			return err
		}
		p.kill()
		killRunsc(p.dir)
		t0 := time.Now()
		got, err := rc.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Code: "cat ~/f"})
		if err != nil || strings.TrimSpace(got.Stdout) != "kept" {
			return fmt.Errorf("after killing %s: %+v %v\nrouter log:\n%s", name, got, err, router.log.String())
		}
		took.d = append(took.d, time.Since(t0))
		fmt.Printf("  takeover %d: %s died, agent served by %s after %s\n", i, name, hdr.get(), time.Since(t0).Round(10*time.Millisecond))
		if err := startNode(name, p.dir); err != nil {
			return err
		}
	}
	fmt.Printf("%-30s %6d %10s %10s   (min, max; router --ready-within 15s, daemons heartbeat every 10s: the wait for the heartbeat to age is most of it)\n",
		took.name, len(took.d), took.pct(0).Round(10*time.Millisecond), took.pct(1).Round(10*time.Millisecond))
	return nil
}

// lastNode records the X-Vmexec-Node of the last response.
type lastNode struct {
	base http.RoundTripper
	mu   sync.Mutex
	node string
}

func (l *lastNode) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(r)
	if err == nil {
		l.mu.Lock()
		l.node = resp.Header.Get("X-Vmexec-Node")
		l.mu.Unlock()
	}
	return resp, err
}

func (l *lastNode) get() string { l.mu.Lock(); defer l.mu.Unlock(); return l.node }

// waitUploaded waits until sandbox sb's current snapshot is in S3 (its node logged it).
func waitUploaded(p *benchProc, pgURL, sb string) error {
	c, err := pgx.Connect(context.Background(), pgURL)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	for i := 0; i < 1200; i++ {
		var cur string
		if c.QueryRow(context.Background(), `SELECT current_snapshot FROM sandboxes WHERE id = $1`, sb).Scan(&cur) == nil && cur != "" {
			for _, line := range strings.Split(p.log.String(), "\n") {
				if strings.Contains(line, "snapshot uploaded") && strings.Contains(line, "snapshot="+cur) {
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("sandbox %s's snapshot was not uploaded", sb)
}

// killRunsc SIGKILLs the runsc processes of a node's data dir.
func killRunsc(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cl := string(b)
		if strings.Contains(cl, "runsc") && strings.Contains(cl, dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
