package redact

import (
	"strings"
	"testing"
)

// FuzzRedact guards against panics in the rules and the replacement code,
// and checks what callers rely on: the output is at most MaxGrowth longer
// than the input, a second pass changes nothing, an input without hits is
// returned as is, and every hit left its marker.
func FuzzRedact(f *testing.F) {
	f.Add("password=hunter22 " + githubPAT)
	f.Add("Authorization: Bearer abc123DEF456ghi789jkl\n" + privateKey)
	f.Add("postgres://app:pa55w0rd@db/x " + jwt + " " + awsKeyID)
	f.Add("x" + githubPAT + " " + npmToken + " AccountKey=" + azureKey + ";")
	f.Add(awsKeyID + "," + awsSecret + "\n-----BEGIN " + "EC PRIVATE KEY-----\nMIIB\n\nok")
	f.Add(strings.Repeat("token=1 ", 3000))
	r, err := New(DefaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, hits := r.Redact(s)
		if len(out) > len(s)+MaxGrowth {
			t.Fatalf("%d bytes in, %d out", len(s), len(out))
		}
		if len(hits) == 0 && out != s {
			t.Fatalf("changed %q to %q without hits", s, out)
		}
		for _, h := range hits {
			if !strings.Contains(out, marker(h)) && !strings.HasSuffix(out, CutNotice) {
				t.Fatalf("hit %s but no marker in %q", h, out)
			}
		}
		if again, more := r.Redact(out); again != out {
			t.Fatalf("second pass changed %q\nto %q (%v)", out, again, more)
		}
	})
}
