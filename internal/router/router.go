// Package router is cluster mode's front door: a stateless HTTP proxy that sends
// each request to the daemon (node) that owns the agent it concerns, places new
// agents, and takes an agent over from a node that died. Run as many routers as
// you like: everything they agree on is in PostgreSQL (internal/cluster); what a
// router keeps in memory is a cache it can lose at any time.
//
// # Terms
//
//   - The agent of a request is found by the rules in rules.go (documented on
//     routeRules): an X-Vmexec-Agent header; else the agent_id a JSON body, the path
//     or the query names; else the agent owning the sandbox, snapshot, run or
//     conversation the path names (looked up in the shared history, Lookup). A
//     request that names no agent goes to any ready node when it concerns no
//     agent's data (health, languages, backends, the JavaScript client, the web
//     page) or when the cluster has one ready node; otherwise it is refused with 400
//     saying how to name the agent.
//   - The owner of an agent is its cluster.Owner row. An agent without one is
//     placed: the router picks the best of K (default 2) random ready nodes with
//     room (load < capacity), the least loaded, and claims the agent for it
//     (cluster.Ownership.Claim, an insert that only one of several racing routers
//     wins: the others use the winner's row).
//   - What the router reads from PostgreSQL per request is cached: the node list
//     for NodesTTL (1s; dropped when a node does not answer, and read afresh by a
//     takeover), an owner row for CacheTTL (2s; dropped when a node answers 409),
//     and the agent of a sandbox, snapshot, run or conversation for good (an
//     object's agent never changes; LookupCacheSize bounds the map).
//   - Members says which nodes exist, where they listen and which are ready:
//     Registry (the node registry in PostgreSQL: ready while a node's heartbeat is
//     younger than ReadyWithin, by the database's clock), or Sourced over an
//     internal/membership source (a Kubernetes headless Service's EndpointSlices,
//     or a static list probed on /health), with load and capacity from the registry.
//
// # Takeover
//
// When the owner cannot be reached (connecting fails, or writing the request on a
// kept-alive connection fails before any byte of it went out: the owner did not
// get the request, so nothing ran; a request that went out in part is answered
// 502, never resent), the router waits — up to TakeoverWait, polling once a second —
// until either the owner answers a direct probe (then the request goes to it) or
// the owner is both not ready and unreachable. Then it takes the agent over: it
// picks a candidate the same way as for placement, among ready nodes whose
// snapshot compatibility (runsc version and platform, from GET /v1/cluster/node)
// matches the old owner's when the router knows it, moves the agent with one
// compare-and-set on the epoch (cluster.Ownership.Takeover), and asks the new
// owner to restore the agent's durable snapshot (POST /v1/cluster/adopt, which is
// idempotent). A router that loses the compare-and-set asks the winner's node to
// adopt as well (so a request never reaches a node that has not restored the
// agent), then forwards. Within one router, concurrent requests for one agent share
// one takeover. The response carries X-Vmexec-Node (always) and
// X-Vmexec-Taken-Over-From (the node the agent was taken from, on the request
// that did or met the takeover).
//
// A connection that fails after the request was sent is not retried (the run may
// have happened): the caller gets 502, and the next request decides on takeover.
//
// # Authentication
//
// With keys in force (Keys.Enforced), every request but the public ones (the
// daemon's: health, the JavaScript client, the web page's shell) needs a valid key,
// checked here against the same keys the daemons use (auth.Cache over the
// cluster's PostgreSQL), and a key scoped to agents may not name an agent outside
// its scope (403) nor place or take over one. The Authorization header goes to the
// daemon unchanged, which applies every key rule (scope, rates, quotas) again: the
// router adds no permission. The router's own calls to daemons (adopt, probes)
// use AdminKey.
package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
)

// Errors a router answers with, mapped to statuses in writeError.
var (
	// ErrNoAgent: the request names no agent and several nodes could serve it.
	ErrNoAgent = errors.New("request names no agent")
	// ErrNoNode: no ready node (with room, compatible) to send the request to.
	ErrNoNode = errors.New("no ready node")
	// ErrOwnerUnreachable: the owner does not answer but still heartbeats.
	ErrOwnerUnreachable = errors.New("owner unreachable")
	// ErrUpstream: the node failed the request (connection lost mid-way, adopt failed).
	ErrUpstream = errors.New("node failed")
	// ErrNotFound: the object the request names does not exist.
	ErrNotFound = errors.New("not found")
	// ErrForbidden: the key may not act as the agent the request names.
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthenticated: no valid key.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrTooLarge: the body is over MaxBodyBytes.
	ErrTooLarge = errors.New("body too large")
)

// MaxBodyBytes bounds a request body (as the daemon's httpapi.MaxBodyBytes): the
// router holds it to resend it after a takeover.
const MaxBodyBytes = 4 << 20

// Response headers.
const (
	HeaderAgent        = "X-Vmexec-Agent"
	HeaderNode         = "X-Vmexec-Node"
	HeaderTakenOver    = "X-Vmexec-Taken-Over-From"
	defaultK           = 2
	defaultCacheTTL    = 2 * time.Second
	defaultNodesTTL    = time.Second
	defaultLookupCache = 1 << 16
	defaultProbeTimout = 2 * time.Second
)

// Lookup finds the agent that owns an object of the shared history. Each method
// returns ErrNotFound (wrapped) for no such object, and "" for an object without
// an agent (the operator's).
type Lookup interface {
	SandboxAgent(ctx context.Context, id string) (string, error)
	SnapshotAgent(ctx context.Context, id string) (string, error)
	RunAgent(ctx context.Context, id string) (string, error)
	ConversationAgent(ctx context.Context, id string) (string, error)
}

// Config configures a Router.
type Config struct {
	Owners  cluster.Ownership
	Members Members
	Lookup  Lookup
	// Keys are the API keys (nil: no keys at the router; the daemons still check).
	Keys *auth.Cache
	// AdminKey is the bearer token of the router's own calls to daemons (adopt).
	AdminKey string
	// K is how many random candidates placement compares (default 2).
	K int
	// TakeoverWait bounds how long a request waits for an unreachable owner to be
	// either back or not ready (default cluster.ReadyWithin + cluster.HeartbeatEvery).
	TakeoverWait time.Duration
	// CacheTTL is how long an owner row is trusted from memory (default 2s).
	CacheTTL time.Duration
	// NodesTTL is how long the node list (Members) is trusted from memory (default
	// 1s); a node that does not answer drops it sooner, and a takeover always reads
	// it afresh.
	NodesTTL time.Duration
	// LookupCacheSize bounds the object → agent mappings kept from Lookup (default
	// 65536; the least recently used go first).
	LookupCacheSize int
	// Transport carries requests to nodes (default: DefaultTransport). Over
	// another transport's connections the router cannot tell that none of a
	// request went out, so it resends one only when connecting failed.
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Router is an http.Handler proxying to the cluster's nodes.
type Router struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	client *http.Client // probes, adopt, node info

	mu     sync.Mutex
	owners map[string]cachedOwner // agent → row
	compat map[string]string      // node → its snapshot compatibility, once fetched
	flight map[string]*takeover   // agent → takeover in progress
	nodes  nodeCache              // the last node list (cache.go)
}

type cachedOwner struct {
	o  cluster.Owner
	at time.Time
}

// New returns a router.
func New(cfg Config) (*Router, error) {
	if cfg.Owners == nil || cfg.Members == nil || cfg.Lookup == nil {
		return nil, errors.New("router: ownership, members and lookup are required")
	}
	if cfg.K <= 0 {
		cfg.K = defaultK
	}
	if cfg.TakeoverWait <= 0 {
		cfg.TakeoverWait = cluster.ReadyWithin + cluster.HeartbeatEvery
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = defaultCacheTTL
	}
	if cfg.NodesTTL <= 0 {
		cfg.NodesTTL = defaultNodesTTL
	}
	if cfg.LookupCacheSize <= 0 {
		cfg.LookupCacheSize = defaultLookupCache
	}
	cfg.Lookup = newCachedLookup(cfg.Lookup, cfg.LookupCacheSize)
	if cfg.Transport == nil {
		cfg.Transport = DefaultTransport()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	rt := &Router{cfg: cfg, log: cfg.Logger.With("component", "router"), mux: http.NewServeMux(),
		client: &http.Client{Transport: cfg.Transport, Timeout: 5 * time.Minute},
		owners: map[string]cachedOwner{}, compat: map[string]string{}, flight: map[string]*takeover{}}
	rt.routes()
	return rt, nil
}

// ServeHTTP implements http.Handler: authenticate, then route.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, pattern := rt.mux.Handler(r)
	if !publicPattern(pattern) && rt.cfg.Keys.Enforced() {
		p, err := rt.cfg.Keys.Authenticate(auth.Presented(r.Header, true))
		if err != nil {
			writeError(w, rt.log, fmt.Errorf("a valid API key is required: send Authorization: Bearer KEY: %w", ErrUnauthenticated))
			return
		}
		r = r.WithContext(auth.WithPrincipal(r.Context(), p))
	}
	rt.mux.ServeHTTP(w, r)
}

// writeError is the one place the router's errors become statuses. Errors a node
// answered are passed through as the node wrote them, never through here.
func writeError(w http.ResponseWriter, log *slog.Logger, err error) {
	status, code := http.StatusInternalServerError, api.CodeInternal
	switch {
	case errors.Is(err, ErrUnauthenticated):
		status, code = http.StatusUnauthorized, api.CodeUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="vmexec"`)
	case errors.Is(err, ErrForbidden):
		status, code = http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, ErrNotFound):
		status, code = http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, ErrNoAgent):
		status, code = http.StatusBadRequest, api.CodeBadRequest
	case errors.Is(err, ErrTooLarge):
		status, code = http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.Is(err, ErrNoNode), errors.Is(err, ErrOwnerUnreachable):
		status, code = http.StatusServiceUnavailable, api.CodeUnavailable
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, ErrUpstream):
		status, code = http.StatusBadGateway, api.CodeUnavailable
	case errors.Is(err, cluster.ErrStale), errors.Is(err, cluster.ErrOwned):
		status, code = http.StatusConflict, api.CodeConflict
	case errors.Is(err, context.DeadlineExceeded):
		status, code = http.StatusGatewayTimeout, api.CodeTimeout
	case errors.Is(err, context.Canceled):
		status, code = 499, api.CodeTimeout
	}
	msg := err.Error()
	if status == http.StatusInternalServerError {
		log.Error("router failure", "err", err)
		msg = "internal error in the router (the cluster database may be unreachable); see its log"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Error: msg, Code: code})
}
