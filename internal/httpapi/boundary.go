package httpapi

import (
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// The boundary of a daemon bound to loopback. Binding to 127.0.0.1 keeps other
// machines out, but not a web page open in a browser on the same host: the page can
// send requests to 127.0.0.1 (a CORS "simple request" needs no permission), and with
// DNS rebinding (its own name resolving to 127.0.0.1) it can read the answers too.
// So every request passes three checks before it reaches a route:
//
//   - Host must be one of the daemon's own names: a loopback name (localhost,
//     127.0.0.1, [::1]) with the listen port, the listen address itself, any IP
//     address with the listen port when the daemon listens on all addresses (an IP
//     literal cannot be rebound), or a configured extra host (allowed_hosts; "name"
//     for any port, "name:port" for one). A rebinding page's Host is its own name, so
//     it is refused (403).
//   - Origin, when a browser sends one, must be the daemon's own (its host passes the
//     Host check) or listed in allowed_origins; any other is refused (403). Listed
//     origins get CORS headers, and their preflight requests are answered.
//   - JSON bodies must say Content-Type application/json (decode), which a page can
//     only send after a preflight the daemon does not grant to foreign origins. The
//     E2B surface's POSTs must say one of the types the E2B SDKs send (e2bMedia).
//
// None of this is authentication; API keys are (auth.go). Without keys, on a
// non-loopback address anyone who can reach the port could run code: `serve` refuses
// that unless told --insecure-no-auth, and then warns at start.

var (
	errForeignOrigin = errors.New("foreign origin")
	errForeignHost   = errors.New("host not allowed")
)

// boundary holds the Host and Origin rules of one server.
type boundary struct {
	port    string          // the listen port; "" accepts loopback names on any port
	listen  string          // the listen host, lowercased, if it is a specific one
	anyIP   bool            // listening on all addresses: any IP literal with port
	hosts   map[string]bool // allowed_hosts, lowercased: "name" or "name:port"
	origins map[string]bool // allowed_origins, normalized by originKey
}

func newBoundary(addr string, hosts, origins []string) boundary {
	b := boundary{hosts: map[string]bool{}, origins: map[string]bool{}}
	if h, p, err := net.SplitHostPort(addr); err == nil {
		if p != "0" {
			b.port = p
		}
		h = strings.ToLower(h)
		if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
			b.anyIP = true
		} else {
			b.listen = h
		}
	}
	for _, h := range hosts {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			b.hosts[h] = true
		}
	}
	for _, o := range origins {
		if k, ok := originKey(o); ok {
			b.origins[k] = true
		}
	}
	return b
}

// splitHost splits a Host value into a lowercased host (IPv6 without brackets) and
// a port ("" when absent).
func splitHost(hostport string) (host, port string) {
	hostport = strings.ToLower(hostport)
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
}

// hostOK reports whether a Host value (or an Origin's host) names this daemon.
// defPort is the port a value without one means (80 for a Host header).
func (b boundary) hostOK(hostport, defPort string) bool {
	if b.hosts[strings.ToLower(hostport)] {
		return true
	}
	host, port := splitHost(hostport)
	if host == "" {
		return false
	}
	if b.hosts[host] {
		return true
	}
	if port == "" {
		port = defPort
	}
	if b.port != "" && port != b.port {
		return false
	}
	ip := net.ParseIP(host)
	switch {
	case host == "localhost", ip != nil && ip.IsLoopback():
		return true
	case b.anyIP && ip != nil:
		return true
	case b.listen != "" && host == b.listen:
		return true
	}
	return false
}

// originKey normalizes an origin to scheme://host[:port], lowercased.
func originKey(o string) (string, bool) {
	u, err := url.Parse(strings.TrimSpace(o))
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", false
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), true
}

// check applies the Host and Origin rules to r. listed reports a listed foreign
// origin, which gets CORS headers.
func (b boundary) check(r *http.Request) (listed bool, err error) {
	if !b.hostOK(r.Host, "80") {
		return false, fmt.Errorf("Host %q is not one of this server's names (localhost, 127.0.0.1, [::1] or its listen address; add others with allowed_hosts): %w", r.Host, errForeignHost)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false, nil
	}
	k, ok := originKey(origin)
	if ok && b.origins[k] {
		return true, nil
	}
	if ok {
		u, _ := url.Parse(k)
		def := "80"
		if u.Scheme == "https" {
			def = "443"
		}
		if (u.Scheme == "http" || u.Scheme == "https") && b.hostOK(u.Host, def) {
			return false, nil
		}
	}
	return false, fmt.Errorf("requests from the web page at %q are refused (allow its origin with allowed_origins): %w", origin, errForeignOrigin)
}

// cors answers for a listed foreign origin: CORS headers on every response, and the
// whole answer to a preflight request (reported by done).
func cors(w http.ResponseWriter, r *http.Request) (done bool) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
	h.Add("Vary", "Origin")
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
	h.Set("Access-Control-Allow-Headers", "Content-Type, Accept, Authorization, Last-Event-ID")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}

// warnIfExposed logs a warning when addr is not a loopback address.
func warnIfExposed(log *slog.Logger, addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || addr == "" {
		return
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return
	}
	log.Warn("listening on a non-loopback address: anyone who can reach it can run code (there is no authentication); "+
		"bind to 127.0.0.1 or put an authenticating proxy in front, and list the names clients use in allowed_hosts", "addr", addr)
}

// bodyDeadline bounds the time a request's body may take to arrive: a client that
// sends it slowly (or stops) is cut off with 408 instead of holding the connection.
// The deadline covers only the body: net/http lifts it when the body has been read
// to its end (it then watches the connection for a client that leaves), so a long
// run or a stream after the body is not cut. Bodiless requests get none: their
// connection is watched from the start, and a deadline firing there would cancel
// the request. A route that reads a large body itself (file uploads) may extend the
// deadline with http.ResponseController.
func bodyDeadline(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d <= 0 || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return
	}
	// An error means no real connection (tests' recorders): nothing to bound.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
}

// e2bMedia guards the E2B surface's POST routes as decode guards vmexec's JSON ones:
// the body's Content-Type must be one of types (415 otherwise); a bodiless request
// may say none.
func (s *Server) e2bMedia(h http.Handler, types ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		mt, _, err := mime.ParseMediaType(ct)
		if ct == "" && r.ContentLength == 0 || err == nil && slices.Contains(types, mt) {
			h.ServeHTTP(w, r)
			return
		}
		writeError(w, r, s.log, fmt.Errorf("this route takes %s bodies (got Content-Type %q): %w", strings.Join(types, ", "), ct, errMediaType))
	})
}
