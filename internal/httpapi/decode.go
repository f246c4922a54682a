package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"reflect"
	"strings"

	"github.com/vmexec/vmexec/internal/sandbox"
)

// The wire's rules for JSON request bodies, all kept by decode:
//
//   - A body is JSON and says so: Content-Type application/json (a charset parameter
//     is allowed). Anything else is 415, so a web page cannot send a request as a
//     CORS "simple request" (text/plain, forms) that runs code. An empty body with no
//     Content-Type is {} (bodiless POSTs such as the compatible rollback).
//   - Unknown fields are ignored; null for a field means the field is absent.
//   - A value of the wrong JSON type is 400 invalid_json naming the field, by its JSON
//     path, and the JSON type expected: `field "limits.timeout_ms": expected an
//     integer, got a string`. Malformed JSON is 400 invalid_json saying where (line,
//     column). No message names a Go type.
//   - Numbers inside free-form values (metadata) are kept as written (json.Number).
//   - A request type with a Validate method is checked; a failure is 400 bad_request.
//
// Routes that take a raw body (file uploads) do not call decode, so none of this
// applies to them: the Content-Type rule is a property of the routes that decode JSON.

var (
	errMediaType   = errors.New("unsupported media type")
	errBodyTimeout = errors.New("request body too slow")
)

// decode reads r's JSON body into v, a pointer to a request struct, following the
// rules above.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return fmt.Errorf("body is over %d bytes: %w", mbe.Limit, errBodyTooLong)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("the body did not arrive in time: %w", errBodyTimeout)
		}
		return fmt.Errorf("read body: %w", err)
	}
	ct := r.Header.Get("Content-Type")
	if len(b) > 0 || ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			if ct == "" {
				ct = "none"
			}
			return fmt.Errorf("request bodies are JSON: send Content-Type: application/json (got %s): %w", ct, errMediaType)
		}
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := unmarshal(b, v); err != nil {
			return err
		}
	}
	if c, ok := v.(interface{ Validate() error }); ok {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%w: %w", err, sandbox.ErrInvalid)
		}
	}
	return nil
}

// unmarshal decodes one JSON value from b into v and rewrites encoding/json's errors
// in the wire's terms.
func unmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	err := dec.Decode(v)
	if err == nil {
		if rest := bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
			return fmt.Errorf("%w at %s: unexpected data after the JSON value", errBadJSON, where(b, int64(len(b)-len(rest))))
		}
		return nil
	}
	var (
		se *json.SyntaxError
		te *json.UnmarshalTypeError
		ie *json.InvalidUnmarshalError
	)
	switch {
	case errors.As(err, &ie):
		return fmt.Errorf("decode request: %w", err) // a bug here, not the client's: 500
	case errors.As(err, &se):
		return fmt.Errorf("%w at %s: %s", errBadJSON, where(b, se.Offset-1), se.Error()) // Offset is past the bad byte
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w at %s: the body ends in the middle of a value", errBadJSON, where(b, int64(len(b))))
	case errors.As(err, &te):
		if te.Field == "" {
			return fmt.Errorf("%w: the body must be a JSON object, got %s", errBadJSON, jsonKind(te.Value))
		}
		want := "a valid value"
		if t, ok := fieldType(reflect.TypeOf(v), te.Field); ok {
			want = describe(t)
		}
		return fmt.Errorf("%w: field %q: expected %s, got %s", errBadJSON, te.Field, want, jsonKind(te.Value))
	}
	// A type's own UnmarshalJSON failed; its message is ours, not encoding/json's.
	return fmt.Errorf("%w: %s", errBadJSON, strings.TrimPrefix(err.Error(), "json: "))
}

// where names the byte at offset off of b by line and column (both from 1).
func where(b []byte, off int64) string {
	off = max(0, min(off, int64(len(b))))
	line := 1 + bytes.Count(b[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(b[:off], '\n'))
	if col < 1 {
		col = 1
	}
	return fmt.Sprintf("line %d, column %d", line, col)
}

// jsonKind names the JSON value encoding/json saw ("string", "number 1.5", "bool"...).
func jsonKind(v string) string {
	switch {
	case v == "bool":
		return "a boolean"
	case v == "array", v == "object":
		return "an " + v
	case strings.HasPrefix(v, "number "):
		return "the number " + strings.TrimPrefix(v, "number ")
	case v == "":
		return "another type"
	}
	return "a " + v
}

// fieldType finds the declared type of the field at a dotted JSON path in t (array
// indices do not appear in encoding/json's paths).
func fieldType(t reflect.Type, path string) (reflect.Type, bool) {
	for _, name := range strings.Split(path, ".") {
		t = elemOf(t)
		switch t.Kind() {
		case reflect.Struct:
			f, ok := jsonField(t, name)
			if !ok {
				return nil, false
			}
			t = f
		case reflect.Map:
			t = t.Elem()
		default:
			return nil, false
		}
	}
	return t, true
}

// elemOf strips pointers, and arrays' element types down to the first non-array.
func elemOf(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	return t
}

// jsonField finds the field that encoding/json names name in struct t, through
// embedded structs.
func jsonField(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && tag == "" {
			if ft := derefType(f.Type); ft.Kind() == reflect.Struct {
				if got, ok := jsonField(ft, name); ok {
					return got, true
				}
				continue
			}
		}
		if tag == "" {
			tag = f.Name
		}
		if strings.EqualFold(tag, name) {
			return f.Type, true
		}
	}
	return nil, false
}

func derefType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// describe names the JSON a value of type t is written as: "a string", "an array of
// integers", "an object".
func describe(t reflect.Type) string {
	t = derefType(t)
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		if e := derefType(t.Elem()); e.Kind() != reflect.Interface {
			return "an array of " + plural(e)
		}
		return "an array"
	case reflect.Map:
		if e := derefType(t.Elem()); e.Kind() != reflect.Interface {
			return "an object whose values are " + plural(e)
		}
		return "an object"
	case reflect.Interface:
		return "any JSON value"
	}
	return map[string]string{"string": "a string", "boolean": "a boolean", "integer": "an integer",
		"number": "a number", "object": "an object"}[kindName(t)]
}

func plural(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return "arrays"
	case reflect.Map, reflect.Struct:
		return "objects"
	case reflect.Interface:
		return "JSON values"
	}
	return kindName(t) + "s"
}

// kindName is the JSON type of a scalar Go type: string, boolean, integer, number;
// "object" for anything else.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	}
	return "object"
}
