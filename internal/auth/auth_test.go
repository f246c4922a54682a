package auth

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestSecretShape: a new key is vmx_ + 40 hex digits, and the same secret is
// accepted with the e2b_ prefix; anything else is refused as a whole.
func TestSecretShape(t *testing.T) {
	secret, hash, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "vmx_") || len(secret) != 44 {
		t.Fatalf("secret %q: want vmx_ and 40 hex digits", secret)
	}
	hex := strings.TrimPrefix(secret, "vmx_")
	for _, c := range []struct {
		in string
		ok bool
	}{
		{secret, true}, {"e2b_" + hex, true},
		{"", false}, {hex, false}, {"vmx_" + hex[:39], false}, {"vmx_" + hex + "0", false},
		{"vmx_" + strings.ToUpper(hex), false}, {"VMX_" + hex, false}, {"vmx_" + hex[:39] + "g", false},
	} {
		h, err := HashSecret(c.in)
		if c.ok && (err != nil || h != hash) {
			t.Errorf("HashSecret(%q) = %q, %v; want the key's hash", c.in, h, err)
		}
		if !c.ok && err == nil {
			t.Errorf("HashSecret(%q) accepted", c.in)
		}
	}
	if s2, _, _ := Generate(); s2 == secret {
		t.Error("two keys are the same")
	}
	// The e2b_ form E2B's SDKs take is the same key.
	if e := E2BForm(secret); e != "e2b_"+hex {
		t.Errorf("E2BForm(%q) = %q", secret, e)
	} else if h, err := HashSecret(e); err != nil || h != hash {
		t.Errorf("the e2b_ form does not authenticate as the key: %q, %v", h, err)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"": 0, "10": 10, "10/s": 10, "120/m": 2, "3600/h": 1, "0.5": 0.5} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"x", "10/d", "-1", "NaN", "Inf/s"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}

func TestAllows(t *testing.T) {
	scoped := &Principal{Key: Key{Name: "a", Agents: []string{"team-a-*", "solo"}}}
	admin := &Principal{Key: Key{Name: "ops", Admin: true}}
	var open *Principal
	for _, c := range []struct {
		p     *Principal
		agent string
		want  bool
	}{
		{scoped, "team-a-1", true}, {scoped, "solo", true}, {scoped, "team-b-1", false}, {scoped, "solo2", false},
		{scoped, "", false}, // an ownerless thing is the operator's
		{admin, "team-b-1", true}, {admin, "", true}, {open, "x", true}, {open, "", true},
	} {
		if got := c.p.Allows(c.agent); got != c.want {
			t.Errorf("%s.Allows(%q) = %v, want %v", c.p.Name(), c.agent, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	bad := []Key{{Name: "", Admin: true}, {Name: "a b", Admin: true}, {Name: "x"}, {Name: "x", Admin: true, Agents: []string{"a"}},
		{Name: "x", Agents: []string{"[a"}}, {Name: "x", Admin: true, Rate: -1}, {Name: "x", Admin: true, MaxRuns: -1}}
	for _, k := range bad {
		if k.Validate() == nil {
			t.Errorf("%+v accepted", k)
		}
	}
	if err := (Key{Name: "team-a", Agents: []string{"team-a-*"}, Rate: 5}).Validate(); err != nil {
		t.Error(err)
	}
}

// TestTokenBucket: a burst of ceil(rate), then one request per 1/rate.
func TestTokenBucket(t *testing.T) {
	p := &Principal{Key: Key{Rate: 2}, state: &keyState{}}
	t0 := time.Unix(1000, 0)
	for i := range 2 {
		if ok, _ := p.Allow(t0); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := p.Allow(t0)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("past the burst: ok=%v wait=%v, want refused for 500ms", ok, wait)
	}
	if ok, _ := p.Allow(t0.Add(500 * time.Millisecond)); !ok {
		t.Fatal("refused after the wait")
	}
}

// memStore is a Store in memory, for the cache's own tests.
type memStore struct{ keys []Key }

func (m *memStore) CreateKey(ctx context.Context, k Key) error {
	m.keys = append(m.keys, k)
	return nil
}
func (m *memStore) ListKeys(ctx context.Context) ([]Key, error) {
	return append([]Key(nil), m.keys...), nil
}
func (m *memStore) RevokeKey(ctx context.Context, name string, at time.Time) error {
	for i := range m.keys {
		if m.keys[i].Name == name {
			m.keys[i].RevokedAt = at
		}
	}
	return nil
}
func (m *memStore) TouchKeys(ctx context.Context, used map[string]time.Time) error { return nil }

// TestCacheLifecycle: open with no keys; closed once one exists; a revoked key is
// refused after the next refresh, and the daemon stays closed.
func TestCacheLifecycle(t *testing.T) {
	st := &memStore{}
	c := NewCache(st, false, nil)
	if !c.Enforced() {
		t.Fatal("a cache that never loaded must fail closed")
	}
	ctx := context.Background()
	c.Refresh(ctx)
	if c.Enforced() {
		t.Fatal("no keys: enforced")
	}
	secret, hash, _ := Generate()
	st.CreateKey(ctx, Key{ID: "k1", Name: "a", Admin: true, Hash: hash})
	if _, err := c.Authenticate(secret); err == nil {
		t.Fatal("a key is accepted before the refresh that loads it")
	}
	c.Refresh(ctx)
	if p, err := c.Authenticate(secret); err != nil || p.Name() != "a" || !c.Enforced() {
		t.Fatalf("after refresh: %v, %v, enforced %v", p, err, c.Enforced())
	}
	st.RevokeKey(ctx, "a", time.Now())
	c.Refresh(ctx)
	if _, err := c.Authenticate(secret); err == nil {
		t.Fatal("a revoked key is accepted")
	}
	if !c.Enforced() {
		t.Fatal("revoking the last key opened the daemon")
	}
	if !NewCache(&memStore{}, true, nil).Enforced() {
		t.Fatal("required: not enforced")
	}
}
