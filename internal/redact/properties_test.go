package redact

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestRedactProperties is a deterministic companion of FuzzRedact: random
// concatenations of secrets, their fragments and the characters around
// them (glued, quoted, halved) keep the output bound, and a second pass
// changes nothing, which held only after Redact re-applied its rules after
// a replacement (a URL whose password held a '/', a key glued to a secret
// after it).
func TestRedactProperties(t *testing.T) {
	frags := []string{githubPAT, npmToken, awsKeyID, awsSecret, googleKey, jwt, openaiLegacy, stripeKey, azureKey, "AccountKey=", "SharedAccessKey=",
		"password=", "token: ", "\"", "'", " ", "\n", "\n\n", "x", "0", "_", "-", "=", ":", "/", "+", "[REDACTED:", "]", "-----BEGIN " + "RSA PRIVATE KEY-----",
		"-----END " + "RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn", "\\n", "Bearer ", "Authorization: Basic ", "https://u:", "@h", "AKIA", "ghp_", "sk-", "eyJ", "abcdefgh12345678"}
	r, _ := New(DefaultConfig())
	rng := rand.New(rand.NewPCG(17, 19))
	for it := 0; it < 20000; it++ {
		var b strings.Builder
		for n := rng.IntN(14) + 1; n > 0; n-- {
			f := frags[rng.IntN(len(frags))]
			if rng.IntN(4) == 0 && len(f) > 2 {
				f = f[:rng.IntN(len(f))]
			}
			b.WriteString(f)
		}
		s := b.String()
		out, hits := r.Redact(s)
		if len(out) > len(s)+MaxGrowth || len(hits) == 0 && out != s {
			t.Fatalf("bad %q -> %q", s, out)
		}
		if again, _ := r.Redact(out); again != out {
			t.Fatalf("not idempotent: %q\n-> %q\n-> %q", s, out, again)
		}
	}
}
