package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/testenv"
)

// API keys against the real daemon: keys made by the CLI on the daemon's data dir,
// seen by the running daemon; every kind of object refused across scopes; quotas;
// HTTPS.

// createKey runs `vmexec keys create` on dataDir and returns the printed key.
func createKey(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	out, errOut, code := vmexec(t, nil, append([]string{"keys", "create", "--data-dir", dataDir}, args...)...)
	key := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(key, "vmx_") || len(key) != 44 {
		t.Fatalf("keys create %v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
	}
	return key
}

// as is a client of d with key, without retries (a 429 is the answer under test).
func as(d *daemon, key string) *client.Client {
	return &client.Client{BaseURL: d.url, APIKey: key, MaxRetries: -1, HTTPClient: d.client.HTTPClient}
}

func status(err error) int {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	if err == nil {
		return 200
	}
	return -1
}

// waitStatus waits until f's error has the status want (a key change reaches a
// running daemon within its refresh period).
func waitStatus(t *testing.T, what string, want int, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if status(err) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 30s, want status %d", what, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKeysSeenByRunningDaemon: a key created with the CLI while the daemon runs
// closes the open daemon within a second or two and works; revoked, it stops working
// and the daemon stays closed; the key's name is on the runs it made.
func TestKeysSeenByRunningDaemon(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	ctx := context.Background()
	open := as(d, "")
	if _, err := open.ListSandboxes(ctx); err != nil {
		t.Fatalf("open daemon: %v", err)
	}
	admin := createKey(t, d.dataDir, "--name", "ops", "--admin")
	waitStatus(t, "no key once a key exists", 401, func() error { _, err := open.ListSandboxes(ctx); return err })
	if _, err := open.Health(ctx); err != nil {
		t.Fatalf("GET /health must stay public: %v", err)
	}
	ops := as(d, admin)
	res, err := ops.Exec(ctx, api.ExecRequest{AgentID: "demo", Language: "bash", Code: "echo hi"})
	if err != nil || res.Verdict != api.VerdictOK {
		t.Fatalf("exec with the admin key: %v %+v", err, res)
	}
	run, err := ops.GetRun(ctx, res.ExecutionID)
	if err != nil || run.KeyName != "ops" {
		t.Fatalf("run %s: key_name %q, %v; want ops", res.ExecutionID, run.KeyName, err)
	}
	// The e2b_ form of the same secret is the same key.
	if _, err := as(d, "e2b_"+strings.TrimPrefix(admin, "vmx_")).ListSandboxes(ctx); err != nil {
		t.Fatalf("e2b_ form: %v", err)
	}
	// keys list shows the key, never the secret.
	out, _, code := vmexec(t, nil, "keys", "list", "--data-dir", d.dataDir)
	if code != 0 || !strings.Contains(out, "ops") || strings.Contains(out, strings.TrimPrefix(admin, "vmx_")) {
		t.Fatalf("keys list: exit %d\n%s", code, out)
	}
	if _, _, code := vmexec(t, nil, "keys", "revoke", "--data-dir", d.dataDir, "ops"); code != 0 {
		t.Fatal("keys revoke failed")
	}
	waitStatus(t, "revoked key", 401, func() error { _, err := ops.ListSandboxes(ctx); return err })
	if _, err := open.ListSandboxes(ctx); status(err) != 401 {
		t.Fatalf("after revoking the last key: %v, want 401 (the daemon stays closed)", err)
	}
	if strings.Contains(d.log.String(), strings.TrimPrefix(admin, "vmx_")) {
		t.Fatal("the daemon's log holds the key")
	}
}

// TestKeysCrossScope: a key scoped to team-a-* cannot see or touch team-b's sandbox,
// snapshots, runs, policy, files, forks, rollbacks or history (404 for objects, 403
// for naming the agent), sees only its own in listings, and can do all of it for its
// own agents.
func TestKeysCrossScope(t *testing.T) {
	dataDir := t.TempDir()
	admin := createKey(t, dataDir, "--name", "ops", "--admin")
	keyA := createKey(t, dataDir, "--name", "team-a", "--agents", "team-a-*")
	d := startDaemon(t, daemonOpts{dataDir: dataDir})
	ctx := context.Background()
	ops, a := as(d, admin), as(d, keyA)

	mine, err := a.Exec(ctx, api.ExecRequest{AgentID: "team-a-1", Language: "bash", Code: "echo a > f.txt"})
	if err != nil || mine.Verdict != api.VerdictOK {
		t.Fatalf("team-a-1's run: %v %+v", err, mine)
	}
	theirs, err := ops.Exec(ctx, api.ExecRequest{AgentID: "team-b-1", Language: "bash", Code: "echo b > f.txt"})
	if err != nil || theirs.Verdict != api.VerdictOK {
		t.Fatalf("team-b-1's run: %v %+v", err, theirs)
	}
	snapA, err := a.CreateSnapshot(ctx, mine.SandboxID, api.CreateSnapshotRequest{AgentID: "team-a-1", Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	snapB, err := ops.CreateSnapshot(ctx, theirs.SandboxID, api.CreateSnapshotRequest{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	sb := theirs.SandboxID
	rawGet := func(c *client.Client, path string) error {
		resp, err := http.DefaultClient.Do(mustReq(t, c, "GET", path))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return &client.Error{Status: resp.StatusCode}
		}
		return nil
	}
	cases := []struct {
		name string
		want int
		call func() error
	}{
		{"sandbox get", 404, func() error { _, err := a.GetSandbox(ctx, sb); return err }},
		{"sandbox delete", 404, func() error { return a.DeleteSandbox(ctx, sb) }},
		{"exec as their agent", 403, func() error {
			_, err := a.Exec(ctx, api.ExecRequest{AgentID: "team-b-1", Language: "bash", Code: "true"})
			return err
		}},
		{"exec in their sandbox", 404, func() error {
			_, err := a.Exec(ctx, api.ExecRequest{AgentID: "team-a-1", SandboxID: sb, Language: "bash", Code: "true"})
			return err
		}},
		{"exec without agent_id", 400, func() error {
			_, err := a.Exec(ctx, api.ExecRequest{Language: "bash", Code: "true"})
			return err
		}},
		{"snapshot create", 404, func() error { _, err := a.CreateSnapshot(ctx, sb, api.CreateSnapshotRequest{}); return err }},
		{"snapshot list", 404, func() error { _, err := a.ListSnapshots(ctx, sb, ""); return err }},
		{"snapshot get", 404, func() error { return rawGet(a, "/v1/snapshots/"+snapB.ID) }},
		{"snapshot delete", 404, func() error { return a.DeleteSnapshot(ctx, snapB.ID, "") }},
		{"rollback their sandbox", 404, func() error {
			_, err := a.Rollback(ctx, sb, api.RollbackRequest{SnapshotID: snapB.ID})
			return err
		}},
		{"rollback mine to their snapshot", 404, func() error {
			_, err := a.Rollback(ctx, mine.SandboxID, api.RollbackRequest{SnapshotID: snapB.ID})
			return err
		}},
		{"fork their snapshot", 404, func() error { _, err := a.Fork(ctx, snapB.ID, api.ForkRequest{}); return err }},
		{"run get", 404, func() error { _, err := a.GetRun(ctx, theirs.ExecutionID); return err }},
		{"history of their agent", 403, func() error { _, err := a.History(ctx, client.HistoryQuery{AgentID: "team-b-1"}); return err }},
		{"history of their sandbox", 404, func() error {
			_, err := a.History(ctx, client.HistoryQuery{AgentID: "team-a-1", SandboxID: sb})
			return err
		}},
		{"history without agent_id", 400, func() error { _, err := a.History(ctx, client.HistoryQuery{}); return err }},
		{"policy get", 404, func() error { _, err := a.GetAgentPolicy(ctx, "team-b-1"); return err }},
		{"policy set", 404, func() error { _, err := a.SetAgentPolicy(ctx, "team-b-1", api.ExecPolicy{}); return err }},
		{"file get", 404, func() error { _, _, err := a.GetFile(ctx, sb, "f.txt", client.FileOptions{}); return err }},
		{"file put", 404, func() error {
			_, err := a.PutFile(ctx, sb, "g.txt", strings.NewReader("x"), client.FileOptions{})
			return err
		}},
		{"file list", 404, func() error { _, err := a.ListFiles(ctx, sb, ".", 1, client.FileOptions{}); return err }},
		{"compat history", 404, func() error { return rawGet(a, "/api/vms/"+sb+"/history") }},
		{"compat vm", 404, func() error { return rawGet(a, "/api/vms/"+sb) }},
		{"metrics", 403, func() error { return rawGet(a, "/metrics") }},
	}
	for _, c := range cases {
		if err := c.call(); status(err) != c.want {
			t.Errorf("%s: %v, want status %d", c.name, err, c.want)
		}
	}
	// Nothing of team-b's was changed by the attempts.
	rc, _, err := ops.GetFile(ctx, sb, "f.txt", client.FileOptions{})
	if err != nil {
		t.Fatalf("team-b's file after the attempts: %v", err)
	}
	rc.Close()
	// Listings show only team-a's.
	list, err := a.ListSandboxes(ctx)
	if err != nil || len(list) != 1 || list[0].ID != mine.SandboxID {
		t.Errorf("team-a's listing: %v %+v; want only %s", err, list, mine.SandboxID)
	}
	hist, err := a.History(ctx, client.HistoryQuery{AgentID: "team-a-1"})
	if err != nil || len(hist.Runs) != 1 || hist.Runs[0].ID != mine.ExecutionID {
		t.Errorf("team-a-1's history: %v %+v", err, hist)
	}
	// Its own objects work, with the agent taken from the object.
	if _, err := a.Rollback(ctx, mine.SandboxID, api.RollbackRequest{SnapshotID: snapA.ID}); err != nil {
		t.Errorf("rollback of its own sandbox: %v", err)
	}
	fork, err := a.Fork(ctx, snapA.ID, api.ForkRequest{})
	if err != nil || fork.AgentID != "team-a-1" {
		t.Errorf("fork of its own snapshot: %v %+v", err, fork)
	}
	if err := rawGet(a, "/v1/snapshots/"+snapA.ID); err != nil {
		t.Errorf("its own snapshot: %v", err)
	}
	// The admin key sees everything.
	all, err := ops.ListSandboxes(ctx)
	if err != nil || len(all) < 3 {
		t.Errorf("admin listing: %v, %d sandboxes", err, len(all))
	}
}

func mustReq(t *testing.T, c *client.Client, method, path string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, c.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+c.APIKey)
	return r
}

// TestKeysQuotas: a key's rate (429 rate_limited with Retry-After), its cap on
// sandboxes and on runs in progress, through the real daemon.
func TestKeysQuotas(t *testing.T) {
	dataDir := t.TempDir()
	slow := createKey(t, dataDir, "--name", "slow", "--admin", "--rate", "1/m")
	capped := createKey(t, dataDir, "--name", "capped", "--agents", "q-*", "--max-sandboxes", "1", "--max-runs", "1")
	d := startDaemon(t, daemonOpts{dataDir: dataDir})
	ctx := context.Background()

	s := as(d, slow)
	if _, err := s.ListSandboxes(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(mustReq(t, s, "GET", "/v1/sandboxes"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second request at 1/m: %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	c := as(d, capped)
	first, err := c.Exec(ctx, api.ExecRequest{AgentID: "q-1", Language: "bash", Code: "true"})
	if err != nil {
		t.Fatal(err)
	}
	// One run in progress (its sandbox says busy): a second one is refused.
	running := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, api.ExecRequest{AgentID: "q-1", Language: "bash", Code: "sleep 5"})
		running <- err
	}()
	waitUntil(t, "the first run is in progress", func() bool { sb, err := c.GetSandbox(ctx, first.SandboxID); return err == nil && sb.Status == "busy" })
	if _, err := c.Exec(ctx, api.ExecRequest{AgentID: "q-1", Language: "bash", Code: "true"}); status(err) != 429 {
		t.Fatalf("a second concurrent run under max-runs 1: %v, want 429", err)
	}
	if err := <-running; err != nil {
		t.Fatalf("the first run: %v", err)
	}
	// q-1 has its sandbox: a second agent's first run would make a second one.
	if _, err := c.Exec(ctx, api.ExecRequest{AgentID: "q-2", Language: "bash", Code: "true"}); status(err) != 429 {
		t.Fatalf("a second sandbox under max-sandboxes 1: %v, want 429", err)
	}
	if res, err := c.Exec(ctx, api.ExecRequest{AgentID: "q-1", Language: "bash", Code: "echo ok"}); err != nil || res.Verdict != api.VerdictOK {
		t.Fatalf("a run in the existing sandbox: %v", err)
	}
}

// TestKeysRefuseExposedWithoutKeys: `serve` on a non-loopback address with no keys
// refuses to start, saying why; --insecure-no-auth overrides it.
func TestKeysRefuseExposedWithoutKeys(t *testing.T) {
	testenv.Root(t)
	out, errOut, code := vmexec(t, nil, "serve", "--addr", "0.0.0.0:0", "--data-dir", t.TempDir(), "--template-dir", "/dev/null/templates") // unbuildable: never a template build
	if code == 0 || !strings.Contains(errOut, "without API keys") || !strings.Contains(errOut, "--insecure-no-auth") {
		t.Fatalf("serve on 0.0.0.0 without keys: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir, and returns
// their paths and a pool trusting the certificate.
func selfSigned(t *testing.T, dir string) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vmexec test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}

// TestKeysTLS: with --tls-cert/--tls-key the daemon serves HTTPS (a run round-trips
// with a key, over a certificate made here), and plain HTTP is not served.
func TestKeysTLS(t *testing.T) {
	testenv.Root(t)
	dataDir := t.TempDir()
	certPath, keyPath, pool := selfSigned(t, t.TempDir())
	key := createKey(t, dataDir, "--name", "ops", "--admin")
	addr := freeAddr(t)
	tpl := testenv.Template(t)
	d := &daemon{t: t, url: "https://" + addr, dataDir: dataDir, log: &syncBuffer{},
		args: []string{"serve", "--addr", addr, "--data-dir", dataDir, "--template-dir", filepath.Dir(tpl.Dir),
			"--runsc", testenv.Runsc(t), "--agent", testenv.Agent(t), "--tls-cert", certPath, "--tls-key", keyPath}}
	d.client = &client.Client{BaseURL: d.url, APIKey: key,
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	d.start()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", tail(d.log.String(), 40))
		}
	})
	res, err := d.client.Exec(context.Background(), api.ExecRequest{AgentID: "tls", Language: "python", Code: "print(6*7)"})
	if err != nil || strings.TrimSpace(res.Stdout) != "42" {
		t.Fatalf("exec over HTTPS: %v %+v", err, res)
	}
	if _, err := (&client.Client{BaseURL: "http://" + addr, MaxRetries: -1}).Health(context.Background()); err == nil {
		t.Fatal("plain HTTP answered on the TLS port")
	}

	// MCP over HTTPS: the tools call the daemon back over HTTPS with the caller's key,
	// and a scoped key's tool calls are scoped like its API calls.
	scoped := createKey(t, dataDir, "--name", "tls-team", "--agents", "tls-*")
	mcpOver := func(key, agent string) *mcp.ClientSession {
		hc := &http.Client{Transport: bearerTransport{key, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
		return mcpConnect(t, &mcp.StreamableClientTransport{Endpoint: d.url + "/mcp?agent=" + agent, HTTPClient: hc}, &mcpProgress{})
	}
	waitUntil(t, "the scoped key is loaded", func() bool {
		_, err := as(d, scoped).ListSandboxes(context.Background())
		return err == nil
	})
	if got := mcpRunCode(t, mcpOver(scoped, "tls-mcp"), "python", "print(7*6)"); strings.TrimSpace(got.Stdout) != "42" {
		t.Fatalf("run_code over HTTPS MCP: %+v", got)
	}
	refused := mcpCall(t, mcpOver(scoped, "other-agent"), "run_code", map[string]any{"language": "python", "code": "print(1)"})
	if !refused.IsError || !strings.Contains(mcpText(refused), "forbidden") {
		t.Fatalf("run_code as an agent outside the key's scope: error=%v %s", refused.IsError, mcpText(refused))
	}
}

// bearerTransport adds a bearer token to every request.
type bearerTransport struct {
	key  string
	next http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// TestKeysAgentChat: an LLM agent's turn runs as its agent, so a key scoped to
// fixer-* chats with fixer-fenced (its runs carry the key's name) but not with another
// agent, and cannot read another agent's conversation, over /v1 or the seed's /chat.
func TestKeysAgentChat(t *testing.T) {
	d, _ := agentDaemon(t, "")
	admin := createKey(t, d.dataDir, "--name", "ops", "--admin")
	scoped := createKey(t, d.dataDir, "--name", "fixers", "--agents", "fixer-*")
	ctx := context.Background()
	waitStatus(t, "no key once keys exist", 401, func() error { _, err := as(d, "").ListSandboxes(ctx); return err })
	ops, f := as(d, admin), as(d, scoped)

	res, err := f.Chat(ctx, "fixer-fenced", api.ChatRequest{Message: "What is 10 factorial? Compute it."})
	if err != nil || !res.Success {
		t.Fatalf("chat with its own agent: %v %+v", err, res)
	}
	runs := runsOf(res)
	if len(runs) == 0 || runs[0].Result == nil {
		t.Fatalf("the turn ran nothing: %s", transcript(res))
	}
	if run, err := ops.GetRun(ctx, runs[0].Result.ExecutionID); err != nil || run.KeyName != "fixers" {
		t.Errorf("the turn's run: key_name %q, %v; want fixers", run.KeyName, err)
	}
	if _, err := f.Conversation(ctx, res.ConversationID); err != nil {
		t.Errorf("its own conversation: %v", err)
	}

	if _, err := f.Chat(ctx, "DevelopmentAgent", api.ChatRequest{Message: "hi"}); status(err) != 404 {
		t.Errorf("chat with an agent outside the scope: %v, want 404", err)
	}
	other, err := ops.Chat(ctx, "DevelopmentAgent", api.ChatRequest{Message: "What is 10 factorial? Compute it."})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Conversation(ctx, other.ConversationID); status(err) != 404 {
		t.Errorf("another agent's conversation: %v, want 404", err)
	}
	req, _ := http.NewRequest("POST", d.url+"/chat", strings.NewReader(`{"role":"DevelopmentAgent","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+scoped)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("the seed's /chat as an agent outside the scope: %d, want 404", resp.StatusCode)
	}
}
