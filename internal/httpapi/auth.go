package httpapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Authentication, scope and per-key limits (internal/auth has the keys).
//
// Enforcement is in ServeHTTP, before any route runs, so it covers every route
// registered now or later: once keys are in force (some key was created, or auth
// is required), every request needs `Authorization: Bearer KEY` except the public
// routes below. A missing, malformed, unknown or revoked key gets the same 401 with
// WWW-Authenticate. Then the key's rate is taken (429 with Retry-After), and a key
// scoped to agents may call only the routes in scopedRoutes — those that derive the
// agent they act as with actingAgent — so a route added later is for admin keys
// until it does the same (it fails closed, not open).
//
// Scope: a scoped key acts only as agent ids matching its patterns. actingAgent is
// the one place that turns the principal and the request into the agent id fed to the
// service's ownership checks ("" = the operator, for admin keys and open daemons):
// an agent_id outside the scope is 403; an object (sandbox, snapshot, run, an agent's
// policy) whose owner is outside the scope is 404, as if it did not exist (an object
// without an owner is the operator's, outside every scope); a request naming neither
// an agent nor an object is 400. Listings show only what is in scope.

// publicPatterns are the routes that need no key, by the mux's pattern (not the raw
// path, so a path that merely starts like a public one is not public): the health
// check, which load balancers and probes call (it tells the status, the default
// backend and a sandbox count). Routes under "GET /js/" are public too: the
// JavaScript client's static files, the same module as in the repository with no
// data of the server's (a page that loads it still needs a key for every call it
// makes). So are the web page's static shell and assets (GET / and GET /ui/{file}),
// embedded files with no data of the server's: the page asks for a key when its first
// API call is answered 401. TestEveryRouteNeedsAKey keeps its own list and decides
// independently.
var publicPatterns = map[string]bool{"GET /health": true, "GET /{$}": true, "GET /ui/{file}": true}

func publicRoute(pattern string) bool {
	return publicPatterns[pattern] || strings.HasPrefix(pattern, "GET /js/")
}

// scopedRoutes are the routes a key scoped to agents may call. Each derives its
// acting agent with actingAgent (or names no agent's data: languages, backends,
// health). Any route not here (the metrics, and any route added later until it is
// listed) needs an admin key.
var scopedRoutes = map[string]bool{
	"POST /api/llm/execute": true, "POST /api/llm/parse-execute": true,
	"POST /api/vms": true, "GET /api/vms": true, "GET /api/vms/{id}": true, "DELETE /api/vms/{id}": true,
	"POST /api/vms/{vm}/snapshots": true, "POST /api/vms/{vm}/rollback/{snapshot}": true, "GET /api/vms/{vm}/history": true,
	"GET /v1/health": true, "GET /v1/languages": true, "GET /v1/backends": true,
	"POST /v1/exec": true, "POST /v1/parse-execute": true,
	"POST /v1/sandboxes": true, "GET /v1/sandboxes": true, "GET /v1/sandboxes/{id}": true, "DELETE /v1/sandboxes/{id}": true,
	"POST /v1/sandboxes/{id}/exec":      true,
	"POST /v1/sandboxes/{id}/snapshots": true, "GET /v1/sandboxes/{id}/snapshots": true, "POST /v1/sandboxes/{id}/rollback": true,
	"GET /v1/snapshots/{id}": true, "DELETE /v1/snapshots/{id}": true, "POST /v1/snapshots/{id}/fork": true,
	"GET /v1/history": true, "GET /v1/runs/{id}": true, "GET /v1/runs/{id}/changes": true,
	"GET /v1/agents/{id}/policy": true, "PUT /v1/agents/{id}/policy": true,
	"PUT /v1/sandboxes/{id}/files": true, "GET /v1/sandboxes/{id}/files": true, "DELETE /v1/sandboxes/{id}/files": true,
	"GET /v1/sandboxes/{id}/files/list": true,
	"POST /v1/sandboxes/{id}/contexts":  true, "GET /v1/sandboxes/{id}/contexts": true,
	"DELETE /v1/sandboxes/{id}/contexts/{ctx}": true, "POST /v1/sandboxes/{id}/contexts/{ctx}/restart": true,
	"POST /v1/sandboxes/{id}/contexts/{ctx}/run": true,
	// An agent's turn runs as the agent its path (or role) names; a conversation is
	// its agent's.
	"POST /v1/agents/{id}/chat": true, "GET /v1/conversations/{id}": true, "POST /chat": true,
	// MCP tool calls go back to this API with the caller's key, where the scope of
	// each call is applied like any other request's.
	"POST /mcp": true, "DELETE /mcp": true, "GET /mcp": true,
	// The E2B surface applies the key's scope to the sandboxes it names (internal/e2b).
	"GET /e2b/api/": true, "POST /e2b/api/": true, "DELETE /e2b/api/": true,
	"GET /e2b/envd/": true, "POST /e2b/envd/": true, "DELETE /e2b/envd/": true,
}

// runRoutes run code: each request holds one of its key's max_runs slots while it
// is served.
var runRoutes = map[string]bool{
	"POST /v1/exec": true, "POST /v1/sandboxes/{id}/exec": true, "POST /v1/parse-execute": true,
	"POST /v1/sandboxes/{id}/contexts/{ctx}/run": true,
	"POST /api/llm/execute":                      true, "POST /api/llm/parse-execute": true,
	"POST /v1/agents/{id}/chat": true, "POST /chat": true, // a turn runs one piece of code at a time
}

var (
	errUnauthenticated = errors.New("unauthenticated")
	errRateLimited     = errors.New("rate limited")
	errQuota           = errors.New("quota reached")
)

// retryAfter is an error answered with a Retry-After header.
type retryAfter struct {
	err  error
	wait time.Duration
}

func (e retryAfter) Error() string { return e.err.Error() }
func (e retryAfter) Unwrap() error { return e.err }

// authenticate applies the key rules to r: it returns r carrying its principal (and
// a release for a run slot) or the error to answer.
func (s *Server) authenticate(r *http.Request) (*http.Request, func(), error) {
	nop := func() {}
	_, pattern := s.mux.Handler(r)
	if publicRoute(pattern) || !s.keys.Enforced() {
		return r, nop, nil
	}
	p, err := s.keys.Authenticate(apiKey(r, pattern))
	if err != nil {
		if strings.HasSuffix(pattern, " "+e2bEnvdPattern) && s.e2b.TokenOK(r) {
			return r, nop, nil // no key, but the access token of the sandbox it names
		}
		return r, nop, fmt.Errorf("a valid API key is required: send Authorization: Bearer KEY: %w", errUnauthenticated)
	}
	if ok, wait := p.Allow(time.Now()); !ok {
		return r, nop, retryAfter{fmt.Errorf("key %s is over its rate of %g requests/s; retry in %s: %w", p.Name(), p.Rate, wait.Round(time.Millisecond), errRateLimited), wait}
	}
	if p.Scoped() && !scopedRoutes[pattern] {
		return r, nop, fmt.Errorf("%s %s needs an admin key (key %s is scoped to agents %s): %w", r.Method, r.URL.Path, p.Name(), strings.Join(p.Agents, ","), sandbox.ErrForbidden)
	}
	release := nop
	if runRoutes[pattern] {
		var ok bool
		if release, ok = p.StartRun(); !ok {
			return r, nop, retryAfter{fmt.Errorf("key %s has %d runs in progress, its max_runs: %w", p.Name(), p.MaxRuns, errQuota), time.Second}
		}
	}
	ctx := sandbox.WithKeyName(auth.WithPrincipal(r.Context(), p), p.Name())
	return r.WithContext(ctx), release, nil
}

// The E2B SDKs send their key as X-API-KEY (control plane), and on a sandbox's
// traffic (envd) no key but the sandbox's access token, which internal/e2b checks.
const (
	e2bPattern     = "/e2b/"
	e2bEnvdPattern = "/e2b/envd/"
)

// apiKey is the key a request presents: its bearer token, or on the E2B routes its
// X-API-KEY.
func apiKey(r *http.Request, pattern string) string {
	return auth.Presented(r.Header, strings.Contains(pattern, e2bPattern))
}

// authHeaders sets the headers an auth error is answered with.
func authHeaders(w http.ResponseWriter, err error) {
	if errors.Is(err, errUnauthenticated) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="vmexec"`)
	}
	var ra retryAfter
	if errors.As(err, &ra) {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((ra.wait+time.Second-1)/time.Second))))
	}
}

// target is the object a request names, whose owner decides whether it is in the
// key's scope.
type target struct {
	kind string // "sandbox", "snapshot", "run", "agent"; "" for none
	id   string
}

func sandboxTarget(id string) target { return target{kind: "sandbox", id: id} }

// ownerOf is the agent an object belongs to ("" for none: the operator's).
func (s *Server) ownerOf(ctx context.Context, t target) (string, error) {
	switch t.kind {
	case "sandbox":
		sb, err := s.svc.Get(t.id)
		return sb.AgentID, err
	case "snapshot":
		sn, err := s.svc.GetSnapshot(ctx, t.id, "")
		return sn.AgentID, err
	case "run":
		run, err := s.svc.GetRun(ctx, t.id)
		return run.AgentID, err
	case "agent":
		return t.id, nil
	case "conversation":
		if s.agents == nil {
			return "", errNoAgents
		}
		c, err := s.agents.Conversation(ctx, t.id)
		return c.AgentID, err
	}
	return "", nil
}

// actingAgent is the agent id a request acts as, given the agent it names
// (requested: its agent_id, "" for none) and the object it names (t, or none). For
// an admin key or an open daemon it is requested, as it always was ("" = the
// operator). For a scoped key it is requested if that is in scope (403 if not), else
// the object's owner; an object whose owner is out of scope is 404; naming neither
// is 400.
func (s *Server) actingAgent(r *http.Request, requested string, t target) (string, error) {
	p := auth.FromContext(r.Context())
	if !p.Scoped() {
		return requested, nil
	}
	if requested != "" && !p.Allows(requested) {
		return "", fmt.Errorf("key %s may not act as agent %s (its agents: %s): %w", p.Name(), requested, strings.Join(p.Agents, ","), sandbox.ErrForbidden)
	}
	if t.kind != "" && t.id != "" {
		owner, err := s.ownerOf(r.Context(), t)
		if err != nil {
			return "", err
		}
		if !p.Allows(owner) {
			return "", fmt.Errorf("%s %s: %w", t.kind, t.id, sandbox.ErrNotFound)
		}
		if requested == "" {
			requested = owner
		}
	}
	if requested == "" {
		return "", fmt.Errorf("agent_id is required: key %s acts only as agents %s: %w", p.Name(), strings.Join(p.Agents, ","), sandbox.ErrInvalid)
	}
	return requested, nil
}

// inScope reports whether the request's principal may see something of agent.
func inScope(r *http.Request, agent string) bool { return auth.FromContext(r.Context()).Allows(agent) }

// reserveSandbox holds a place under the key's max_sandboxes for a request that
// creates a sandbox: explicitly (agent ""), or as agent's first run (counted only
// while the agent has no default sandbox yet). The caller releases it when the
// request is done. No key, or a key without the cap, is never refused.
func (s *Server) reserveSandbox(r *http.Request, agent string) (func(), error) {
	p := auth.FromContext(r.Context())
	if p == nil || p.MaxSandboxes <= 0 {
		return func() {}, nil
	}
	release, ok := p.ReserveSandbox(agent, func(pending []string) int {
		n := 0
		for _, sb := range s.svc.List() {
			if p.Allows(sb.AgentID) {
				n++
			}
		}
		seen := map[string]bool{}
		for _, a := range pending {
			if a == "" || !seen[a] && !s.svc.HasDefault(a) {
				n++
			}
			seen[a] = true
		}
		return n
	})
	if !ok {
		return nil, fmt.Errorf("key %s may have at most %d sandboxes, and has that many (delete one first): %w", p.Name(), p.MaxSandboxes, errQuota)
	}
	return release, nil
}

// prepareRun settles who a run request acts as, and reserves its sandbox under the
// key's cap when it would create one; the caller calls release when done.
func (s *Server) prepareRun(r *http.Request, agentID, sandboxID *string) (release func(), err error) {
	t := target{}
	if *sandboxID != "" {
		t = sandboxTarget(*sandboxID)
	}
	if *agentID, err = s.actingAgent(r, *agentID, t); err != nil {
		return nil, err
	}
	if p := auth.FromContext(r.Context()); p != nil && p.MaxSandboxes > 0 && *sandboxID == "" && *agentID != "" && !s.svc.HasDefault(*agentID) {
		return s.reserveSandbox(r, *agentID)
	}
	return func() {}, nil
}

// prepareAgentTurn checks that the request may act as agent id (an LLM agent's turn
// runs as it), and reserves its sandbox under the key's cap when the turn's first run
// would create one; the caller calls release when done.
func (s *Server) prepareAgentTurn(r *http.Request, id string) (release func(), err error) {
	if _, err := s.actingAgent(r, "", target{"agent", id}); err != nil {
		return nil, err
	}
	if p := auth.FromContext(r.Context()); p != nil && p.MaxSandboxes > 0 && !s.svc.HasDefault(id) {
		return s.reserveSandbox(r, id)
	}
	return func() {}, nil
}

// scopedSandboxes filters a listing to the request's scope (and to the agent named by
// ?agent_id=, which must be in scope).
func (s *Server) scopedSandboxes(r *http.Request) ([]api.Sandbox, error) {
	agent := r.URL.Query().Get("agent_id")
	if agent != "" {
		if _, err := s.actingAgent(r, agent, target{}); err != nil {
			return nil, err
		}
	}
	out := []api.Sandbox{}
	for _, sb := range s.svc.List() {
		if inScope(r, sb.AgentID) && (agent == "" || sb.AgentID == agent) {
			out = append(out, sb)
		}
	}
	return out, nil
}

// pinnedClient is an HTTPS client that accepts exactly the certificate der (none
// when der is empty): the server calling itself at its own socket address, which
// the certificate's names need not cover.
func pinnedClient(der []byte) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // replaced by the exact comparison below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(der) == 0 || len(raw) == 0 || !bytes.Equal(raw[0], der) {
				return errors.New("not this server's own certificate")
			}
			return nil
		},
	}}}
}
