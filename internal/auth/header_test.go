package auth

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestPresented guards how a request presents its key: "Authorization: Bearer KEY"
// (any case of the scheme, spaces trimmed), else X-API-KEY only where the E2B SDKs
// send it; any other Authorization scheme is no key.
func TestPresented(t *testing.T) {
	for _, c := range []struct {
		auth, xAPIKey string
		e2b           bool
		want          string
	}{
		{"Bearer vmx_1", "", false, "vmx_1"},
		{"bearer  vmx_1 ", "", false, "vmx_1"},
		{"Basic dXNlcjpwdw==", "", false, ""},
		{"Bearer", "", false, ""},
		{"", "e2b_1", false, ""},
		{"", " e2b_1", true, "e2b_1"},
		{"Bearer vmx_1", "e2b_1", true, "vmx_1"},
	} {
		h := http.Header{}
		if c.auth != "" {
			h.Set("Authorization", c.auth)
		}
		if c.xAPIKey != "" {
			h.Set(HeaderXAPIKey, c.xAPIKey)
		}
		if got := Presented(h, c.e2b); got != c.want {
			t.Errorf("Authorization %q, X-API-KEY %q, e2b %v: got %q, want %q", c.auth, c.xAPIKey, c.e2b, got, c.want)
		}
	}
}

// touchStore records the keys' use the cache flushes.
type touchStore struct {
	memStore
	touched map[string]time.Time
}

func (s *touchStore) TouchKeys(ctx context.Context, used map[string]time.Time) error {
	for id, at := range used {
		s.touched[id] = at
	}
	return nil
}

// TestStart guards the background refresh's life: a key created since the last
// refresh is loaded by it, and stop returns only after the last flush of the keys'
// use.
func TestStart(t *testing.T) {
	st := &touchStore{touched: map[string]time.Time{}}
	c := NewCache(st, false, nil)
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	secret, hash, _ := Generate()
	st.CreateKey(ctx, Key{ID: "k1", Name: "a", Admin: true, Hash: hash})
	stop := c.Start()
	deadline := time.Now().Add(5 * RefreshEvery)
	for {
		if p, err := c.Authenticate(secret); err == nil {
			p.Allow(time.Now()) // a use, to be flushed
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a key created after Start was never loaded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if st.touched["k1"].IsZero() {
		t.Errorf("stop returned without flushing the key's use: %v", st.touched)
	}
}
