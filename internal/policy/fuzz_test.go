package policy

import (
	"slices"
	"testing"
)

// FuzzCheck guards the shell parser walk, the fallback lexer, the Go tree
// walk and the source tokenizers against panics and hangs on arbitrary
// input in every language.
func FuzzCheck(f *testing.F) {
	for _, tc := range append(append(append([]checkCase{}, blockCases...), allowCases...), nestingCases...) {
		f.Add(uint8(max(0, slices.Index(languages, tc.lang))), tc.code)
	}
	p, err := New(DefaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, lang uint8, code string) {
		d := p.Check(languages[int(lang)%len(languages)], code)
		if d.Blocked != (d.Rule != "") || d.Blocked != (d.Reason != "") {
			t.Fatalf("inconsistent decision %+v", d)
		}
	})
}
