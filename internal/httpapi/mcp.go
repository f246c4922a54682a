package httpapi

import (
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/mcpserver"
)

// The MCP server over streamable HTTP at /mcp (see package mcpserver for the tools).
// Its requests pass through ServeHTTP like every other route (Host and Origin checks,
// body bounds, and whatever else guards the API), a POST must be Content-Type
// application/json (415 as on every JSON route), and the SDK's own DNS-rebinding
// check stays on. The tools call the daemon's own API through the Go client over the
// address the request arrived on, with the caller's Authorization header, so a tool
// call can do exactly what its caller could do over the API.
//
// Agent: a session acts as the agent named by ?agent=NAME on the /mcp URL, else by the
// X-Vmexec-Agent header, else "mcp"; a call's agent_id argument overrides it.
//
// GET /mcp (the optional stream of server-initiated messages) answers 405: every
// message this server sends belongs to a request (progress, results), and an open
// GET stream would hold the daemon's shutdown for its whole budget.

const (
	mcpAgentHeader = "X-Vmexec-Agent"
	// mcpSelfHeader carries the address a request arrived on to its tool calls; set
	// here on every request, never taken from the client.
	mcpSelfHeader = "X-Vmexec-Mcp-Self"
	// mcpSessionIdle closes sessions no request used for this long.
	mcpSessionIdle = 30 * time.Minute
)

func (s *Server) mcpRoutes() {
	srv := mcpserver.New(mcpserver.Options{Version: s.version, Client: s.mcpClient, Agent: func(req *mcp.CallToolRequest) string {
		if req.Extra == nil {
			return ""
		}
		return req.Extra.Header.Get(mcpAgentHeader)
	}})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{SessionTimeout: mcpSessionIdle, Logger: s.log.With("component", "mcp")})
	serve := func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost { // the API's own 415, as decode answers it
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				writeError(w, r, s.log, fmt.Errorf("MCP messages are JSON: send Content-Type: application/json: %w", errMediaType))
				return
			}
		}
		r.Header.Del(mcpSelfHeader)
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && a != nil {
			scheme := "http"
			if r.TLS != nil {
				scheme = "https"
			}
			r.Header.Set(mcpSelfHeader, scheme+"://"+a.String())
		}
		if agent := r.URL.Query().Get("agent"); agent != "" {
			r.Header.Set(mcpAgentHeader, agent)
		}
		h.ServeHTTP(w, r)
	}
	s.mux.HandleFunc("POST /mcp", serve)
	s.mux.HandleFunc("DELETE /mcp", serve)
	s.mux.HandleFunc("GET /mcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "POST, DELETE")
		http.Error(w, "this MCP server sends no messages outside requests: no GET stream", http.StatusMethodNotAllowed)
	})
}

// mcpClient is the client one tool call uses: the daemon itself, at the address (and
// scheme) the call's HTTP request arrived on, with the caller's bearer token. Over
// HTTPS it trusts exactly the daemon's own certificate (Options.TLSCert): the call
// goes to the daemon's own socket, whatever names the certificate holds.
func (s *Server) mcpClient(req *mcp.CallToolRequest) (*client.Client, error) {
	var self string
	if req.Extra != nil {
		self = req.Extra.Header.Get(mcpSelfHeader)
	}
	if self == "" {
		return nil, errors.New("the request arrived on no network address the tools can call back")
	}
	c := &client.Client{BaseURL: self}
	if strings.HasPrefix(self, "https://") {
		c.HTTPClient = s.selfTLS
	}
	// The key the request was authenticated with, parsed as authentication parsed it.
	c.APIKey = auth.Bearer(req.Extra.Header)
	return c, nil
}
