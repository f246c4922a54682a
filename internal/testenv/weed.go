package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// WeedVersion is the SeaweedFS module version scripts/setup builds (the tests' S3
// server); keep it equal to WEED_VERSION there.
const WeedVersion = "v0.0.0-20261109003541-7506e5f91cd6"

// Weed returns the SeaweedFS binary (the S3-compatible server of the snapshot store's
// tests) or skips: $VMEXEC_WEED, else <data dir>/tools/weed, else weed on $PATH.
func Weed(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("VMEXEC_WEED"), filepath.Join(DataDir(), "tools", "weed")} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath("weed"); err == nil {
		return p
	}
	t.Skip("SeaweedFS (weed, the S3 server of these tests) not installed: run scripts/setup --tests (builds it once, ~5 minutes)")
	return ""
}
