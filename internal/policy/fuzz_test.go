package policy

import (
	"slices"
	"testing"
)

// FuzzCheck guards the hand-written shell and source tokenizers against
// panics and hangs on arbitrary input in every language.
func FuzzCheck(f *testing.F) {
	for _, tc := range append(append([]checkCase{}, blockCases...), allowCases...) {
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
