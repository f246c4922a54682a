package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/policy"
	"github.com/vmexec/vmexec/internal/redact"
)

// httpapiDir holds the HTTP server whose routes the document describes.
const httpapiDir = "../internal/httpapi"

// routePattern is the pattern of a documented route: a method, a space and a path, as
// in s.mux.HandleFunc("POST /v1/exec", ...) or s.mux.Handle("GET /metrics", ...).
var routePattern = regexp.MustCompile(`^([A-Z]+) (/\S*)$`)

// goFiles returns the non-test .go files of dir.
func goFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, "_test.go") })
	if len(files) == 0 {
		t.Fatalf("no .go files in %s", dir)
	}
	return files
}

// serverRoutes returns the "METHOD /path" routes registered by every non-test .go file
// of internal/httpapi: each call of a method named Handle or HandleFunc whose first
// argument is a string literal. The catch-all "/" has no method and is skipped; any
// other registration that is not a literal "METHOD /path" fails the test, so a new
// registration style cannot slip past it.
func serverRoutes(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	var routes []string
	for _, file := range goFiles(t, httpapiDir) {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") || len(call.Args) != 2 {
				return true
			}
			pos := fset.Position(call.Pos())
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				t.Errorf("%s: route pattern is not a string literal; the drift test cannot read it", pos)
				return true
			}
			pattern, err := strconv.Unquote(lit.Value)
			if err != nil {
				t.Fatalf("%s: %v", pos, err)
			}
			if pattern == "/" {
				return true // the catch-all answering 404
			}
			m := routePattern.FindStringSubmatch(pattern)
			if m == nil {
				t.Errorf("%s: route %q is not of the form \"METHOD /path\"", pos, pattern)
				return true
			}
			// "GET /{$}" is the exact path "/" (Go's mux anchors it with {$}).
			routes = append(routes, m[1]+" "+strings.TrimSuffix(m[2], "{$}"))
			return true
		})
	}
	if len(routes) < 10 {
		t.Fatalf("found only %d routes in %s (%v); has the registration style changed?", len(routes), httpapiDir, routes)
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
			t.Errorf("route %q is registered in internal/httpapi but missing from api/openapi.yaml", r)
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
		t.Errorf("api/openapi.yaml documents %q, which internal/httpapi does not register", r)
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

// stringConsts returns the values of the string constants declared in the non-test
// .go files of dir whose names start with prefix, sorted.
func stringConsts(t *testing.T, dir, prefix string) []string {
	t.Helper()
	fset := token.NewFileSet()
	var out []string
	for _, file := range goFiles(t, dir) {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, prefix) || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						continue
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, v)
				}
			}
		}
	}
	if len(out) < 2 {
		t.Fatalf("found only %v for constants %s* in %s; were they renamed?", out, prefix, dir)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIEnums checks the enums that mirror Go constants. The lists are read from
// the Go sources (constants by name prefix) or from the packages' own rule lists, so a
// constant added in Go without the document following fails here.
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
		list, ok := v.([]any)
		if !ok {
			t.Errorf("schema %s: %v is not an enum list", schema, path)
		}
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
		t.Helper()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s enum = %v, want %v", name, got, want)
		}
	}
	verdicts := stringConsts(t, ".", "Verdict")
	check("Verdict", enum("Verdict", "enum"), verdicts)
	check("Error.code", enum("Error", "properties", "code", "enum"), stringConsts(t, ".", "Code"))
	check("BlockStatus", enum("BlockStatus", "enum"), stringConsts(t, ".", "Block"))
	check("SnapshotKind", enum("SnapshotKind", "enum"), stringConsts(t, ".", "Snapshot"))
	check("FileInfo.type", enum("FileInfo", "properties", "type", "enum"), stringConsts(t, ".", "FileType"))
	check("LanguageList.languages", enum("LanguageList", "properties", "languages", "items", "enum"), sorted(Languages...))
	check("ExecResult.language", enum("ExecResult", "properties", "language", "enum"), sorted(Languages...))

	// The history's run statuses and verdicts (a verdict is "" while a run is running).
	check("RunStatus", enum("RunStatus", "enum"), stringConsts(t, "../internal/history", "Status"))
	check("Run.verdict", enum("Run", "properties", "verdict", "enum"), sorted(append(stringConsts(t, "../internal/history", "Verdict"), "")...))
	for _, v := range verdicts {
		if !slices.Contains(stringConsts(t, "../internal/history", "Verdict"), v) {
			t.Errorf("verdict %q of package api is not a verdict of the history", v)
		}
	}
	// The guest's verdicts reach the API unchanged (internal/sandbox copies them).
	for _, v := range stringConsts(t, "../internal/agentproto", "Verdict") {
		if !slices.Contains(verdicts, v) {
			t.Errorf("verdict %q of package agentproto is not a verdict of the api", v)
		}
	}

	var rules []string
	for _, r := range policy.Rules() {
		rules = append(rules, r.ID)
	}
	check("PolicyRule", enum("PolicyRule", "enum"), sorted(rules...))
	rules = nil
	for _, r := range redact.Rules() {
		rules = append(rules, r.ID)
	}
	check("RedactionRule", enum("RedactionRule", "enum"), sorted(rules...))

	// The history page size.
	if lim, ok := s.Components["parameters"]["Limit"]["schema"].(map[string]any); !ok {
		t.Error("parameter Limit has no schema")
	} else if lim["default"] != history.DefaultListLimit || lim["maximum"] != history.MaxListLimit {
		t.Errorf("parameter Limit: default %v, maximum %v; want %d, %d", lim["default"], lim["maximum"], history.DefaultListLimit, history.MaxListLimit)
	}
}

// TestOpenAPISchemasMatchTypes checks that the schemas that document a Go type of this
// package have exactly its JSON fields, and, for the types the server answers with,
// that the required fields are exactly those encoded always (not omitempty).
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	s, _ := loadSpec(t)
	schemas := s.Components["schemas"]
	type doc struct {
		v        any
		response bool // every field without omitempty is always present: required
	}
	types := map[string]doc{
		"Limits":                {Limits{}, false},
		"ExecRequest":           {ExecRequest{}, false},
		"ExecResult":            {ExecResult{}, true},
		"CreateSandboxRequest":  {CreateSandboxRequest{}, false},
		"Sandbox":               {Sandbox{}, true},
		"SandboxList":           {SandboxList{}, true},
		"Health":                {Health{}, true},
		"NodeInfo":              {NodeInfo{}, true},
		"AdoptRequest":          {AdoptRequest{}, false},
		"AdoptResult":           {AdoptResult{}, true},
		"Error":                 {Error{}, true},
		"ExecPolicy":            {ExecPolicy{}, false},
		"Snapshot":              {Snapshot{}, true},
		"SnapshotList":          {SnapshotList{}, true},
		"CreateSnapshotRequest": {CreateSnapshotRequest{}, false},
		"RollbackRequest":       {RollbackRequest{}, false},
		"RollbackResult":        {RollbackResult{}, true},
		"ForkRequest":           {ForkRequest{}, false},
		"Run":                   {Run{}, true},
		"RunList":               {RunList{}, true},
		"ParseExecuteRequest":   {ParseExecuteRequest{}, false},
		"CodeBlock":             {CodeBlock{}, true},
		"BlockResult":           {BlockResult{}, true},
		"ParseExecuteResult":    {ParseExecuteResult{}, true},
		"CompatExecRequest":     {CompatExecRequest{}, false},
		"CompatExecResponse":    {CompatExecResponse{}, true},
		"CompatCreateVM":        {CompatCreateVM{}, false},
		"CompatVM":              {CompatVM{}, true},
		"CompatVMList":          {CompatVMList{}, true},
		"OutputChunk":           {OutputChunk{}, true},
		"FileInfo":              {FileInfo{}, true},
		"FileList":              {FileList{}, true},
		"ChatRequest":           {ChatRequest{}, false},
		"ChatResult":            {ChatResult{}, true},
		"ChatStep":              {ChatStep{}, true},
		"ChatRun":               {ChatRun{}, true},
		"ChatDelta":             {ChatDelta{}, true},
		"ChatOutput":            {ChatOutput{}, true},
		"Conversation":          {Conversation{}, true},
		"ConversationMessage":   {ConversationMessage{}, true},
		"ChatToolCall":          {ChatToolCall{}, true},
		"CompatChatRequest":     {CompatChatRequest{}, false},
		"CompatChatResponse":    {CompatChatResponse{}, true},
	}
	for name, d := range types {
		schema, ok := schemas[name]
		if !ok {
			t.Errorf("schema %s is missing", name)
			continue
		}
		props, required := map[string]bool{}, map[string]bool{}
		collectSchema(t, schemas, schema, props, required)
		fields, always := jsonFields(reflect.TypeOf(d.v))
		if got, want := keys(props), keys(fields); got != want {
			t.Errorf("schema %s has properties [%s]; Go type %s has JSON fields [%s]", name, got, reflect.TypeOf(d.v), want)
		}
		if d.response {
			if got, want := keys(required), keys(always); got != want {
				t.Errorf("schema %s requires [%s]; Go type %s always encodes [%s]", name, got, reflect.TypeOf(d.v), want)
			}
		}
	}
}

// collectSchema gathers the properties and required names of schema, following $ref
// and allOf.
func collectSchema(t *testing.T, schemas map[string]map[string]any, schema map[string]any, props, required map[string]bool) {
	t.Helper()
	if ref, ok := schema["$ref"].(string); ok {
		target, ok := schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
		if !ok {
			t.Fatalf("$ref %s does not resolve", ref)
		}
		collectSchema(t, schemas, target, props, required)
	}
	if all, ok := schema["allOf"].([]any); ok {
		for _, sub := range all {
			collectSchema(t, schemas, sub.(map[string]any), props, required)
		}
	}
	if p, ok := schema["properties"].(map[string]any); ok {
		for k := range p {
			props[k] = true
		}
	}
	if r, ok := schema["required"].([]any); ok {
		for _, k := range r {
			required[k.(string)] = true
		}
	}
}

// jsonFields returns the JSON field names of struct type typ (embedded structs
// flattened), and those encoding/json always writes.
func jsonFields(typ reflect.Type) (all, always map[string]bool) {
	all, always = map[string]bool{}, map[string]bool{}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			a, w := jsonFields(f.Type)
			for k := range a {
				all[k] = true
			}
			for k := range w {
				always[k] = true
			}
			continue
		}
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		all[name] = true
		// omitempty never omits a struct value.
		if !slices.Contains(strings.Split(opts, ","), "omitempty") || f.Type.Kind() == reflect.Struct {
			always[name] = true
		}
	}
	return all, always
}

func keys(m map[string]bool) string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
