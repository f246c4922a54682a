package client

import (
	"testing"

	"github.com/vmexec/vmexec/api"
)

// The CLI's one-line summary of a run's changes.
func TestChangeSummary(t *testing.T) {
	cs := []api.FileChange{
		{Path: "/home/user/report.csv", Kind: "created", Type: "file", Size: 12288},
		{Path: "/home/user/data.json", Kind: "modified", Type: "file", Size: 5},
		{Path: "/tmp/old.log", Kind: "deleted", Type: "file", Size: 3},
		{Path: "/home/user/out", Kind: "created", Type: "dir"},
	}
	tests := []struct {
		name      string
		changes   []api.FileChange
		truncated bool
		max       int
		want      string
	}{
		{"none", nil, false, 10, ""},
		{"all", cs, false, 10, "+ report.csv (12 KB)  ~ data.json  - /tmp/old.log  + out/"},
		{"capped", cs, true, 2, "+ report.csv (12 KB)  ~ data.json  … 2 more  (list truncated)"},
	}
	for _, tt := range tests {
		if got := ChangeSummary(tt.changes, tt.truncated, tt.max); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}
