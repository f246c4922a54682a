package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sandbox.changes is read from the file as the README shows it, and a bad bound is
// refused at load.
func TestLoadChanges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("sandbox:\n  changes: {enabled: false, paths: [/home/user, /srv/data], max_entries: 50}\n"), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.Sandbox.Changes
	if ch.Enabled == nil || *ch.Enabled || ch.MaxEntries != 50 || !cmp.Equal(ch.Paths, []string{"/home/user", "/srv/data"}) {
		t.Errorf("changes = %+v", ch)
	}
	os.WriteFile(p, []byte("sandbox:\n  changes: {max_entries: -1}\n"), 0o644)
	if c, err := Load(p); err == nil {
		if err := c.Validate(); err == nil {
			t.Error("max_entries -1 accepted")
		}
	}
}
