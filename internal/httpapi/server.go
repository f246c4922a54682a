// Package httpapi serves vmexec's HTTP API: the versioned /v1 routes (api/openapi.yaml)
// and the fcctl-web compatible routes existing clients call. Handlers are thin: they
// decode, call the sandbox service, and encode. Errors are turned into status codes in
// exactly one place, writeError.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/e2b"
	"github.com/vmexec/vmexec/internal/httperr"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// MaxBodyBytes bounds a request body. Code is bounded more tightly by the service.
const MaxBodyBytes = 4 << 20

// Server is the HTTP front of a sandbox service.
type Server struct {
	svc      *sandbox.Service
	agents   *agent.Runner
	log      *slog.Logger
	version  string
	mux      *http.ServeMux
	metrics  *metrics
	boundary boundary
	bodyWait time.Duration
	keys     *auth.Cache  // nil: no keys, every request acts as the operator
	selfTLS  *http.Client // calls to this server over HTTPS (MCP tool calls); see pinnedClient
	e2b      *e2b.Handler // the E2B-compatible surface (internal/e2b)
}

// Options configures a Server.
type Options struct {
	Version string
	Logger  *slog.Logger
	// Addr is the address the server listens on (as bound, with its real port). The
	// Host check accepts it and the loopback names with its port; empty accepts the
	// loopback names on any port.
	Addr string
	// AllowedHosts are more names accepted in Host: "name" (any port) or "name:port".
	AllowedHosts []string
	// AllowedOrigins are web origins (scheme://host[:port]) whose pages may call the
	// API; they get CORS headers. Pages of any other foreign origin are refused.
	AllowedOrigins []string
	// BodyTimeout bounds the time a request body may take to arrive (0: no bound).
	BodyTimeout time.Duration
	// Agents serves the agent routes (nil: they answer 404, no agents configured).
	Agents *agent.Runner
	// Keys are the API keys (see auth.go); nil serves without keys, as on loopback
	// before any key exists.
	Keys *auth.Cache
	// TLSCert is the DER certificate the server presents when it serves HTTPS; the
	// server's calls to itself (MCP tool calls) trust exactly it.
	TLSCert []byte
	// DataDir is the daemon's data dir, where the E2B surface keeps its state ("":
	// in memory).
	DataDir string
}

// New returns a Server for svc. It warns when opt.Addr is not a loopback address.
func New(svc *sandbox.Service, opt Options) *Server {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	s := &Server{svc: svc, log: opt.Logger.With("component", "http"), version: opt.Version, mux: http.NewServeMux(),
		boundary: newBoundary(opt.Addr, opt.AllowedHosts, opt.AllowedOrigins), bodyWait: opt.BodyTimeout, agents: opt.Agents, keys: opt.Keys}
	s.selfTLS = pinnedClient(opt.TLSCert)
	s.e2b = e2b.New(svc, e2b.Options{Logger: opt.Logger, DataDir: opt.DataDir})
	s.metrics = newMetrics()
	s.routes()
	if !opt.Keys.Enforced() {
		warnIfExposed(s.log, opt.Addr)
	}
	return s
}

func (s *Server) routes() {
	// fcctl-web compatible.
	s.mux.HandleFunc("GET /health", s.health)
	s.mux.HandleFunc("POST /api/llm/execute", s.compatExecute)
	s.mux.HandleFunc("POST /api/vms", s.compatCreateVM)
	s.mux.HandleFunc("GET /api/vms", s.compatListVMs)
	s.mux.HandleFunc("GET /api/vms/{id}", s.compatGetVM)
	s.mux.HandleFunc("DELETE /api/vms/{id}", s.compatDeleteVM)
	// Versioned.
	s.mux.HandleFunc("GET /v1/health", s.health)
	s.mux.HandleFunc("GET /v1/languages", s.languages)
	s.mux.HandleFunc("GET /v1/backends", s.listBackends)
	s.mux.HandleFunc("POST /v1/exec", s.exec)
	s.mux.HandleFunc("POST /v1/sandboxes", s.createSandbox)
	s.mux.HandleFunc("GET /v1/sandboxes", s.listSandboxes)
	s.mux.HandleFunc("GET /v1/sandboxes/{id}", s.getSandbox)
	s.mux.HandleFunc("DELETE /v1/sandboxes/{id}", s.deleteSandbox)
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/exec", s.execIn)
	s.txnRoutes()
	s.changeRoutes()
	s.replyRoutes()
	s.fileRoutes()
	s.contextRoutes()
	s.jsRoutes()
	s.chatRoutes()
	s.mcpRoutes()
	s.clusterRoutes()
	s.webRoutes()
	// The E2B surface (internal/e2b): the control plane and the sandboxes' traffic.
	s.mux.Handle("GET /e2b/api/", s.e2b.API())
	s.mux.Handle("POST /e2b/api/", s.e2bMedia(s.e2b.API(), "application/json"))
	s.mux.Handle("DELETE /e2b/api/", s.e2b.API())
	s.mux.Handle("GET /e2b/envd/", s.e2b.Envd())
	s.mux.Handle("POST /e2b/envd/", s.e2bMedia(s.e2b.Envd(), "application/json", "application/connect+json", "multipart/form-data", "application/octet-stream"))
	s.mux.Handle("DELETE /e2b/envd/", s.e2b.Envd())
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, fmt.Errorf("no route %s %s: %w", r.Method, r.URL.Path, errNoRoute))
	})
}

// ServeHTTP implements http.Handler with panic recovery and request logging.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			if !rec.wrote {
				writeJSON(rec, http.StatusInternalServerError, api.Error{Error: "internal error", Code: api.CodeInternal})
			}
		}
		s.metrics.requests.WithLabelValues(r.Method, strconv.Itoa(rec.status)).Inc()
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	}()
	listed, err := s.boundary.check(r)
	if err != nil {
		s.log.Warn("request refused", "method", r.Method, "path", r.URL.Path, "host", r.Host, "origin", r.Header.Get("Origin"))
		writeError(rec, r, s.log, err)
		return
	}
	if listed && cors(rec, r) {
		return
	}
	r, release, err := s.authenticate(r)
	if err != nil {
		// A key's refusal (scope, rate, quota) is logged with the key's name; a 401 is
		// not (the request log and the metrics count it). Secrets are never logged.
		if !errors.Is(err, errUnauthenticated) {
			s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		writeError(rec, r, s.log, err)
		return
	}
	defer release()
	if !isUpload(r) { // an upload has its own, larger, limit and its own stall timeout
		bodyDeadline(w, r, s.bodyWait)
		r.Body = http.MaxBytesReader(rec, r.Body, MaxBodyBytes)
	}
	s.mux.ServeHTTP(rec, r)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status, r.wrote = code, true
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (deadlines, Flush).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	runs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmexec_http_requests_total", Help: "HTTP requests by method and status.",
		}, []string{"method", "status"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmexec_runs_total", Help: "Runs by language and verdict.",
		}, []string{"language", "verdict"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vmexec_run_duration_seconds", Help: "Run duration inside the sandbox.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"language"}),
	}
	m.reg.MustRegister(m.requests, m.runs, m.duration, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(r *api.ExecResult) {
	m.runs.WithLabelValues(r.Language, r.Verdict).Inc()
	m.duration.WithLabelValues(r.Language).Observe(float64(r.DurationMS) / 1000)
}

var (
	errNoRoute     = errors.New("no such route")
	errBadJSON     = errors.New("malformed JSON")
	errBodyTooLong = errors.New("request body too large")
)

// handle decodes a JSON body into a fresh In (when In is not struct{}), calls f, and
// writes its result with status.
func handle[In, Out any](s *Server, status int, f func(r *http.Request, in In) (Out, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in In
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			if err := decode(r, &in); err != nil {
				writeError(w, r, s.log, err)
				return
			}
		}
		out, err := f(r, in)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		writeJSON(w, status, out)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError is the one place errors become HTTP statuses. Client errors carry their
// message; server errors are logged in full and answered with a generic one.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	authHeaders(w, err)
	status, body := errorBody(r, log, err)
	writeJSON(w, status, body)
}

// errorBody classifies err: its status and the body answered with it (see
// writeError). The HTTP layer's own errors are mapped here, the service's error
// classes by internal/httperr.
func errorBody(r *http.Request, log *slog.Logger, err error) (int, api.Error) {
	var status int
	var code string
	switch {
	case errors.Is(err, agent.ErrLLM): // the model's server failed: a bad gateway, with its message
		status, code = http.StatusBadGateway, api.CodeUnavailable
	case errors.Is(err, errUnauthenticated):
		status, code = http.StatusUnauthorized, api.CodeUnauthorized
	case errors.Is(err, errRateLimited):
		status, code = http.StatusTooManyRequests, api.CodeRateLimited
	case errors.Is(err, errQuota):
		status, code = http.StatusTooManyRequests, api.CodeQuota
	case errors.Is(err, errBadJSON):
		status, code = http.StatusBadRequest, api.CodeInvalidJSON
	case errors.Is(err, errBodyTooLong):
		status, code = http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.Is(err, errMediaType):
		status, code = http.StatusUnsupportedMediaType, api.CodeUnsupportedMediaType
	case errors.Is(err, errBodyTimeout):
		status, code = http.StatusRequestTimeout, api.CodeTimeout
	case errors.Is(err, errForeignOrigin), errors.Is(err, errForeignHost):
		status, code = http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, errNoRoute):
		status, code = http.StatusNotFound, api.CodeNotFound
	default:
		status, code = httperr.Classify(err)
	}
	return status, api.Error{Error: httperr.Message(log, r, err, status, code), Code: code}
}
