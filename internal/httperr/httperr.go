// Package httperr is the one map from the sandbox service's error classes
// (sandbox.ErrX, and a context's end) to HTTP statuses and the API's error codes
// (api.CodeX), shared by the /v1 API (internal/httpapi) and the E2B surface
// (internal/e2b), which each map their own errors first and answer in their own
// JSON shape.
package httperr

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// StatusClientClosed is the status of a request its client gave up on (nginx's
// 499): nobody reads it, but logs and metrics do.
const StatusClientClosed = 499

// classes is the table, in order: the first class err wraps decides.
var classes = []struct {
	errs   []error
	status int
	code   string
}{
	{[]error{sandbox.ErrTooLarge}, http.StatusRequestEntityTooLarge, api.CodeTooLarge},
	{[]error{sandbox.ErrInvalid}, http.StatusBadRequest, api.CodeBadRequest},
	{[]error{sandbox.ErrNotFound}, http.StatusNotFound, api.CodeNotFound},
	{[]error{sandbox.ErrForbidden}, http.StatusForbidden, api.CodeForbidden},
	{[]error{sandbox.ErrBusy}, http.StatusTooManyRequests, api.CodeBusy},
	{[]error{sandbox.ErrConflict}, http.StatusConflict, api.CodeConflict},
	{[]error{sandbox.ErrUnsupported}, http.StatusNotImplemented, api.CodeUnsupported},
	{[]error{sandbox.ErrStorage}, http.StatusInsufficientStorage, api.CodeLimit},
	{[]error{sandbox.ErrLimit}, http.StatusServiceUnavailable, api.CodeLimit},
	{[]error{sandbox.ErrUnavailable, sandbox.ErrClosed}, http.StatusServiceUnavailable, api.CodeUnavailable},
	{[]error{context.DeadlineExceeded}, http.StatusGatewayTimeout, api.CodeTimeout},
	{[]error{context.Canceled}, StatusClientClosed, api.CodeTimeout},
}

// Classify returns the status and code of err's class; 500 and api.CodeInternal
// when it is none of the service's.
func Classify(err error) (status int, code string) {
	for _, c := range classes {
		for _, e := range c.errs {
			if errors.Is(err, e) {
				return c.status, c.code
			}
		}
	}
	return http.StatusInternalServerError, api.CodeInternal
}

// Message is the text to answer err with at status and code: err's own for a
// client's error, a generic one for an internal error (logged in full; a server
// error of a known class is logged as a warning).
func Message(log *slog.Logger, r *http.Request, err error, status int, code string) string {
	switch {
	case status >= 500 && code == api.CodeInternal:
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		return "internal error; the server log has the details"
	case status >= 500:
		log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return err.Error()
}
