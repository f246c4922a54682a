package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/vmexec/vmexec/internal/auth"
)

// want is what a routing rule learned of a request: the agent it concerns, or that
// any node may serve it.
type want struct {
	agent   string
	any     bool   // concerns no agent's data: any ready node
	named   bool   // the agent was named by the caller (not derived from an object)
	because string // how the agent was found, for logs
}

// rule derives the want of a request (body: its buffered body).
type rule func(ctx context.Context, r *http.Request, body []byte) (want, error)

// publicPatterns need no key (the daemon's public routes; see httpapi/auth.go).
var publicPatterns = map[string]bool{"GET /health": true, "GET /{$}": true, "GET /ui/{file}": true,
	"GET /js/vmexec.js": true, "GET /js/index.d.ts": true, "GET /router/health": true}

// publicPattern reports a route the router lets through without a key: the public
// ones, and E2B's envd traffic, which carries the sandbox's access token instead
// (the daemon checks it).
func publicPattern(p string) bool { return publicPatterns[p] || p == "/e2b/envd/" }

// routeRules is the routing table: how the agent of each of the daemon's routes is
// found. In every case an X-Vmexec-Agent header, when present, names the agent
// first. Then:
//
//   - runs and creations (POST /v1/exec, /v1/parse-execute, /api/llm/execute,
//     /api/llm/parse-execute, /v1/sandboxes, /api/vms, /chat): the JSON body's
//     agent_id; else the agent of its sandbox_id (or vm_id).
//
//   - a sandbox in the path (/v1/sandboxes/{id}/..., /api/vms/{id}/...): the
//     sandbox's agent, from the history.
//
//   - a snapshot (/v1/snapshots/{id}, its fork: the fork runs where the image is),
//     a run (/v1/runs/{id}...), a conversation (/v1/conversations/{id}): its agent.
//
//   - an agent in the path (/v1/agents/{id}/...): that agent.
//
//   - listings (GET /v1/sandboxes, /api/vms, /v1/history): ?agent_id=, else the
//     agent of ?sandbox_id=.
//
//   - MCP (/mcp) and any other route: ?agent_id=.
//
//   - health, languages, backends, the JavaScript client, the web page: any node.
//
//   - E2B (/e2b/api, /e2b/envd): a create's metadata.agent_id; a sandbox in the
//     control plane's path, or envd's E2b-Sandbox-Id header: its agent.
//
// A rule that finds no agent leaves the request to "one ready node, else 400".
func (rt *Router) routes() {
	body := rt.bodyAgent
	for _, p := range []string{"POST /v1/exec", "POST /v1/parse-execute", "POST /api/llm/execute",
		"POST /api/llm/parse-execute", "POST /v1/sandboxes", "POST /api/vms", "POST /chat"} {
		rt.handle(p, body)
	}
	for _, p := range []string{"GET /v1/sandboxes/{id}", "DELETE /v1/sandboxes/{id}", "POST /v1/sandboxes/{id}/exec",
		"POST /v1/sandboxes/{id}/snapshots", "GET /v1/sandboxes/{id}/snapshots", "POST /v1/sandboxes/{id}/rollback",
		"PUT /v1/sandboxes/{id}/files", "GET /v1/sandboxes/{id}/files", "DELETE /v1/sandboxes/{id}/files",
		"GET /v1/sandboxes/{id}/files/list", "GET /api/vms/{id}", "DELETE /api/vms/{id}",
		"POST /api/vms/{id}/snapshots", "POST /api/vms/{id}/rollback/{snapshot}", "GET /api/vms/{id}/history"} {
		rt.handle(p, rt.byObject("sandbox", rt.cfg.Lookup.SandboxAgent))
	}
	for _, p := range []string{"GET /v1/snapshots/{id}", "DELETE /v1/snapshots/{id}", "POST /v1/snapshots/{id}/fork"} {
		rt.handle(p, rt.byObject("snapshot", rt.cfg.Lookup.SnapshotAgent))
	}
	for _, p := range []string{"GET /v1/runs/{id}", "GET /v1/runs/{id}/changes"} {
		rt.handle(p, rt.byObject("run", rt.cfg.Lookup.RunAgent))
	}
	rt.handle("GET /v1/conversations/{id}", rt.byObject("conversation", rt.cfg.Lookup.ConversationAgent))
	for _, p := range []string{"GET /v1/agents/{id}/policy", "PUT /v1/agents/{id}/policy", "POST /v1/agents/{id}/chat"} {
		rt.handle(p, func(_ context.Context, r *http.Request, _ []byte) (want, error) {
			return want{agent: r.PathValue("id"), named: true, because: "path"}, nil
		})
	}
	for _, p := range []string{"GET /v1/sandboxes", "GET /api/vms", "GET /v1/history"} {
		rt.handle(p, rt.byQuery)
	}
	for _, p := range []string{"GET /health", "GET /v1/health", "GET /v1/languages", "GET /v1/backends",
		"GET /js/vmexec.js", "GET /js/index.d.ts", "GET /{$}", "GET /ui/{file}"} {
		rt.handle(p, func(context.Context, *http.Request, []byte) (want, error) { return want{any: true}, nil })
	}
	// The E2B surface (internal/e2b): a create names its agent in metadata.agent_id;
	// the control plane's sandbox routes and envd's traffic (the E2b-Sandbox-Id
	// header) name an E2B sandbox, which is a vmexec sandbox.
	for _, p := range []string{"POST /e2b/api/v2/sandboxes", "POST /e2b/api/sandboxes"} {
		rt.handle(p, rt.e2bCreate)
	}
	for _, p := range []string{"/e2b/api/sandboxes/{id}", "/e2b/api/sandboxes/{id}/connect", "/e2b/api/v2/sandboxes/{id}/connect",
		"/e2b/api/sandboxes/{id}/timeout", "/e2b/api/sandboxes/{id}/snapshots"} {
		rt.handle(p, rt.byObject("sandbox", rt.cfg.Lookup.SandboxAgent))
	}
	rt.handle("/e2b/envd/", func(ctx context.Context, r *http.Request, _ []byte) (want, error) {
		id := r.Header.Get("E2b-Sandbox-Id")
		if id == "" {
			return want{}, nil
		}
		return rt.objectAgent(ctx, "sandbox", id, rt.cfg.Lookup.SandboxAgent)
	})
	rt.mux.HandleFunc("GET /router/health", rt.health)
	rt.handle("/", func(_ context.Context, r *http.Request, _ []byte) (want, error) {
		return want{agent: r.URL.Query().Get("agent_id"), named: true, because: "query"}, nil
	})
}

// handle registers pattern with rule in front of the proxy.
func (rt *Router) handle(pattern string, find rule) {
	rt.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
		if err != nil {
			writeError(w, rt.log, err)
			return
		}
		wt := want{}
		if a := r.Header.Get(HeaderAgent); a != "" {
			wt = want{agent: a, named: true, because: "header"}
		} else if wt, err = find(r.Context(), r, body); err != nil {
			writeError(w, rt.log, err)
			return
		}
		if err := checkScope(r, wt); err != nil {
			writeError(w, rt.log, err)
			return
		}
		rt.serve(w, r, body, wt)
	})
}

// readBody buffers r's body (bounded), so it can be sent again after a takeover.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w", ErrUpstream)
	}
	if len(b) > MaxBodyBytes {
		return nil, fmt.Errorf("request body over %d bytes: %w", MaxBodyBytes, ErrTooLarge)
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, nil
}

// checkScope refuses a scoped key naming an agent outside its scope (403), or
// reaching an object whose agent is (404, as the daemon would): the router must not
// place or take over an agent for a key that may not act as it.
func checkScope(r *http.Request, wt want) error {
	p := auth.FromContext(r.Context())
	if wt.agent == "" || p.Allows(wt.agent) {
		return nil
	}
	if wt.named {
		return fmt.Errorf("key %s may not act as agent %s: %w", p.Name(), wt.agent, ErrForbidden)
	}
	return fmt.Errorf("%s: %w", wt.because, ErrNotFound)
}

// bodyAgent reads agent_id (else the agent of sandbox_id / vm_id) from a JSON body.
// A body that is not JSON names no agent; the node it reaches answers it.
func (rt *Router) bodyAgent(ctx context.Context, r *http.Request, body []byte) (want, error) {
	var in struct {
		AgentID   string `json:"agent_id"`
		SandboxID string `json:"sandbox_id"`
		VMID      string `json:"vm_id"`
	}
	if len(body) == 0 || json.Unmarshal(body, &in) != nil {
		return want{}, nil
	}
	if in.AgentID != "" {
		return want{agent: in.AgentID, named: true, because: "body agent_id"}, nil
	}
	sb := in.SandboxID
	if sb == "" {
		sb = in.VMID
	}
	if sb == "" {
		return want{}, nil
	}
	return rt.objectAgent(ctx, "sandbox", sb, rt.cfg.Lookup.SandboxAgent)
}

// byObject finds the agent owning the object the path's {id} names.
func (rt *Router) byObject(kind string, find func(context.Context, string) (string, error)) rule {
	return func(ctx context.Context, r *http.Request, _ []byte) (want, error) {
		return rt.objectAgent(ctx, kind, r.PathValue("id"), find)
	}
}

func (rt *Router) objectAgent(ctx context.Context, kind, id string, find func(context.Context, string) (string, error)) (want, error) {
	agent, err := find(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return want{}, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	if err != nil {
		return want{}, fmt.Errorf("finding the agent of %s %s: %w", kind, id, err)
	}
	return want{agent: agent, because: kind + " " + id}, nil
}

// e2bCreate reads an E2B create's metadata.agent_id.
func (rt *Router) e2bCreate(_ context.Context, _ *http.Request, body []byte) (want, error) {
	var in struct {
		Metadata map[string]string `json:"metadata"`
	}
	if json.Unmarshal(body, &in) != nil || in.Metadata["agent_id"] == "" {
		return want{}, nil
	}
	return want{agent: in.Metadata["agent_id"], named: true, because: "metadata.agent_id"}, nil
}

// byQuery reads ?agent_id=, else the agent of ?sandbox_id=.
func (rt *Router) byQuery(ctx context.Context, r *http.Request, _ []byte) (want, error) {
	q := r.URL.Query()
	if a := q.Get("agent_id"); a != "" {
		return want{agent: a, named: true, because: "query agent_id"}, nil
	}
	if sb := q.Get("sandbox_id"); sb != "" {
		return rt.objectAgent(ctx, "sandbox", sb, rt.cfg.Lookup.SandboxAgent)
	}
	return want{}, nil
}
