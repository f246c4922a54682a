package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
)

// StaticConfig configures a fixed list of daemons on bare hosts, each probed with
// GET /health.
type StaticConfig struct {
	// Nodes are "NAME=ADDRESS" or "ADDRESS" (then the name is the address). ADDRESS is
	// host:port (HTTP) or a base URL, http:// or https:// with host:port. The daemon
	// accepts the probe's Host header when it listens on all addresses or names that
	// host in http.allowed_hosts.
	Nodes []string
	// Interval is the time between two probes of one node (default 2s).
	Interval time.Duration
	// Timeout bounds one probe (default 1s). The next probe of a node starts after the
	// previous one ended, at the next Interval tick.
	Timeout time.Duration
	// FailureThreshold is how many failed probes in a row make a ready node not ready
	// (default 3). One success makes a node ready.
	FailureThreshold int
	// Client makes the probes (default: a client with no proxy, for TLS the system's
	// roots; set one with the daemons' CA for a self-signed certificate).
	Client *http.Client
	// Logger gets readiness transitions (default slog.Default()).
	Logger *slog.Logger
}

// staticNode is one parsed entry.
type staticNode struct{ name, address, healthURL string }

func (c *StaticConfig) parse() ([]staticNode, error) {
	if len(c.Nodes) == 0 {
		return nil, errors.New("membership: static: no nodes given (want NAME=ADDRESS or ADDRESS, ADDRESS host:port or http(s)://host:port)")
	}
	var out []staticNode
	seen := map[string]bool{}
	var errs []error
	for _, entry := range c.Nodes {
		name, addr, named := strings.Cut(strings.TrimSpace(entry), "=")
		if !named {
			addr = name
		}
		base := addr
		if !strings.Contains(addr, "://") {
			base = "http://" + addr
		}
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
			errs = append(errs, fmt.Errorf("membership: static node %q: want host:port or http(s)://host:port", entry))
			continue
		}
		if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("membership: static node %q: the address needs a port", entry))
			continue
		}
		if !named {
			name = u.Host
		}
		if name == "" || seen[name] {
			errs = append(errs, fmt.Errorf("membership: static node %q: name %q empty or given twice", entry, name))
			continue
		}
		seen[name] = true
		out = append(out, staticNode{name: name, address: u.Host, healthURL: u.Scheme + "://" + u.Host + "/health"})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if c.Interval <= 0 {
		c.Interval = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 3
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: 4 * c.Interval}}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return out, nil
}

// Static is Members over a fixed list of daemons. Each node is probed in its own
// goroutine, so one slow node does not delay the others' state.
type Static struct {
	*view
	cfg    StaticConfig
	nodes  []staticNode
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	state  map[string]Node // by name
	probed map[string]bool // names probed at least once
}

// NewStatic validates cfg and starts probing every node at once, then every Interval.
// Until its first success a node is not ready.
func NewStatic(cfg StaticConfig) (*Static, error) {
	nodes, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Static{view: newView("membership: static nodes"), cfg: cfg, nodes: nodes, cancel: cancel,
		state: map[string]Node{}, probed: map[string]bool{}}
	for _, n := range nodes {
		s.state[n.name] = Node{Name: n.name, Address: n.address, Load: -1}
	}
	for _, n := range nodes {
		s.wg.Add(1)
		go s.probeLoop(ctx, n)
	}
	return s, nil
}

// Close stops the probes and waits for them to end.
func (s *Static) Close() error {
	s.cancel()
	s.wg.Wait()
	s.view.close()
	return nil
}

func (s *Static) probeLoop(ctx context.Context, n staticNode) {
	defer s.wg.Done()
	failures := 0
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		load, err := s.probe(ctx, n)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
		} else {
			failures++
		}
		s.record(n, load, err, failures)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// record folds one probe's result into the node's state and publishes the view.
func (s *Static) record(n staticNode, load int, err error, failures int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.state[n.name]
	cur := old
	switch {
	case err == nil:
		cur.Ready, cur.Load = true, load
	case failures >= s.cfg.FailureThreshold || !s.probed[n.name]:
		cur.Ready = false
	}
	if cur.Ready != old.Ready {
		if cur.Ready {
			s.cfg.Logger.Info("membership: node ready", "node", n.name, "address", n.address)
		} else {
			s.cfg.Logger.Warn("membership: node not ready", "node", n.name, "address", n.address, "failures", failures, "err", err)
		}
	}
	s.state[n.name] = cur
	s.probed[n.name] = true
	nodes := make([]Node, 0, len(s.state))
	for _, v := range s.state {
		nodes = append(nodes, v)
	}
	s.view.set(nodes)
	if len(s.probed) == len(s.nodes) {
		s.view.markSynced()
	}
}

// probe is one GET /health: ready means 200 with a healthy vmexec body; it returns the
// node's sandbox count.
func (s *Static) probe(ctx context.Context, n staticNode) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.healthURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", n.healthURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: HTTP %d", n.healthURL, resp.StatusCode)
	}
	var h api.Health
	if err := json.Unmarshal(body, &h); err != nil || h.Service != "vmexec" || h.Status != "healthy" {
		return 0, fmt.Errorf("%s: not a healthy vmexec daemon (%.100q)", n.healthURL, body)
	}
	return h.Sandboxes, nil
}
