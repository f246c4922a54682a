package httpapi

import (
	"net/http"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/auth"
)

// TestClusterRoutes guards the router's daemon routes: adopt needs an admin key (a
// key scoped to the very agent is refused), a request naming no agent is 400, a
// single host answers it 501 saying it is not in cluster mode, and the node route
// answers admins.
func TestClusterRoutes(t *testing.T) {
	e := newAuthEnv(t)
	admin := e.key(t, auth.Key{Name: "ops", Admin: true})
	scoped := e.key(t, auth.Key{Name: "team-a", Agents: []string{"team-a-*"}})
	cases := []struct {
		name, method, path, key, body string
		status                        int
		has                           string
	}{
		{"scoped key", "POST", "/v1/cluster/adopt", scoped, `{"agent_id":"team-a-1","epoch":2}`, http.StatusForbidden, "admin key"},
		{"no key", "POST", "/v1/cluster/adopt", "", `{"agent_id":"team-a-1","epoch":2}`, http.StatusUnauthorized, ""},
		{"single host", "POST", "/v1/cluster/adopt", admin, `{"agent_id":"a","epoch":2}`, http.StatusNotImplemented, "not in cluster mode"},
		{"no agent", "POST", "/v1/cluster/adopt", admin, `{"epoch":2}`, http.StatusBadRequest, "agent_id"},
		{"node", "GET", "/v1/cluster/node", admin, "", http.StatusOK, `"compat"`},
		{"node, scoped", "GET", "/v1/cluster/node", scoped, "", http.StatusForbidden, ""},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			rec := e.do(tt.method, tt.path, tt.key, tt.body)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.has) {
				t.Fatalf("%d %s, want %d with %q", rec.Code, rec.Body.String(), tt.status, tt.has)
			}
		})
	}
}
