package e2b

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/vmexec/vmexec/internal/httperr"
)

// The one place the E2B surface turns errors into its answers. The service's error
// classes (sandbox.ErrX) get their statuses from internal/httperr, as on /v1; here
// each also gets the Connect code the envd SDK turns into its error classes
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
// send. The service's error classes get their status from internal/httperr (as on
// /v1); the Connect code follows from the status.
func classify(log *slog.Logger, r *http.Request, err error) (status int, code, msg string) {
	apiCode := ""
	switch {
	case errors.Is(err, errUnauthenticated):
		status = http.StatusUnauthorized
	case errors.Is(err, errBadRequest), errors.Is(err, errFrame):
		status = http.StatusBadRequest
	case errors.Is(err, errExists):
		status, code = http.StatusConflict, codeAlreadyExists
	case errors.Is(err, errNoRoute):
		status = http.StatusNotFound
	case errors.Is(err, errUnsupported):
		status = http.StatusNotImplemented
	default:
		status, apiCode = httperr.Classify(err)
	}
	if code == "" {
		code = connectCode(status)
	}
	return status, code, httperr.Message(log, r, err, status, apiCode)
}

// connectCode is the Connect code of an HTTP status.
func connectCode(status int) string {
	switch status {
	case http.StatusBadRequest:
		return codeInvalidArgument
	case http.StatusUnauthorized:
		return codeUnauthenticated
	case http.StatusForbidden:
		return codePermissionDenied
	case http.StatusNotFound:
		return codeNotFound
	case http.StatusConflict:
		return codeFailedPrecondition
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusInsufficientStorage:
		return codeResourceExhausted
	case http.StatusNotImplemented:
		return codeUnimplemented
	case http.StatusServiceUnavailable:
		return codeUnavailable
	case http.StatusGatewayTimeout:
		return codeDeadlineExceeded
	case httperr.StatusClientClosed:
		return codeCanceled
	}
	return codeInternal
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
