package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// headerTransport adds headers to every request.
type headerTransport struct{ h http.Header }

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.h {
		r.Header[k] = v
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPCallsBackItself: the tools call the daemon the request arrived at, whatever
// the client claims in the header that carries that address, and pass on the caller's
// bearer token.
func TestMCPCallsBackItself(t *testing.T) {
	var decoyHits atomic.Int32
	decoy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { decoyHits.Add(1) }))
	defer decoy.Close()
	var selfAuth atomic.Value
	inner := testServer(t, Options{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			selfAuth.Store(r.Header.Get("Authorization"))
		}
		inner.ServeHTTP(w, r)
	}))
	defer srv.Close()

	h := http.Header{}
	h.Set(mcpSelfHeader, strings.TrimPrefix(decoy.URL, "http://"))
	h.Set("Authorization", "Bearer k-123")
	c := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp",
		HTTPClient: &http.Client{Transport: headerTransport{h}}, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	// The test server has no sandbox service, so the call itself fails (500); what
	// matters is where it went.
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "list_sandboxes", Arguments: map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	if n := decoyHits.Load(); n != 0 {
		t.Errorf("the tool called the address the client put in %s (%d requests)", mcpSelfHeader, n)
	}
	if got, _ := selfAuth.Load().(string); got != "Bearer k-123" {
		t.Errorf("the tool's own request had Authorization %q, want the caller's", got)
	}
}
