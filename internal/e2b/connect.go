package e2b

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec, as much of
// it as the E2B SDKs speak; written by hand because connect-go wants generated
// protobuf types and the SDKs need none of protobuf's binary form.
//
//   - Unary: POST /pkg.Service/Method, Content-Type application/json, the request
//     message as proto3 JSON. Success is 200 with the response message as JSON; an
//     error is a non-200 status with {"code": "<connect code>", "message": "…"}.
//   - Server streaming: the request is one envelope, Content-Type
//     application/connect+json. The response is 200 application/connect+json and a
//     sequence of envelopes: data envelopes (flag 0) with one message each, then
//     exactly one end-of-stream envelope (flag 2) with {} or {"error": {...}}. An
//     error after the 200 goes in that last envelope, never in the status.
//
// An envelope is 1 flag byte, a 4-byte big-endian length and that many bytes.
// Compressed envelopes (flag 1) are refused: the SDKs do not compress.

const (
	flagCompressed = 0x01
	flagEndStream  = 0x02

	// maxMessage bounds one request message (an envelope or a unary body).
	maxMessage = 4 << 20

	ctConnectJSON = "application/connect+json"
)

// Connect error codes (the strings on the wire).
const (
	codeCanceled           = "canceled"
	codeUnknown            = "unknown"
	codeInvalidArgument    = "invalid_argument"
	codeDeadlineExceeded   = "deadline_exceeded"
	codeNotFound           = "not_found"
	codeAlreadyExists      = "already_exists"
	codePermissionDenied   = "permission_denied"
	codeResourceExhausted  = "resource_exhausted"
	codeFailedPrecondition = "failed_precondition"
	codeUnimplemented      = "unimplemented"
	codeInternal           = "internal"
	codeUnavailable        = "unavailable"
	codeUnauthenticated    = "unauthenticated"
)

// connectStatus is the HTTP status a unary error with code is answered with (the
// Connect protocol's table).
func connectStatus(code string) int {
	switch code {
	case codeCanceled:
		return 499
	case codeInvalidArgument, codeFailedPrecondition:
		return http.StatusBadRequest
	case codeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case codeNotFound:
		return http.StatusNotFound
	case codeAlreadyExists:
		return http.StatusConflict
	case codePermissionDenied:
		return http.StatusForbidden
	case codeResourceExhausted:
		return http.StatusTooManyRequests
	case codeUnimplemented:
		return http.StatusNotImplemented
	case codeUnavailable:
		return http.StatusServiceUnavailable
	case codeUnauthenticated:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}

// connectError is the body of a Connect error (unary) or the "error" of an
// end-of-stream message.
type connectError struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

var errFrame = errors.New("malformed connect envelope")

// readEnvelope reads one envelope from r: its flags and message.
func readEnvelope(r io.Reader) (flags byte, msg []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("envelope header cut short: %w", errFrame)
		}
		return 0, nil, err // io.EOF: no envelope at all
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxMessage {
		return 0, nil, fmt.Errorf("envelope of %d bytes is over the %d byte limit: %w", n, maxMessage, errFrame)
	}
	msg = make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, nil, fmt.Errorf("envelope body cut short (%d of %d bytes): %w", len(msg), n, errFrame)
	}
	return hdr[0], msg, nil
}

// appendEnvelope appends the envelope of msg with flags to b.
func appendEnvelope(b []byte, flags byte, msg []byte) []byte {
	var hdr [5]byte
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(msg)))
	return append(append(b, hdr[:]...), msg...)
}

// readStreamRequest reads the single request envelope of a server-streaming call
// into v.
func readStreamRequest(r io.Reader, v any) error {
	flags, msg, err := readEnvelope(bufio.NewReader(io.LimitReader(r, maxMessage+5)))
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("no request envelope: %w", errFrame)
	case err != nil:
		return err
	case flags&flagCompressed != 0:
		return fmt.Errorf("compressed envelopes are not supported: %w", errFrame)
	case flags&flagEndStream != 0:
		return fmt.Errorf("end-of-stream envelope where the request was expected: %w", errFrame)
	}
	if err := json.Unmarshal(msg, v); err != nil {
		return fmt.Errorf("request message: %v: %w", err, errFrame)
	}
	return nil
}

// stream writes the response of a server-streaming call. Its methods are safe for
// concurrent use; after end, send does nothing.
type stream struct {
	mu    sync.Mutex
	w     http.ResponseWriter
	rc    *http.ResponseController
	ended bool
	err   error // the first write error: the client has gone
}

// startStream answers 200 application/connect+json and returns the stream.
func startStream(w http.ResponseWriter) *stream {
	w.Header().Set("Content-Type", ctConnectJSON)
	w.WriteHeader(http.StatusOK)
	s := &stream{w: w, rc: http.NewResponseController(w)}
	_ = s.rc.Flush() // the headers go now: the client waits for them before the first event
	return s
}

// send writes one data envelope with v as JSON and flushes it.
func (s *stream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.write(0, b)
}

// end writes the end-of-stream envelope: {} or {"error": ce} when ce is not nil.
func (s *stream) end(ce *connectError) error {
	b := []byte("{}")
	if ce != nil {
		b, _ = json.Marshal(struct {
			Error *connectError `json:"error"`
		}{ce})
	}
	err := s.write(flagEndStream, b)
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	return err
}

func (s *stream) write(flags byte, msg []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.err != nil {
		return s.err
	}
	if _, err := s.w.Write(appendEnvelope(nil, flags, msg)); err != nil {
		s.err = err
		return err
	}
	if err := s.rc.Flush(); err != nil {
		s.err = err
	}
	return s.err
}

// writeConnectError answers a unary call with a Connect error.
func writeConnectError(w http.ResponseWriter, ce connectError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(connectStatus(ce.Code))
	json.NewEncoder(w).Encode(ce)
}
