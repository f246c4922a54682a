package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/config"
)

// startHTTP serves a trivial handler with the daemon's server settings c.
func startHTTP(t *testing.T, c config.HTTP) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), c)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// closedByServer reports whether the server closes conn (reading until then),
// within the test's own generous bound.
func closedByServer(t *testing.T, conn net.Conn) bool {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestSlowClientsCutOff guards issue 8 #10 for the connection: a client that sends
// its headers slowly (part of them, then nothing) and one that keeps an idle
// connection open are disconnected, and oversized headers are refused.
func TestSlowClientsCutOff(t *testing.T) {
	c := config.DefaultHTTP()
	c.ReadHeaderTimeout, c.IdleTimeout = 200*time.Millisecond, 200*time.Millisecond
	addr := startHTTP(t, c)

	t.Run("slow headers", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v1/health HTTP/1.1\r\nHost: %s\r\nX-Slow: ", addr)
		if !closedByServer(t, conn) {
			t.Fatal("a client that stopped mid-headers was not cut off")
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := br.ReadByte(); err == nil || isTimeout(err) {
			t.Fatalf("an idle connection was kept open: %v", err)
		}
	})
	t.Run("huge headers", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n", addr, strings.Repeat("a", 2*c.MaxHeaderBytes))
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("headers of %d bytes: %d, want 431", 2*c.MaxHeaderBytes, resp.StatusCode)
		}
	})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestCheckExposure: a non-loopback address needs keys in force or --insecure-no-auth.
func TestCheckExposure(t *testing.T) {
	open := auth.NewCache(emptyKeys{}, false, nil)
	open.Refresh(context.Background())
	required := auth.NewCache(emptyKeys{}, true, nil)
	required.Refresh(context.Background())
	for _, c := range []struct {
		addr     string
		keys     *auth.Cache
		insecure bool
		ok       bool
	}{
		{"127.0.0.1:8080", open, false, true}, {"localhost:8080", open, false, true}, {"[::1]:8080", open, false, true},
		{"0.0.0.0:8080", open, false, false}, {"10.0.0.5:8080", open, false, false}, {":8080", open, false, false},
		{"0.0.0.0:8080", open, true, true}, {"0.0.0.0:8080", required, false, true},
	} {
		cfg := config.Default()
		cfg.Addr, cfg.Auth.InsecureNoAuth = c.addr, c.insecure
		err := checkExposure(cfg, c.keys)
		if (err == nil) != c.ok {
			t.Errorf("%s insecure=%v: %v, want ok=%v", c.addr, c.insecure, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure-no-auth") {
			t.Errorf("%s: the refusal does not say how to proceed: %v", c.addr, err)
		}
	}
}

type emptyKeys struct{}

func (emptyKeys) CreateKey(context.Context, auth.Key) error             { return nil }
func (emptyKeys) ListKeys(context.Context) ([]auth.Key, error)          { return nil, nil }
func (emptyKeys) RevokeKey(context.Context, string, time.Time) error    { return nil }
func (emptyKeys) TouchKeys(context.Context, map[string]time.Time) error { return nil }
