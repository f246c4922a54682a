package e2b

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/vmexec/vmexec/internal/httperr"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// TestClassify guards the E2B surface's answers: the service's error classes get
// the statuses /v1 gives them (internal/httperr) and the Connect code the SDKs map
// to their error classes; the surface's own errors theirs.
func TestClassify(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := httptest.NewRequest("POST", "/e2b/envd/process.Process/Start", nil)
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{errUnauthenticated, 401, codeUnauthenticated},
		{errBadRequest, 400, codeInvalidArgument},
		{errFrame, 400, codeInvalidArgument},
		{errExists, 409, codeAlreadyExists},
		{errNoRoute, 404, codeNotFound},
		{errUnsupported, 501, codeUnimplemented},
		{sandbox.ErrInvalid, 400, codeInvalidArgument},
		{sandbox.ErrNotFound, 404, codeNotFound},
		{sandbox.ErrForbidden, 403, codePermissionDenied},
		{sandbox.ErrTooLarge, 413, codeResourceExhausted},
		{sandbox.ErrBusy, 429, codeResourceExhausted},
		{sandbox.ErrConflict, 409, codeFailedPrecondition},
		{sandbox.ErrUnsupported, 501, codeUnimplemented},
		{sandbox.ErrStorage, 507, codeResourceExhausted},
		{sandbox.ErrLimit, 503, codeUnavailable},
		{sandbox.ErrUnavailable, 503, codeUnavailable},
		{sandbox.ErrClosed, 503, codeUnavailable},
		{context.DeadlineExceeded, 504, codeDeadlineExceeded},
		{context.Canceled, 499, codeCanceled},
		{errors.New("disk on fire"), 500, codeInternal},
	} {
		err := fmt.Errorf("doing a thing: %w", c.err)
		status, code, msg := classify(log, r, err)
		if status != c.status || code != c.code {
			t.Errorf("%v: got %d %s, want %d %s", err, status, code, c.status, c.code)
		}
		if v1, _ := httperr.Classify(err); v1 != 500 && v1 != status {
			t.Errorf("%v: status %d here, %d on /v1", err, status, v1)
		}
		if status < 500 && msg != err.Error() {
			t.Errorf("%v: message %q", err, msg)
		}
	}
}
