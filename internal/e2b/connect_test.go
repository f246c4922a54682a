package e2b

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestEnvelopeRoundTrip: what appendEnvelope writes, readEnvelope reads back whole,
// flags and message, one envelope after another.
func TestEnvelopeRoundTrip(t *testing.T) {
	msgs := []struct {
		flags byte
		msg   string
	}{{0, `{"a":1}`}, {0, ""}, {flagEndStream, `{}`}, {0, strings.Repeat("x", 70000)}}
	var b []byte
	for _, m := range msgs {
		b = appendEnvelope(b, m.flags, []byte(m.msg))
	}
	r := bytes.NewReader(b)
	for i, m := range msgs {
		flags, msg, err := readEnvelope(r)
		if err != nil || flags != m.flags || string(msg) != m.msg {
			t.Fatalf("envelope %d: flags %d, %d bytes, %v; want flags %d, %d bytes", i, flags, len(msg), err, m.flags, len(m.msg))
		}
	}
	if _, _, err := readEnvelope(r); err != io.EOF {
		t.Fatalf("after the last envelope: %v, want io.EOF", err)
	}
}

// TestStreamRequestRefusals: a request stream that is not exactly one plain JSON
// envelope is refused as malformed (invalid_argument), never read past its limit.
func TestStreamRequestRefusals(t *testing.T) {
	big := make([]byte, 5)
	binary.BigEndian.PutUint32(big[1:], maxMessage+1)
	cases := map[string][]byte{
		"empty":           nil,
		"short header":    {0, 0, 0},
		"short body":      append([]byte{0, 0, 0, 0, 10}, "{}"...),
		"over the limit":  big,
		"compressed":      appendEnvelope(nil, flagCompressed, []byte(`{}`)),
		"end-stream":      appendEnvelope(nil, flagEndStream, []byte(`{}`)),
		"not JSON":        appendEnvelope(nil, 0, []byte(`{"process":`)),
		"JSON wrong type": appendEnvelope(nil, 0, []byte(`{"process":{"args":"ls"}}`)),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			var in startRequest
			err := readStreamRequest(bytes.NewReader(body), &in)
			if !errors.Is(err, errFrame) {
				t.Fatalf("err = %v, want a malformed-envelope error", err)
			}
		})
	}
	var in startRequest
	body := appendEnvelope(nil, 0, []byte(`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"}},"stdin":false}`))
	if err := readStreamRequest(bytes.NewReader(body), &in); err != nil || in.Process.code() != "echo hi" || in.Process.Envs["A"] != "1" {
		t.Fatalf("valid request: %+v, %v", in, err)
	}
}

// TestStreamWrites: a stream answers 200 application/connect+json, data envelopes in
// order, and exactly one end-of-stream envelope, after which nothing is written.
func TestStreamWrites(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *connectError
		want string
	}{
		{"ok", nil, `{}`},
		{"error", &connectError{Code: codeNotFound, Message: "gone"}, `{"error":{"code":"not_found","message":"gone"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			st := startStream(rec)
			st.send(map[string]int{"n": 1})
			st.send(map[string][]byte{"stdout": []byte("hi\n")})
			st.end(tc.err)
			st.send(map[string]int{"n": 2}) // after the end: dropped
			st.end(nil)
			if rec.Code != 200 || rec.Header().Get("Content-Type") != ctConnectJSON {
				t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			r := bytes.NewReader(rec.Body.Bytes())
			var got []string
			var flags []byte
			for {
				f, msg, err := readEnvelope(r)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				flags, got = append(flags, f), append(got, string(msg))
			}
			want := []string{`{"n":1}`, `{"stdout":"aGkK"}`, tc.want}
			if strings.Join(got, "|") != strings.Join(want, "|") || !bytes.Equal(flags, []byte{0, 0, flagEndStream}) {
				t.Fatalf("envelopes %q flags %v, want %q flags [0 0 2]", got, flags, want)
			}
		})
	}
}

// TestUnaryError: a unary error's status follows the Connect code, its body is the
// Connect error JSON.
func TestUnaryError(t *testing.T) {
	for code, status := range map[string]int{codeNotFound: 404, codeInvalidArgument: 400, codeUnauthenticated: 401,
		codeAlreadyExists: 409, codeUnimplemented: 501, codeDeadlineExceeded: 504, codeInternal: 500, codeResourceExhausted: 429} {
		rec := httptest.NewRecorder()
		writeConnectError(rec, connectError{Code: code, Message: "m"})
		var ce connectError
		json.Unmarshal(rec.Body.Bytes(), &ce)
		if rec.Code != status || ce.Code != code || ce.Message != "m" {
			t.Errorf("%s: %d %+v, want %d", code, rec.Code, ce, status)
		}
	}
}

// FuzzReadEnvelope: any input is an envelope, EOF or a classified error; never a
// panic, never a message longer than the limit.
func FuzzReadEnvelope(f *testing.F) {
	f.Add(appendEnvelope(nil, 0, []byte(`{"a":1}`)))
	f.Add([]byte{2, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, msg, err := readEnvelope(bytes.NewReader(b))
		if err == nil && len(msg) > maxMessage {
			t.Fatalf("message of %d bytes", len(msg))
		}
		if err != nil && err != io.EOF && !errors.Is(err, errFrame) {
			t.Fatalf("unclassified error %v", err)
		}
	})
}
