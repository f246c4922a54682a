package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Mount points of the two surfaces under the daemon's root.
const (
	APIPrefix  = "/e2b/api"
	EnvdPrefix = "/e2b/envd"
)

// Ports the SDKs name in E2b-Sandbox-Port.
const (
	envdPort        = "49983"
	interpreterPort = "49999"
)

// EnvdVersion is the envd version reported to the SDKs: ≥ 0.5.7 lets them upload
// as octet-stream, ≥ 0.4.0 makes them send no default user.
const EnvdVersion = "0.5.7"

const (
	// DefaultTimeout is a sandbox's life when create names none (E2B's default).
	DefaultTimeout = 300 * time.Second
	// MaxTimeout bounds a timeout (E2B's longest, on its Pro plan).
	MaxTimeout = 24 * time.Hour
)

// Options configures a Handler.
type Options struct {
	Logger *slog.Logger
	// DataDir keeps the E2B state (e2b.json) across restarts; "" keeps it in memory.
	DataDir string
}

// Handler serves both surfaces for one sandbox service.
type Handler struct {
	svc    *sandbox.Service
	log    *slog.Logger
	reg    *registry
	interp interpreter // nil: the service has no interpreter contexts
	api    *http.ServeMux
	envd   *http.ServeMux

	mu    sync.Mutex
	procs map[string]map[uint32]*proc // sandbox id → pid → running command
	pid   uint32
}

// New returns the handler; Close stops its timers. A data dir that cannot hold the
// state is logged, and the state kept in memory.
func New(svc *sandbox.Service, opt Options) *Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	h := &Handler{svc: svc, log: opt.Logger.With("component", "e2b"), procs: map[string]map[uint32]*proc{}, pid: 1000}
	h.interp = serviceInterpreter(svc)
	var path string
	if opt.DataDir != "" {
		path = filepath.Join(opt.DataDir, "e2b.json")
	}
	var err error
	if h.reg, err = newRegistry(path, h.log, h.expire); err != nil {
		h.log.Error("E2B state kept in memory only: a restart loses the E2B sandboxes' timers and tokens", "err", err)
		h.reg, _ = newRegistry("", h.log, h.expire)
	}
	h.reg.start(func(id string) bool { _, err := svc.Get(id); return err == nil })
	h.apiRoutes()
	h.envdRoutes()
	return h
}

// Close stops the expiry timers (the records stay saved for the next start).
func (h *Handler) Close() { h.reg.close() }

// API serves the control plane; mount it at APIPrefix (the prefix is stripped here).
func (h *Handler) API() http.Handler { return http.StripPrefix(APIPrefix, h.api) }

// Envd serves the sandboxes' traffic; mount it at EnvdPrefix.
func (h *Handler) Envd() http.Handler {
	return http.StripPrefix(EnvdPrefix, http.HandlerFunc(h.serveEnvd))
}

// TokenOK reports whether r carries the access token of the sandbox it names
// (E2b-Sandbox-Id): the credential of envd requests, which carry no API key. The
// HTTP layer asks it before refusing such a request for want of a key.
func (h *Handler) TokenOK(r *http.Request) bool {
	id := r.Header.Get("E2b-Sandbox-Id")
	if id == "" {
		return false
	}
	return h.reg.tokenOK("envd", id, r.Header.Get("X-Access-Token")) ||
		h.reg.tokenOK("traffic", id, r.Header.Get("E2B-Traffic-Access-Token"))
}

// expire kills a sandbox whose time is up.
func (h *Handler) expire(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h.stopProcs(id)
	err := h.svc.Delete(ctx, id)
	if err != nil && !isNotFound(err) {
		h.log.Warn("killing an expired E2B sandbox", "id", id, "err", err)
		return // the record stays; a later kill or restart retries
	}
	h.reg.drop(id)
	h.log.Info("E2B sandbox expired and was killed", "id", id)
}

// owned returns id's record if the request's principal may use the sandbox: it
// exists in the service, and its owner is in the key's scope. A sandbox out of scope
// is not found, as if it did not exist.
func (h *Handler) owned(r *http.Request, id string) (record, error) {
	sb, err := h.svc.Get(id)
	if err != nil {
		h.reg.drop(id) // killed through /v1: forget it here too
		return record{}, err
	}
	if !auth.FromContext(r.Context()).Allows(sb.AgentID) {
		return record{}, fmt.Errorf("sandbox %s: %w", id, sandbox.ErrNotFound)
	}
	rec, ok := h.reg.get(id)
	if !ok {
		rec = record{ID: id, AgentID: sb.AgentID, TemplateID: "vmexec", StartedAt: sb.CreatedAt}
	}
	return rec, nil
}

// rollbackFor is the rollback choice of a run on this surface: E2B's (none) unless
// the agent's stored policy turns auto-rollback on explicitly.
func (h *Handler) rollbackFor(ctx context.Context, agentID string) bool {
	if agentID == "" {
		return false
	}
	_, own, err := h.svc.AgentPolicy(ctx, agentID)
	return err == nil && own.AutoRollbackOnFailure != nil && *own.AutoRollbackOnFailure
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// decodeJSON reads a JSON body (empty is {}), which must say application/json.
func decodeJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		return fmt.Errorf("request bodies are JSON (got Content-Type %s): %w", ct, errBadRequest)
	}
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil && err.Error() != "EOF" {
		return fmt.Errorf("malformed JSON body: %v: %w", err, errBadRequest)
	}
	return nil
}

func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(strings.ToLower(mt)) == "application/json"
}

func isNotFound(err error) bool { return err != nil && errors.Is(err, sandbox.ErrNotFound) }
