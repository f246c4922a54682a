package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Guards the one error→status map: every class the service returns becomes its
// status and code, client errors keep their message, and internal errors do not leak
// their detail.
func TestWriteError(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("%w: unexpected EOF", errBadJSON), 400, api.CodeInvalidJSON},
		{fmt.Errorf("body is over 4 bytes: %w", errBodyTooLong), 413, api.CodeTooLarge},
		{fmt.Errorf("send Content-Type: application/json: %w", errMediaType), 415, api.CodeUnsupportedMediaType},
		{fmt.Errorf("the body did not arrive in time: %w", errBodyTimeout), 408, api.CodeTimeout},
		{fmt.Errorf("from evil.example: %w", errForeignOrigin), 403, api.CodeForbidden},
		{fmt.Errorf("Host evil.example: %w", errForeignHost), 403, api.CodeForbidden},
		{fmt.Errorf("f is over the file limit: %w", sandbox.ErrTooLarge), 413, api.CodeTooLarge},
		{fmt.Errorf("unknown language %q: %w", "cobol", sandbox.ErrInvalid), 400, api.CodeBadRequest},
		{fmt.Errorf("sandbox x: %w", sandbox.ErrNotFound), 404, api.CodeNotFound},
		{fmt.Errorf("another agent's: %w", sandbox.ErrForbidden), 403, api.CodeForbidden},
		{fmt.Errorf("queue: %w", sandbox.ErrBusy), 429, api.CodeBusy},
		{fmt.Errorf("not running: %w", sandbox.ErrConflict), 409, api.CodeConflict},
		{fmt.Errorf("snapshots: %w", sandbox.ErrUnsupported), 501, api.CodeUnsupported},
		{fmt.Errorf("too many: %w", sandbox.ErrLimit), 503, api.CodeLimit},
		{fmt.Errorf("no runsc: %w", sandbox.ErrUnavailable), 503, api.CodeUnavailable},
		{fmt.Errorf("slow: %w", context.DeadlineExceeded), 504, api.CodeTimeout},
		{errors.New("disk on fire at /var/lib/secret"), 500, api.CodeInternal},
	} {
		rec := httptest.NewRecorder()
		writeError(rec, httptest.NewRequest(http.MethodPost, "/v1/exec", nil), log, c.err)
		var body api.Error
		json.NewDecoder(rec.Body).Decode(&body)
		if rec.Code != c.status || body.Code != c.code {
			t.Errorf("%v: got %d %s, want %d %s", c.err, rec.Code, body.Code, c.status, c.code)
		}
		if c.status == 500 && strings.Contains(body.Error, "secret") {
			t.Errorf("internal detail leaked: %q", body.Error)
		}
		if c.status < 500 && body.Error != c.err.Error() {
			t.Errorf("client error message %q, want %q", body.Error, c.err.Error())
		}
	}
}

// Guards decoding: unknown fields are ignored, an empty body is an empty object, and
// malformed JSON is errBadJSON.
func TestDecode(t *testing.T) {
	var v api.ExecRequest
	if err := decode(jsonPost(http.MethodPost, "/", `{"agent_id":"a","unknown_field":1}`), &v); err != nil || v.AgentID != "a" {
		t.Fatalf("unknown field: %v %+v", err, v)
	}
	if err := decode(httptest.NewRequest(http.MethodPost, "/", nil), &v); err != nil {
		t.Fatalf("empty body: %v", err)
	}
	if err := decode(jsonPost(http.MethodPost, "/", `{"agent_id":`), &v); !errors.Is(err, errBadJSON) {
		t.Fatalf("malformed: %v", err)
	}
}
