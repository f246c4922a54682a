package e2b

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/vmexec/vmexec/internal/sandbox"
)

// The one place the E2B surface turns errors into its answers. The service's error
// classes (sandbox.ErrX) are the same ones internal/httpapi maps for /v1; here each
// also gets the Connect code the envd SDK turns into its error classes
// (not_found → NotFoundError / FileNotFoundError, invalid_argument →
// InvalidArgumentError, unauthenticated → AuthenticationError, resource_exhausted →
// RateLimitError, deadline_exceeded → TimeoutError). Client errors carry their
// message; server errors are logged in full and answered with a generic one.

var (
	errUnauthenticated = errors.New("unauthenticated")
	errBadRequest      = errors.New("bad request")
	errNoRoute         = errors.New("no such route")
	errUnsupported     = errors.New("not supported by vmexec's E2B surface")
	errExists          = errors.New("already exists")
)

// classify returns the HTTP status and Connect code of err, and the message safe to
// send.
func classify(log *slog.Logger, r *http.Request, err error) (status int, code, msg string) {
	status, code = http.StatusInternalServerError, codeInternal
	switch {
	case errors.Is(err, errUnauthenticated):
		status, code = http.StatusUnauthorized, codeUnauthenticated
	case errors.Is(err, errBadRequest), errors.Is(err, errFrame), errors.Is(err, sandbox.ErrInvalid):
		status, code = http.StatusBadRequest, codeInvalidArgument
	case errors.Is(err, errExists):
		status, code = http.StatusConflict, codeAlreadyExists
	case errors.Is(err, errNoRoute), errors.Is(err, sandbox.ErrNotFound):
		status, code = http.StatusNotFound, codeNotFound
	case errors.Is(err, sandbox.ErrForbidden):
		status, code = http.StatusForbidden, codePermissionDenied
	case errors.Is(err, sandbox.ErrTooLarge):
		status, code = http.StatusRequestEntityTooLarge, codeResourceExhausted
	case errors.Is(err, sandbox.ErrBusy):
		status, code = http.StatusTooManyRequests, codeResourceExhausted
	case errors.Is(err, sandbox.ErrConflict):
		status, code = http.StatusConflict, codeFailedPrecondition
	case errors.Is(err, errUnsupported), errors.Is(err, sandbox.ErrUnsupported):
		status, code = http.StatusNotImplemented, codeUnimplemented
	case errors.Is(err, sandbox.ErrStorage):
		status, code = http.StatusInsufficientStorage, codeResourceExhausted
	case errors.Is(err, sandbox.ErrLimit), errors.Is(err, sandbox.ErrUnavailable), errors.Is(err, sandbox.ErrClosed):
		status, code = http.StatusServiceUnavailable, codeUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		status, code = http.StatusGatewayTimeout, codeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		status, code = 499, codeCanceled
	}
	msg = err.Error()
	if status >= 500 && code == codeInternal {
		log.Error("e2b request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error; the server log has the details"
	} else if status >= 500 {
		log.Warn("e2b request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return status, code, msg
}

// apiError is the control plane's error body; the SDK reads code (the status) and
// message.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeAPIError answers a control-plane request, envd's REST routes (/files,
// /health) or the code interpreter's routes with err: the status, with the message
// as a JSON {"code", "message"} the SDKs read into their error (the interpreter SDK
// uses the body as the message).
func (h *Handler) writeAPIError(w http.ResponseWriter, r *http.Request, err error) {
	status, _, msg := classify(h.log, r, err)
	writeJSON(w, status, apiError{Code: status, Message: msg})
}

// writeRPCError answers a unary Connect call with err.
func (h *Handler) writeRPCError(w http.ResponseWriter, r *http.Request, err error) {
	_, code, msg := classify(h.log, r, err)
	writeConnectError(w, connectError{Code: code, Message: msg})
}

// streamError is err as the error of an end-of-stream message.
func (h *Handler) streamError(r *http.Request, err error) *connectError {
	_, code, msg := classify(h.log, r, err)
	return &connectError{Code: code, Message: msg}
}
