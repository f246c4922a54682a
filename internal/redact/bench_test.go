package redact

import (
	"encoding/base64"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// benchInputs are 4 MiB outputs: an ordinary log as the baseline, then
// inputs built to make a rule scan far or often.
func benchInputs() []struct{ name, in string } {
	const size = 4 << 20
	fill := func(unit string) string { return strings.Repeat(unit, size/len(unit)) }
	rng := rand.New(rand.NewPCG(1, 2))
	blob := make([]byte, size*3/4)
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	b64 := base64.StdEncoding.EncodeToString(blob)
	return []struct{ name, in string }{
		{"baseline: ordinary log", fill("2026-12-01T22:40:00Z INFO request done path=/v1/items status=200 took=3ms user=bob tokens=512\n")},
		{"one base64 line", b64},
		{"BEGIN lines without END", fill("-----BEGIN RSA PRIVATE KEY-----\n")},
		{"BEGIN then base64", "-----BEGIN RSA PRIVATE KEY-----\n" + b64},
		{"key ids and base64", fill("AKIAIOSFODNN7EXAMPLE " + b64[:200] + "\n")},
		{"short passwords", fill("password=x ")},
		{"url prefixes without @", fill("a://b:c ")},
		{"sk- words", fill("sk-learn-is-a-library-for-ml ")},
		{"jwt-like", fill("eyJabcdefghij.eyJabcdefghij.")},
		{"bearer words", fill("Bearer of news ")},
		{"secret names without values", fill("secret_token_password_api_key ")},
	}
}

// BenchmarkRedact measures Redact on 4 MiB inputs; x-baseline is each
// input's time over the ordinary log's, measured in the same run.
func BenchmarkRedact(b *testing.B) {
	r, _ := New(DefaultConfig())
	cases := benchInputs()
	baseline := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		r.Redact(cases[0].in)
		baseline = min(baseline, time.Since(start))
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.in)))
			start := time.Now()
			for range b.N {
				r.Redact(c.in)
			}
			b.ReportMetric(float64(time.Since(start)/time.Duration(b.N))/float64(baseline), "x-baseline")
		})
	}
}
