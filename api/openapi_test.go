package api

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// routePattern matches the routes registered in internal/httpapi/server.go, e.g.
// s.mux.HandleFunc("POST /v1/exec", ...) or s.mux.Handle("GET /metrics", ...). The
// catch-all "/" has no method and does not match.
var routePattern = regexp.MustCompile(`\.Handle(?:Func)?\("([A-Z]+) (/[^"]*)"`)

// serverRoutes returns the "METHOD /path" routes the HTTP server registers.
func serverRoutes(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("../internal/httpapi/server.go")
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, m := range routePattern.FindAllStringSubmatch(string(src), -1) {
		routes = append(routes, m[1]+" "+m[2])
	}
	if len(routes) < 10 {
		t.Fatalf("found only %d routes in server.go (%v); has the registration style changed?", len(routes), routes)
	}
	return routes
}

type spec struct {
	OpenAPI    string                               `yaml:"openapi"`
	Paths      map[string]map[string]yaml.Node      `yaml:"paths"`
	Components map[string]map[string]map[string]any `yaml:"components"`
}

var httpMethods = map[string]bool{
	"get": true, "put": true, "post": true, "delete": true, "options": true,
	"head": true, "patch": true, "trace": true,
}

func loadSpec(t *testing.T) (*spec, []byte) {
	t.Helper()
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var s spec
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(s.OpenAPI, "3.1") {
		t.Errorf("openapi = %q, want 3.1.x", s.OpenAPI)
	}
	return &s, b
}

// specRoutes returns the "METHOD /path" operations the document describes.
func specRoutes(s *spec) map[string]bool {
	out := map[string]bool{}
	for path, item := range s.Paths {
		for key := range item {
			if httpMethods[key] {
				out[strings.ToUpper(key)+" "+path] = true
			}
		}
	}
	return out
}

// TestOpenAPIMatchesServer guards against drift between api/openapi.yaml and the routes
// of internal/httpapi: every registered route is documented, and every documented
// operation is registered.
func TestOpenAPIMatchesServer(t *testing.T) {
	s, _ := loadSpec(t)
	documented := specRoutes(s)
	registered := map[string]bool{}
	for _, r := range serverRoutes(t) {
		registered[r] = true
		if !documented[r] {
			t.Errorf("route %q is registered in internal/httpapi/server.go but missing from api/openapi.yaml", r)
		}
	}
	var extra []string
	for r := range documented {
		if !registered[r] {
			extra = append(extra, r)
		}
	}
	sort.Strings(extra)
	for _, r := range extra {
		t.Errorf("api/openapi.yaml documents %q, which internal/httpapi/server.go does not register", r)
	}
}

// TestOpenAPIRefsResolve checks that every local $ref names a component that exists.
func TestOpenAPIRefsResolve(t *testing.T) {
	s, b := loadSpec(t)
	refs := regexp.MustCompile(`\$ref:\s*"?#/components/([A-Za-z]+)/([A-Za-z0-9_.-]+)"?`).FindAllStringSubmatch(string(b), -1)
	if len(refs) == 0 {
		t.Fatal("no $ref found")
	}
	for _, m := range refs {
		if _, ok := s.Components[m[1]][m[2]]; !ok {
			t.Errorf("$ref #/components/%s/%s does not resolve", m[1], m[2])
		}
	}
}

// TestOpenAPIEnums checks the enums that mirror Go constants of this package.
func TestOpenAPIEnums(t *testing.T) {
	s, _ := loadSpec(t)
	enum := func(schema string, path ...string) []string {
		var v any = s.Components["schemas"][schema]
		for _, p := range path {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("schema %s: no %v", schema, path)
			}
			v = m[p]
		}
		list, _ := v.([]any)
		out := make([]string, 0, len(list))
		for _, e := range list {
			out = append(out, e.(string))
		}
		sort.Strings(out)
		return out
	}
	sorted := func(xs ...string) []string {
		xs = append([]string(nil), xs...)
		sort.Strings(xs)
		return xs
	}
	check := func(name string, got, want []string) {
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s enum = %v, want %v", name, got, want)
		}
	}
	check("Verdict", enum("Verdict", "enum"), sorted(VerdictOK, VerdictNonzeroExit, VerdictTimeout, VerdictOutputLimit, VerdictMemoryLimit, VerdictKilled))
	check("Error.code", enum("Error", "properties", "code", "enum"), sorted(CodeBadRequest, CodeInvalidJSON, CodeTooLarge, CodeNotFound, CodeForbidden, CodeBusy, CodeConflict, CodeUnavailable, CodeInternal, CodeTimeout, CodeLimit))
	check("LanguageList.languages", enum("LanguageList", "properties", "languages", "items", "enum"), sorted(Languages...))
}
