package e2b

import (
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// The control plane: E2B's REST API for sandboxes, relative to APIPrefix.

func (h *Handler) apiRoutes() {
	m := http.NewServeMux()
	for _, p := range []string{"/v2/sandboxes", "/sandboxes"} { // e2b ≥ 2.51, ≤ 2.50
		m.HandleFunc("POST "+p, h.create)
		m.HandleFunc("GET "+p, h.list)
		m.HandleFunc("POST "+p+"/{id}/connect", h.connect)
	}
	m.HandleFunc("GET /sandboxes/{id}", h.info)
	m.HandleFunc("DELETE /sandboxes/{id}", h.kill)
	m.HandleFunc("POST /sandboxes/{id}/timeout", h.setTimeout)
	m.HandleFunc("POST /sandboxes/{id}/snapshots", h.snapshot)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.writeAPIError(w, r, fmt.Errorf("%s %s%s (pause, metrics, templates, volumes…): %w", r.Method, APIPrefix, r.URL.Path, errUnsupported))
	})
	h.api = m
}

// newSandbox is the create request (NewSandbox / NewSandboxV2); fields vmexec
// ignores (network, mcp, volumes) are not decoded.
type newSandbox struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int64            `json:"timeout"` // seconds
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
	AutoPause  *bool             `json:"autoPause"`
}

// sandboxJSON is E2B's Sandbox: the create and connect answer.
type sandboxJSON struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken,omitempty"`
	TrafficAccessToken string  `json:"trafficAccessToken,omitempty"`
	Domain             *string `json:"domain"`
}

// detailJSON is E2B's SandboxDetail (get) and ListedSandbox (list).
type detailJSON struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	ClientID    string            `json:"clientID"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int64             `json:"memoryMB"`
	DiskSizeMB  int64             `json:"diskSizeMB"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	EnvdVersion string            `json:"envdVersion"`
	State       string            `json:"state"`
	Metadata    map[string]string `json:"metadata"`
}

const clientID = "vmexec"

func (h *Handler) sandboxJSON(rec record) sandboxJSON {
	return sandboxJSON{SandboxID: rec.ID, TemplateID: rec.TemplateID, ClientID: clientID, EnvdVersion: EnvdVersion,
		EnvdAccessToken: h.reg.token("envd", rec.ID), TrafficAccessToken: h.reg.token("traffic", rec.ID)}
}

func detail(rec record, sb api.Sandbox) detailJSON {
	state := "running"
	if sb.Status == "suspended" {
		state = "paused"
	}
	md := rec.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return detailJSON{SandboxID: rec.ID, TemplateID: rec.TemplateID, ClientID: clientID, CPUCount: runtime.NumCPU(),
		MemoryMB: sb.MemoryMB, StartedAt: rec.StartedAt.UTC(), EndAt: rec.EndAt.UTC(), EnvdVersion: EnvdVersion, State: state, Metadata: md}
}

// timeoutOf turns a request's timeout (seconds; nil for none) into a duration.
func timeoutOf(sec *int64, def time.Duration) (time.Duration, error) {
	if sec == nil {
		return def, nil
	}
	d := time.Duration(*sec) * time.Second
	if *sec < 0 || d > MaxTimeout {
		return 0, fmt.Errorf("timeout %d s: want 0 to %d s: %w", *sec, int64(MaxTimeout/time.Second), errBadRequest)
	}
	return d, nil
}

// create starts a sandbox through the service and answers once it is ready, so the
// SDK's next call finds it running.
func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	var in newSandbox
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	life, err := timeoutOf(in.Timeout, DefaultTimeout)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	if in.AutoPause != nil && *in.AutoPause {
		h.writeAPIError(w, r, fmt.Errorf("autoPause (onTimeout: 'pause'): %w; a sandbox is killed when its timeout passes", errUnsupported))
		return
	}
	agent := in.Metadata["agent_id"]
	if p := auth.FromContext(r.Context()); p.Scoped() && !p.Allows(agent) {
		h.writeAPIError(w, r, fmt.Errorf("key %s acts only as agents %v: set metadata.agent_id to one of them: %w", p.Name(), p.Agents, sandbox.ErrForbidden))
		return
	}
	if in.TemplateID == "" {
		in.TemplateID = "base"
	}
	var sb api.Sandbox
	if sn, serr := h.svc.GetSnapshot(r.Context(), in.TemplateID, agent); serr == nil {
		// A snapshot's id as the template: a fork, starting from the snapshot's whole
		// state (memory and processes too), as E2B starts a sandbox from a snapshot.
		sb, err = h.svc.Fork(r.Context(), sn.ID, api.ForkRequest{AgentID: agent})
	} else {
		sb, err = h.svc.Create(r.Context(), api.CreateSandboxRequest{AgentID: agent})
	}
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	now := time.Now().UTC()
	rec := record{ID: sb.ID, AgentID: agent, TemplateID: in.TemplateID, Metadata: in.Metadata, EnvVars: in.EnvVars, StartedAt: now, EndAt: now.Add(life)}
	h.reg.put(rec)
	h.log.Info("E2B sandbox created", "id", sb.ID, "template", in.TemplateID, "agent", agent, "timeout", life)
	writeJSON(w, http.StatusCreated, h.sandboxJSON(rec))
}

// connect returns a running sandbox's connection details (its tokens), extending
// its life to timeout seconds from now when that is later. A sandbox made through
// /v1 is adopted: it gets a record (and a timer only if timeout is given).
func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	life, err := timeoutOf(in.Timeout, 0)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	id := r.PathValue("id")
	rec, err := h.owned(r, id)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	now := time.Now().UTC()
	if _, known := h.reg.get(id); !known {
		rec.EndAt = now.Add(MaxTimeout)
		if in.Timeout != nil {
			rec.EndAt = now.Add(life)
		}
		h.reg.put(rec)
	} else if in.Timeout != nil {
		h.reg.setEnd(id, now.Add(life), true)
	}
	rec, _ = h.reg.get(id)
	writeJSON(w, http.StatusCreated, h.sandboxJSON(rec))
}

func (h *Handler) info(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, known := h.reg.get(id); !known {
		h.writeAPIError(w, r, fmt.Errorf("sandbox %s: %w", id, sandbox.ErrNotFound))
		return
	}
	rec, err := h.owned(r, id)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	sb, err := h.svc.Get(id)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, detail(rec, sb))
}

// list answers the E2B sandboxes (created or adopted here) in the key's scope, in
// one page; ?metadata=k=v&… filters them, ?state=paused alone answers none running.
func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want, err := parseMetadataQuery(q.Get("metadata"))
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	states := map[string]bool{}
	for _, s := range q["state"] {
		states[s] = true
	}
	limit := 0
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			h.writeAPIError(w, r, fmt.Errorf("limit %q: %w", l, errBadRequest))
			return
		}
	}
	out := []detailJSON{}
	for _, rec := range h.reg.all() {
		sb, err := h.svc.Get(rec.ID)
		if err != nil || !auth.FromContext(r.Context()).Allows(sb.AgentID) || !matches(rec.Metadata, want) {
			continue
		}
		d := detail(rec, sb)
		if len(states) > 0 && !states[d.State] {
			continue
		}
		if limit > 0 && len(out) == limit {
			break
		}
		out = append(out, d)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := h.owned(r, id); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	h.stopProcs(id)
	if err := h.svc.Delete(r.Context(), id); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	h.reg.drop(id)
	w.WriteHeader(http.StatusNoContent)
}

// setTimeout moves the sandbox's end of life to timeout seconds from now (sooner or
// later than before).
func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	if in.Timeout == nil {
		h.writeAPIError(w, r, fmt.Errorf("timeout (seconds) is required: %w", errBadRequest))
		return
	}
	life, err := timeoutOf(in.Timeout, 0)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	id := r.PathValue("id")
	rec, err := h.owned(r, id)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	if !h.reg.setEnd(id, time.Now().UTC().Add(life), false) {
		rec.EndAt = time.Now().UTC().Add(life)
		h.reg.put(rec)
	}
	w.WriteHeader(http.StatusNoContent)
}

// parseMetadataQuery reads the list's metadata filter: "k=v&k2=v2", keys and values
// URL-encoded (as the SDK sends it).
func parseMetadataQuery(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(s)
	if err != nil {
		return nil, fmt.Errorf("metadata filter %q: %w", s, errBadRequest)
	}
	out := map[string]string{}
	for k, v := range q {
		out[k] = v[0]
	}
	return out, nil
}

// matches reports whether md has every key of want with its value.
func matches(md, want map[string]string) bool {
	for k, v := range want {
		if md[k] != v {
			return false
		}
	}
	return true
}

// snapshot takes a snapshot of the sandbox (vmexec's manual snapshot: its whole
// state); Sandbox.create(snapshotID) forks it, and /v1 can roll back to it.
func (h *Handler) snapshot(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	rec, err := h.owned(r, r.PathValue("id"))
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	sn, err := h.svc.CreateSnapshot(r.Context(), rec.ID, api.CreateSnapshotRequest{AgentID: rec.AgentID, Name: in.Name, Description: "E2B createSnapshot"})
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	names := []string{sn.ID}
	if in.Name != "" {
		names = append(names, in.Name)
	}
	writeJSON(w, http.StatusCreated, map[string]any{"snapshotID": sn.ID, "names": names})
}
