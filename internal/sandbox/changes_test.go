package sandbox

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
)

// What the guest is asked to scan: the server's sandbox.changes, narrowed or turned off
// by the request.
func TestChangeScan(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		cfg  ChangesConfig
		req  *api.ChangesOptions
		want *agentproto.ChangeScan
	}{
		{"default on", ChangesConfig{}, nil, &agentproto.ChangeScan{MaxEntries: 1000}},
		{"request off", ChangesConfig{}, &api.ChangesOptions{Enabled: &no}, nil},
		{"server off", ChangesConfig{Enabled: &no}, nil, nil},
		{"server off, request on", ChangesConfig{Enabled: &no}, &api.ChangesOptions{Enabled: &yes}, &agentproto.ChangeScan{MaxEntries: 1000}},
		{"server paths and bound", ChangesConfig{Paths: []string{"/srv"}, MaxEntries: 50}, nil, &agentproto.ChangeScan{Paths: []string{"/srv"}, MaxEntries: 50}},
		{"request paths win", ChangesConfig{Paths: []string{"/srv"}}, &api.ChangesOptions{Paths: []string{"out"}}, &agentproto.ChangeScan{Paths: []string{"out"}, MaxEntries: 1000}},
	}
	for _, tt := range tests {
		s := &Service{cfg: Config{Changes: tt.cfg}}
		if diff := cmp.Diff(tt.want, s.changeScan(api.ExecRequest{Changes: tt.req})); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

// Bad change-set settings are refused with a reason: in the config at startup, in a
// request as ErrInvalid (400).
func TestChangesValidation(t *testing.T) {
	for _, c := range []ChangesConfig{{MaxEntries: -1}, {MaxEntries: maxMaxChanges + 1}, {Paths: []string{""}}, {Paths: []string{"a\x00b"}}} {
		cfg := DefaultConfig()
		cfg.Changes = c
		if err := cfg.Validate(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	if err := validateChanges(&api.ChangesOptions{Paths: make([]string, maxChangePaths+1)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("17 paths: %v, want ErrInvalid", err)
	}
	if err := validateChanges(&api.ChangesOptions{Paths: []string{"/home/user/out", "tmp"}}); err != nil {
		t.Errorf("valid paths refused: %v", err)
	}
}
