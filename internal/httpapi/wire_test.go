package httpapi

import (
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// requestRoutes names, for every route that decodes a JSON body, the type it decodes
// into. TestRequestRoutesComplete checks that every request type is here.
var requestRoutes = []struct {
	method, path string
	typ          any
}{
	{"POST", "/v1/exec", api.ExecRequest{}},
	{"POST", "/v1/sandboxes/sb-x/exec", api.ExecRequest{}},
	{"POST", "/v1/sandboxes", api.CreateSandboxRequest{}},
	{"POST", "/v1/sandboxes/sb-x/snapshots", api.CreateSnapshotRequest{}},
	{"POST", "/v1/sandboxes/sb-x/rollback", api.RollbackRequest{}},
	{"POST", "/v1/snapshots/snap-x/fork", api.ForkRequest{}},
	{"PUT", "/v1/agents/a/policy", api.ExecPolicy{}},
	{"POST", "/v1/parse-execute", api.ParseExecuteRequest{}},
	{"POST", "/api/llm/execute", api.CompatExecRequest{}},
	{"POST", "/api/llm/parse-execute", compatParseRequest{}},
	{"POST", "/api/vms", api.CompatCreateVM{}},
	{"POST", "/api/vms/vm-x/snapshots", compatSnapshotRequest{}},
	{"POST", "/v1/agents/a/chat", api.ChatRequest{}},
	{"POST", "/chat", api.CompatChatRequest{}},
	{"POST", "/v1/sandboxes/sb-x/contexts", createContextRequest{}},
	{"POST", "/v1/sandboxes/sb-x/contexts/ctx_x/restart", agentRequest{}},
	{"POST", "/v1/sandboxes/sb-x/contexts/ctx_x/run", runCellRequest{}},
}

// testServer is the real handler over no service: requests refused on the wire never
// reach the service, so reaching it (a nil pointer, answered 500) shows a check missed.
func testServer(t *testing.T, opt Options) *Server {
	t.Helper()
	opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return New(nil, opt)
}

func jsonPost(method, path, body string) *http.Request {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Host = "127.0.0.1:8080"
	r.Header.Set("Content-Type", "application/json")
	return r
}

func serve(s *Server, r *http.Request) (int, api.Error) {
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, r)
	var e api.Error
	json.Unmarshal(rec.Body.Bytes(), &e)
	return rec.Code, e
}

// goTypeName matches what must never reach a client: Go type names and
// encoding/json's own wording.
var goTypeName = regexp.MustCompile(`\b(int|int64|int32|uint|uint64|float64|float32|bool|map\[|interface|struct|Go|json:|\[\]string)\b`)

// wireCase is one field of a request type, by JSON path, with the JSON type it takes.
type wireCase struct {
	path []string
	typ  reflect.Type
}

// fieldsOf lists every field of struct type t by JSON path, nested structs (and
// pointers to them) included, as encoding/json sees them.
func fieldsOf(t reflect.Type, prefix []string) []wireCase {
	var out []wireCase
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			out = append(out, fieldsOf(ft, prefix)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		path := append(slices.Clone(prefix), name)
		out = append(out, wireCase{path, f.Type})
		if ft.Kind() == reflect.Struct {
			out = append(out, fieldsOf(ft, path)...)
		}
	}
	return out
}

// nest writes value at path: {"a":{"b":value}}.
func nest(path []string, value string) string {
	s := value
	for i := len(path) - 1; i >= 0; i-- {
		k, _ := json.Marshal(path[i])
		s = "{" + string(k) + ":" + s + "}"
	}
	return s
}

// nestEmpty is nest without the last key: the parents only.
func nestEmpty(path []string) string {
	if len(path) == 1 {
		return "{}"
	}
	return nest(path[:len(path)-1], "{}")
}

// wrongValues are JSON values of a type t does not take, with the JSON type the
// error must name as expected (written here, not derived from the code under test).
func wrongValues(t reflect.Type) (values []string, expected string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return []string{`12`, `true`, `["a"]`, `{}`}, "a string"
	case reflect.Bool:
		return []string{`"yes"`, `1`, `[]`}, "a boolean"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint64:
		return []string{`"5"`, `1.5`, `true`, `{}`}, "an integer"
	case reflect.Float32, reflect.Float64:
		return []string{`"5"`, `false`, `[]`}, "a number"
	case reflect.Slice:
		vals := []string{`"x"`, `{}`, `3`}
		if e, _ := wrongValues(t.Elem()); len(e) > 0 {
			vals = append(vals, "["+e[0]+"]") // a wrong element
		}
		return vals, "an array"
	case reflect.Map:
		vals := []string{`"x"`, `[1]`, `7`}
		if e, _ := wrongValues(t.Elem()); len(e) > 0 {
			vals = append(vals, `{"k":`+e[0]+`}`)
		}
		return vals, "an object"
	case reflect.Struct:
		return []string{`"x"`, `[]`, `1`}, "an object"
	}
	return nil, "" // any JSON value is right
}

// TestEveryFieldNullAndWrongType guards the tolerant wire on every field of every
// request type (found by reflection, so a new field is covered without editing the
// test): null is the field absent, and a value of the wrong JSON type is a 400
// invalid_json naming the field by its JSON path and the JSON type expected, with
// no Go type name in the message, answered by the real handler before the service.
func TestEveryFieldNullAndWrongType(t *testing.T) {
	s := testServer(t, Options{})
	for _, rt := range requestRoutes {
		typ := reflect.TypeOf(rt.typ)
		cases := fieldsOf(typ, nil)
		if len(cases) == 0 {
			t.Fatalf("%s: no fields found", typ)
		}
		for _, c := range cases {
			field := strings.Join(c.path, ".")
			t.Run(rt.method+" "+rt.path+" "+field, func(t *testing.T) {
				// null: as if absent.
				got, want := reflect.New(typ), reflect.New(typ)
				if err := decode(jsonPost(rt.method, rt.path, nest(c.path, "null")), got.Interface()); err != nil {
					t.Fatalf("null refused: %v", err)
				}
				if err := decode(jsonPost(rt.method, rt.path, nestEmpty(c.path)), want.Interface()); err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want.Interface(), got.Interface(), cmp.AllowUnexported(compatParseRequest{})); diff != "" {
					t.Errorf("null is not absent (-absent +null):\n%s", diff)
				}
				// The wrong JSON type: a 400 naming the field, through the real handler.
				vals, expected := wrongValues(c.typ)
				for _, v := range vals {
					body := nest(c.path, v)
					status, e := serve(s, jsonPost(rt.method, rt.path, body))
					if status != http.StatusBadRequest || e.Code != api.CodeInvalidJSON {
						t.Errorf("%s: %d %s %q, want 400 invalid_json", body, status, e.Code, e.Error)
						continue
					}
					if !strings.Contains(e.Error, `field "`+field+`": expected `+expected) {
						t.Errorf("%s: message %q does not say field %q: expected %s", body, e.Error, field, expected)
					}
					if m := goTypeName.FindString(e.Error); m != "" || strings.Contains(e.Error, typ.Name()) {
						t.Errorf("%s: message %q names Go types (%q)", body, e.Error, m)
					}
				}
			})
		}
	}
}

// TestRequestRoutesComplete guards the table above: every request type declared in
// api/ and internal/httpapi (a struct type named ...Request, or api.CompatCreateVM)
// is decoded by some route listed there.
func TestRequestRoutesComplete(t *testing.T) {
	listed := map[string]bool{}
	for _, rt := range requestRoutes {
		listed[reflect.TypeOf(rt.typ).Name()] = true
	}
	fset := token.NewFileSet()
	for _, dir := range []string{"../../api", "."} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, file, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok {
					return true
				}
				if _, isStruct := ts.Type.(*ast.StructType); isStruct &&
					(strings.HasSuffix(ts.Name.Name, "Request") || ts.Name.Name == "CompatCreateVM") && !listed[ts.Name.Name] {
					t.Errorf("%s: request type %s is not in requestRoutes", fset.Position(ts.Pos()), ts.Name.Name)
				}
				return true
			})
		}
	}
}

// TestMetadataAnyObject guards the seed client's shape: metadata is any JSON object,
// with values of every JSON type, nested, or null; numbers keep their digits.
func TestMetadataAnyObject(t *testing.T) {
	body := `{"agent_id":"a","language":"python","code":"print(1)","vm_id":null,"requirements":[],
		"timeout_seconds":30,"working_dir":null,
		"metadata":{"execution_id":"exec-1796160161448-4c710fkkq","snapshot_id":null,"workflow_timestamp":1796160161448,
		"big":12345678901234567890,"nested":{"list":[1,"two",null,{"x":false}]}}}`
	for _, v := range []any{&api.CompatExecRequest{}, &api.ExecRequest{}} {
		if err := decode(jsonPost("POST", "/", body), v); err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		meta := reflect.ValueOf(v).Elem().FieldByName("Metadata").Interface().(map[string]any)
		b, _ := json.Marshal(meta)
		want := `{"big":12345678901234567890,"execution_id":"exec-1796160161448-4c710fkkq","nested":{"list":[1,"two",null,{"x":false}]},"snapshot_id":null,"workflow_timestamp":1796160161448}`
		if string(b) != want {
			t.Errorf("%T metadata = %s, want %s", v, b, want)
		}
	}
	if err := decode(jsonPost("POST", "/", `{"metadata":null}`), &api.ExecRequest{}); err != nil {
		t.Errorf("metadata null: %v", err)
	}
}

// TestMalformedJSON guards the message for a body that is not JSON: it says where,
// and nothing of Go.
func TestMalformedJSON(t *testing.T) {
	s := testServer(t, Options{})
	for _, c := range []struct{ body, where string }{
		{`{"agent_id":`, "line 1, column 13"},
		{"{\n  \"agent_id\": \"a\",\n  \"code\": x\n}", "line 3, column 11"},
		{`{"agent_id":"a"} {"more":1}`, "line 1, column 18"},
		{`{"agent_id":"a",}`, "line 1, column 17"},
		{`[1,2]`, "must be a JSON object, got an array"},
		{`"text"`, "must be a JSON object, got a string"},
	} {
		status, e := serve(s, jsonPost("POST", "/v1/exec", c.body))
		if status != 400 || e.Code != api.CodeInvalidJSON || !strings.Contains(e.Error, c.where) {
			t.Errorf("%q: %d %s %q, want 400 invalid_json saying %q", c.body, status, e.Code, e.Error, c.where)
		}
		if m := goTypeName.FindString(e.Error); m != "" || strings.Contains(e.Error, "ExecRequest") {
			t.Errorf("%q: message %q names Go internals", c.body, e.Error)
		}
	}
}

// TestBadRequestsRefused guards issue 8 #15 (the host-side part): requests that
// cannot be run as asked are 400 bad_request before anything runs, not runs with a
// verdict.
func TestBadRequestsRefused(t *testing.T) {
	s := testServer(t, Options{})
	exec := func(extra string) string { return `{"agent_id":"a","language":"bash","code":"true",` + extra + `}` }
	for _, c := range []struct{ path, body, want string }{
		{"/api/llm/execute", exec(`"timeout_seconds":5,"timeout_ms":5000`), "not both"},
		{"/api/llm/execute", exec(`"timeout_seconds":-1`), "timeout_seconds=-1: must not be negative"},
		{"/api/llm/execute", exec(`"timeout_ms":-5`), "timeout_ms=-5: must not be negative"},
		{"/v1/exec", exec(`"limits":{"timeout_ms":-1}`), "timeout_ms=-1: must not be negative"},
		{"/v1/exec", exec(`"limits":{"max_output_bytes":-1}`), "max_output_bytes=-1"},
		{"/v1/exec", exec(`"limits":{"memory_mb":-64}`), "memory_mb=-64"},
		{"/v1/exec", exec(`"limits":{"max_procs":-1}`), "max_procs=-1"},
		{"/v1/exec", exec(`"limits":{"max_file_bytes":-1}`), "max_file_bytes=-1"},
		{"/v1/sandboxes/sb-x/exec", exec(`"limits":{"timeout_ms":-1}`), "timeout_ms=-1"},
		{"/v1/parse-execute", `{"agent_id":"a","text":"x","limits":{"max_procs":-3}}`, "max_procs=-3"},
		{"/v1/sandboxes", `{"memory_mb":-1}`, "memory_mb=-1"},
		{"/v1/exec", exec(`"env":{"":"x"}`), "name is empty"},
		{"/v1/exec", exec(`"env":{"A=B":"x"}`), `"A=B" contains '='`},
		{"/v1/exec", exec(`"env":{"A\u0000B":"x"}`), "NUL"},
		{"/v1/exec", exec(`"env":{"A":"x\u0000y"}`), "NUL"},
		{"/v1/exec", exec(`"env":{"PATH":""}`), "PATH is empty"},
	} {
		status, e := serve(s, jsonPost("POST", c.path, c.body))
		if status != 400 || e.Code != api.CodeBadRequest || !strings.Contains(e.Error, c.want) {
			t.Errorf("%s %s: %d %s %q, want 400 bad_request saying %q", c.path, c.body, status, e.Code, e.Error, c.want)
		}
	}
	// What stays accepted: one timeout of either kind, and ordinary env.
	for _, body := range []string{exec(`"timeout_seconds":0.5`), exec(`"timeout_ms":500`), exec(`"timeout_seconds":null,"timeout_ms":500`)} {
		var req api.CompatExecRequest
		if err := decode(jsonPost("POST", "/", body), &req); err != nil {
			t.Errorf("%s: %v", body, err)
		}
		if got := req.Limits().TimeoutMS; got != 500 {
			t.Errorf("%s: timeout %d ms, want 500", body, got)
		}
	}
	var req api.ExecRequest
	if err := decode(jsonPost("POST", "/", exec(`"env":{"PATH":"/usr/bin","EMPTY":"","LANG":"C.UTF-8"}`)), &req); err != nil {
		t.Errorf("ordinary env refused: %v", err)
	}
}

// Guards the classification: wire errors are 400s of their own kind, validation
// failures are the service's ErrInvalid.
func TestDecodeErrorClasses(t *testing.T) {
	var v api.CompatExecRequest
	err := decode(jsonPost("POST", "/", `{"timeout_ms":-1}`), &v)
	if !errors.Is(err, sandbox.ErrInvalid) {
		t.Errorf("negative timeout: %v, want ErrInvalid", err)
	}
	if err := decode(jsonPost("POST", "/", `{"timeout_ms":"x"}`), &v); !errors.Is(err, errBadJSON) {
		t.Errorf("wrong type: %v, want errBadJSON", err)
	}
}

// FuzzDecode guards decode on arbitrary bodies: it never panics, and whatever it
// refuses is a client error (invalid_json, bad_request) whose message names no Go
// type.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{}`, `{"agent_id":"a","metadata":{"x":[1,{"y":null}]}}`, `{"limits":{"timeout_ms":"x"}}`,
		`{"env":{"A=B":""}}`, `[`, `{"history":{"max_snapshots":1.5}}`, "{\n\"code\": x}", `{"timeout_seconds":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&api.ExecRequest{}, &api.CompatExecRequest{}, &compatParseRequest{}} {
			err := decode(jsonPost("POST", "/", string(body)), v)
			if err == nil {
				continue
			}
			if !errors.Is(err, errBadJSON) && !errors.Is(err, sandbox.ErrInvalid) {
				t.Fatalf("%q: %v is not a client error", body, err)
			}
			if errors.Is(err, errBadJSON) && goTypeName.MatchString(err.Error()) {
				t.Fatalf("%q: message %q names Go types", body, err)
			}
		}
	})
}
