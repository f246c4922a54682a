package httpapi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/vmexec/vmexec/api"
)

// TestWebPageAttackRefused guards issue 8 #11, the exact attack: a page in a browser
// on the host posts code to the loopback daemon as a CORS simple request
// (Content-Type text/plain, its own Origin, and, rebound, its own Host). It is
// refused, and nothing ran: the handler has no service, so reaching it would be a 500.
func TestWebPageAttackRefused(t *testing.T) {
	s := testServer(t, Options{Addr: "127.0.0.1:8080"})
	body := `{"agent_id":"victim","language":"bash","code":"touch /home/user/pwned"}`
	for _, c := range []struct {
		name, ctype, origin, host string
		status                    int
	}{
		{"all three, as in the issue", "text/plain", "http://evil.example", "evil.example", 403},
		{"rebound Host alone", "application/json", "", "evil.example", 403},
		{"rebound Host with the port", "application/json", "", "evil.example:8080", 403},
		{"foreign Origin alone", "application/json", "http://evil.example", "127.0.0.1:8080", 403},
		{"null Origin (sandboxed frame)", "application/json", "null", "127.0.0.1:8080", 403},
		{"loopback page on another port", "application/json", "http://localhost:3000", "127.0.0.1:8080", 403},
		{"text/plain alone", "text/plain", "", "127.0.0.1:8080", 415},
		{"form alone", "application/x-www-form-urlencoded", "", "127.0.0.1:8080", 415},
		{"multipart alone", "multipart/form-data; boundary=x", "", "localhost:8080", 415},
		{"no Content-Type with a body", "", "", "127.0.0.1:8080", 415},
	} {
		r := httptest.NewRequest("POST", "/v1/exec", strings.NewReader(body))
		r.Host = c.host
		if c.ctype != "" {
			r.Header.Set("Content-Type", c.ctype)
		}
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		status, e := serve(s, r)
		if status != c.status || e.Error == "" {
			t.Errorf("%s: %d %q, want %d", c.name, status, e.Error, c.status)
		}
	}
	// The same request as the daemon's own clients send it reaches decoding (and,
	// with this malformed body, stops there).
	for _, ctype := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"} {
		r := jsonPost("POST", "/v1/exec", `{"agent_id":`)
		r.Header.Set("Content-Type", ctype)
		r.Header.Set("Origin", "http://127.0.0.1:8080") // the daemon's own page
		if status, e := serve(s, r); status != 400 || e.Code != api.CodeInvalidJSON {
			t.Errorf("Content-Type %q: %d %s %q, want 400 invalid_json", ctype, status, e.Code, e.Error)
		}
	}
}

// TestHostCheck guards the Host rule that defeats DNS rebinding: the loopback names
// and the listen address with the listen port, configured extra hosts, and, on an
// all-addresses bind, IP literals.
func TestHostCheck(t *testing.T) {
	for _, c := range []struct {
		addr  string
		extra []string
		ok    []string
		bad   []string
	}{
		{addr: "127.0.0.1:8080",
			ok:  []string{"127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.2:8080"},
			bad: []string{"evil.example", "evil.example:8080", "localhost:9090", "127.0.0.1", "localhost", "10.0.0.5:8080", "", "[::1]:80"}},
		{addr: "127.0.0.1:80", ok: []string{"localhost", "127.0.0.1", "[::1]"}, bad: []string{"evil.example"}},
		{addr: "127.0.0.1:0", ok: []string{"localhost:41234", "127.0.0.1:5"}, bad: []string{"evil.example:41234"}},
		{addr: "", ok: []string{"127.0.0.1:5000"}, bad: []string{"example.com"}},
		{addr: "192.168.7.9:8080", ok: []string{"192.168.7.9:8080", "localhost:8080"}, bad: []string{"192.168.7.10:8080", "box.lan:8080"}},
		{addr: "0.0.0.0:8080", extra: []string{"box.lan", "proxy.example:443"},
			ok:  []string{"10.1.2.3:8080", "[fe80::1]:8080", "box.lan", "box.lan:8080", "proxy.example:443", "localhost:8080"},
			bad: []string{"10.1.2.3:9999", "proxy.example", "proxy.example:80", "evil.example:8080"}},
		{addr: "[::]:8080", ok: []string{"[2001:db8::1]:8080"}, bad: []string{"rebind.example:8080"}},
	} {
		s := testServer(t, Options{Addr: c.addr, AllowedHosts: c.extra})
		for _, want := range []bool{true, false} {
			hosts := c.ok
			if !want {
				hosts = c.bad
			}
			for _, h := range hosts {
				r := httptest.NewRequest("GET", "/v1/languages", nil)
				r.Host = h
				status, _ := serve(s, r)
				if got := status == 200; got != want {
					t.Errorf("listen %q, extra %v: Host %q: %d, want accepted=%v", c.addr, c.extra, h, status, want)
				}
			}
		}
	}
}

// TestAllowedOrigins guards the configured exception: a listed origin's page may
// call the API (with CORS headers, and its preflight answered); others may not.
func TestAllowedOrigins(t *testing.T) {
	s := testServer(t, Options{Addr: "127.0.0.1:8080", AllowedOrigins: []string{"https://ui.example", "http://localhost:3000/"}})
	for _, c := range []struct {
		origin string
		ok     bool
	}{
		{"https://ui.example", true}, {"HTTPS://UI.EXAMPLE", true}, {"http://localhost:3000", true},
		{"http://ui.example", false}, {"https://ui.example:8443", false}, {"https://evil.example", false},
	} {
		r := httptest.NewRequest("GET", "/v1/languages", nil)
		r.Host = "127.0.0.1:8080"
		r.Header.Set("Origin", c.origin)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		if got := rec.Code == 200; got != c.ok {
			t.Errorf("Origin %q: %d, want accepted=%v", c.origin, rec.Code, c.ok)
		}
		if c.ok && rec.Header().Get("Access-Control-Allow-Origin") != c.origin {
			t.Errorf("Origin %q: no CORS header: %v", c.origin, rec.Header())
		}

		pre := httptest.NewRequest("OPTIONS", "/v1/exec", nil)
		pre.Host = "127.0.0.1:8080"
		pre.Header.Set("Origin", c.origin)
		pre.Header.Set("Access-Control-Request-Method", "POST")
		pre.Header.Set("Access-Control-Request-Headers", "content-type")
		rec = httptest.NewRecorder()
		s.ServeHTTP(rec, pre)
		granted := rec.Code == 204 && strings.Contains(rec.Header().Get("Access-Control-Allow-Headers"), "Content-Type")
		if granted != c.ok {
			t.Errorf("preflight from %q: %d %v, want granted=%v", c.origin, rec.Code, rec.Header(), c.ok)
		}
	}
}

// TestJSONRoutesRequireContentType guards the Content-Type rule on every JSON route
// of api/openapi.yaml (routes whose body is not JSON, such as file uploads, are
// exempt by their spec), and that a bodiless POST without a Content-Type, as the
// seed's client sends for rollback, is still accepted.
func TestJSONRoutesRequireContentType(t *testing.T) {
	raw, err := os.ReadFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type operation struct {
		RequestBody *struct {
			Content map[string]any `yaml:"content"`
		} `yaml:"requestBody"`
	}
	var spec struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"` // operations, and "parameters"
	}
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	s := testServer(t, Options{})
	param := regexp.MustCompile(`\{[^}]+\}`)
	n := 0
	for path, ops := range spec.Paths {
		for method, node := range ops {
			method = strings.ToUpper(method)
			if method != "POST" && method != "PUT" {
				continue
			}
			var op operation
			if err := node.Decode(&op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			if op.RequestBody != nil {
				if _, ok := op.RequestBody.Content["application/json"]; !ok {
					continue // a raw-body route
				}
			}
			n++
			p := param.ReplaceAllString(path, "x1")
			r := httptest.NewRequest(method, p, strings.NewReader(`{}`))
			r.Host = "127.0.0.1:8080"
			r.Header.Set("Content-Type", "text/plain")
			if status, e := serve(s, r); status != 415 || e.Code != api.CodeUnsupportedMediaType {
				t.Errorf("%s %s with text/plain: %d %s, want 415 unsupported_media_type", method, path, status, e.Code)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d JSON routes found in the spec", n)
	}
	var in struct{}
	if err := decode(httptest.NewRequest("POST", "/api/vms/x/rollback/y", nil), &in); err != nil {
		t.Errorf("bodiless POST without Content-Type: %v", err)
	}
}

// TestWarnsWhenNotLoopback guards the start-up warning of an exposed daemon.
func TestWarnsWhenNotLoopback(t *testing.T) {
	for addr, warn := range map[string]bool{"127.0.0.1:8080": false, "[::1]:8080": false, "localhost:8080": false,
		"0.0.0.0:8080": true, ":8080": true, "192.168.1.4:8080": true} {
		var buf bytes.Buffer
		New(nil, Options{Addr: addr, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
		if got := strings.Contains(buf.String(), "non-loopback"); got != warn {
			t.Errorf("addr %q: warned=%v, want %v (%s)", addr, got, warn, buf.String())
		}
	}
}

// TestSlowBodyCutOff guards issue 8 #10 for bodies: a client that sends its body
// slowly (here: part of it, then nothing) is answered 408 and disconnected instead
// of holding the connection open forever.
func TestSlowBodyCutOff(t *testing.T) {
	srv := httptest.NewServer(testServer(t, Options{BodyTimeout: 300 * time.Millisecond}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/exec HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agent_id\":", srv.Listener.Addr())
	conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // the test's own bound, far above the server's
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body: %d %s, want 408", resp.StatusCode, b)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("the connection stayed open after the cut")
	}
}

// TestBodyDeadlineLifted guards the other side of the body deadline: once the body
// has arrived, or when there is none, no deadline is left on the connection, so a
// long run (or a stream) is not cut and its context is not cancelled.
func TestBodyDeadlineLifted(t *testing.T) {
	const d = 100 * time.Millisecond
	canceled := make(chan bool, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bodyDeadline(w, r, d)
		io.ReadAll(r.Body)
		select { // a run that lasts well past the body deadline
		case <-r.Context().Done():
			canceled <- true
		case <-time.After(10 * d):
			canceled <- false
		}
		w.Write([]byte("done"))
	}))
	defer srv.Close()
	for _, body := range []string{`{"x":1}`, ""} {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(body))
		if body == "" {
			req.Body = http.NoBody
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if <-canceled || string(b) != "done" {
			t.Errorf("body %q: the request was cut after its body arrived (answer %q)", body, b)
		}
	}
}
