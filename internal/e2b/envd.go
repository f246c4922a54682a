package e2b

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// envd: the sandbox's own API as the SDKs call it through E2B_SANDBOX_URL, one base
// URL for every sandbox, the sandbox named by the E2b-Sandbox-Id header.

type recKey struct{}

const startPath = "/process.Process/Start"

// streamPaths are the server-streaming RPCs: their errors, even "unimplemented",
// must be a 200 stream with the error in its end message for the SDK to read them.
var streamPaths = map[string]bool{startPath: true, "/process.Process/Connect": true, "/filesystem.Filesystem/WatchDir": true}

// recOf is the record of the sandbox the request is about (set by serveEnvd).
func recOf(r *http.Request) record { return r.Context().Value(recKey{}).(record) }

func (h *Handler) envdRoutes() {
	m := http.NewServeMux()
	m.HandleFunc("POST "+startPath, h.processStart)
	m.HandleFunc("POST /process.Process/SendSignal", h.processSignal)
	m.HandleFunc("POST /process.Process/List", h.processList)
	m.HandleFunc("POST /filesystem.Filesystem/ListDir", h.listDir)
	m.HandleFunc("POST /filesystem.Filesystem/Stat", h.stat)
	m.HandleFunc("POST /filesystem.Filesystem/MakeDir", h.makeDir)
	m.HandleFunc("POST /filesystem.Filesystem/Remove", h.remove)
	m.HandleFunc("POST /filesystem.Filesystem/Move", h.move)
	m.HandleFunc("POST /files", h.upload)
	m.HandleFunc("GET /files", h.download)
	m.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	m.HandleFunc("POST /execute", h.execute)
	m.HandleFunc("POST /contexts", h.createContext)
	m.HandleFunc("GET /contexts", h.listContexts)
	m.HandleFunc("DELETE /contexts/{id}", h.deleteContext)
	m.HandleFunc("POST /contexts/{id}/restart", h.restartContext)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		err := fmt.Errorf("%s %s (PTY, watchers, stdin, …): %w", r.Method, r.URL.Path, errUnsupported)
		if streamPaths[r.URL.Path] {
			startStream(w).end(h.streamError(r, err))
			return
		}
		if isRPC(r.URL.Path) {
			h.writeRPCError(w, r, err)
			return
		}
		h.writeAPIError(w, r, err)
	})
	h.envd = m
}

// isRPC reports a Connect RPC path (/package.Service/Method).
func isRPC(p string) bool {
	svc, _, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	return ok && strings.Contains(svc, ".")
}

// interpreterPaths are served only on the interpreter's port, the rest only on envd's.
func interpreterPath(p string) bool {
	return p == "/execute" || p == "/contexts" || strings.HasPrefix(p, "/contexts/")
}

// serveEnvd checks who may reach the sandbox the request names and hands it on.
// A request with a valid API key (checked by the HTTP layer) may reach any sandbox
// in the key's scope; one without must carry the sandbox's token.
func (h *Handler) serveEnvd(w http.ResponseWriter, r *http.Request) {
	fail := h.writeAPIError
	switch {
	case streamPaths[r.URL.Path]: // a stream's errors go in its end message, after a 200
		fail = func(w http.ResponseWriter, r *http.Request, err error) { startStream(w).end(h.streamError(r, err)) }
	case isRPC(r.URL.Path):
		fail = h.writeRPCError
	}
	id := r.Header.Get("E2b-Sandbox-Id")
	if id == "" {
		fail(w, r, fmt.Errorf("the E2b-Sandbox-Id header names the sandbox (set E2B_SANDBOX_URL to this URL and use an E2B SDK ≥ 2.7): %w", errBadRequest))
		return
	}
	if auth.FromContext(r.Context()) == nil && !h.TokenOK(r) {
		fail(w, r, fmt.Errorf("sandbox %s: send its envdAccessToken as X-Access-Token: %w", id, errUnauthenticated))
		return
	}
	port := r.Header.Get("E2b-Sandbox-Port")
	if port == "" {
		port = envdPort
	}
	if (port == interpreterPort) != interpreterPath(r.URL.Path) || port != envdPort && port != interpreterPort {
		fail(w, r, fmt.Errorf("port %s serves no %s (envd is 49983, the code interpreter 49999; other ports are not reachable): %w", port, r.URL.Path, errNoRoute))
		return
	}
	if err := userOK(r); err != nil {
		fail(w, r, err)
		return
	}
	rec, err := h.owned(r, id)
	if r.URL.Path == "/health" && errors.Is(err, sandbox.ErrNotFound) {
		w.WriteHeader(http.StatusBadGateway) // envd's "not running": the SDK's isRunning() is false
		return
	}
	if err != nil {
		fail(w, r, err)
		return
	}
	h.envd.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), recKey{}, rec)))
}

// sandboxUser is the one user commands and files act as (uid 1000, home /home/user).
const sandboxUser = "user"

// userOK refuses a request that asks to act as another user: the SDKs name one with
// `Authorization: Basic base64("<user>:")` on RPCs and ?username= on /files.
func userOK(r *http.Request) error {
	u := r.URL.Query().Get("username")
	if v := r.Header.Get("Authorization"); strings.HasPrefix(v, "Basic ") {
		if b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(v, "Basic ")); err == nil {
			u, _, _ = strings.Cut(string(b), ":")
		}
	}
	if u != "" && u != sandboxUser {
		return fmt.Errorf("user %q: commands and files act as %q (uid 1000) only: %w", u, sandboxUser, errUnsupported)
	}
	return nil
}
