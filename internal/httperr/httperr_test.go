package httperr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// TestClassify guards the map of the service's error classes: each wrapped class
// gets its status and code, and any other error is internal.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{sandbox.ErrTooLarge, 413, api.CodeTooLarge},
		{sandbox.ErrInvalid, 400, api.CodeBadRequest},
		{sandbox.ErrNotFound, 404, api.CodeNotFound},
		{sandbox.ErrForbidden, 403, api.CodeForbidden},
		{sandbox.ErrBusy, 429, api.CodeBusy},
		{sandbox.ErrConflict, 409, api.CodeConflict},
		{sandbox.ErrUnsupported, 501, api.CodeUnsupported},
		{sandbox.ErrStorage, 507, api.CodeLimit},
		{sandbox.ErrLimit, 503, api.CodeLimit},
		{sandbox.ErrUnavailable, 503, api.CodeUnavailable},
		{sandbox.ErrClosed, 503, api.CodeUnavailable},
		{context.DeadlineExceeded, 504, api.CodeTimeout},
		{context.Canceled, 499, api.CodeTimeout},
		{errors.New("disk on fire"), 500, api.CodeInternal},
	} {
		err := fmt.Errorf("doing a thing: %w", c.err)
		if status, code := Classify(err); status != c.status || code != c.code {
			t.Errorf("%v: got %d %s, want %d %s", err, status, code, c.status, c.code)
		}
	}
}

// TestMessage guards what an answer says: a client error its own text, a known
// server error its text (logged as a warning), an internal error a generic text
// (its detail only in the log).
func TestMessage(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	r := httptest.NewRequest("POST", "/v1/exec", nil)
	client := fmt.Errorf("sandbox x: %w", sandbox.ErrNotFound)
	if got := Message(log, r, client, 404, api.CodeNotFound); got != client.Error() || logs.Len() != 0 {
		t.Errorf("client error: %q, logged %q", got, logs.String())
	}
	known := fmt.Errorf("no runsc: %w", sandbox.ErrUnavailable)
	if got := Message(log, r, known, 503, api.CodeUnavailable); got != known.Error() || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("known server error: %q, logged %q", got, logs.String())
	}
	logs.Reset()
	internal := errors.New("disk on fire at /var/lib/secret")
	got := Message(log, r, internal, 500, api.CodeInternal)
	if strings.Contains(got, "secret") || !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "secret") {
		t.Errorf("internal error: answered %q, logged %q", got, logs.String())
	}
}
