package client

import (
	"strings"
	"testing"
)

// Guards the SSE parser against what servers and proxies send: comments, CRLF line
// ends, multi-line data, events without a name, and a stream cut short.
func TestReadEvents(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // name=data|...
		err      bool
	}{
		{"events and comments", ": open\n\nevent: stdout\ndata: {\"data\":\"a\"}\n\n: keep-alive\n\nevent: result\ndata: {}\n\n", `stdout={"data":"a"}|result={}`, false},
		{"CRLF", "event: stdout\r\ndata: x\r\n\r\nevent: result\r\ndata: y\r\n\r\n", "stdout=x|result=y", false},
		{"multi-line data", "event: result\ndata: a\ndata: b\n\n", "result=a\nb", false},
		{"no space after the colon", "event:result\ndata:z\n\n", "result=z", false},
		{"cut short", "event: stdout\ndata: x\n\nevent: res", "stdout=x", true},
		{"empty", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := readEvents(strings.NewReader(tt.in), func(ev Event) (bool, error) {
				got = append(got, ev.Name+"="+string(ev.Data))
				return ev.Name == "result", nil
			})
			if (err != nil) != tt.err || strings.Join(got, "|") != tt.want {
				t.Fatalf("events %q, err %v; want %q, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

// FuzzReadEvents: the parser never panics and never calls fn with more than it read.
func FuzzReadEvents(f *testing.F) {
	f.Add("event: stdout\ndata: {\"data\":\"a\"}\n\nevent: result\ndata: {}\n\n")
	f.Add(": c\r\n\r\ndata: x\ndata: y\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		readEvents(strings.NewReader(in), func(ev Event) (bool, error) {
			if len(ev.Data) > len(in) {
				t.Fatalf("event data %d bytes from %d of input", len(ev.Data), len(in))
			}
			return false, nil
		})
	})
}
