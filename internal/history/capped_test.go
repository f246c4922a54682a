package history

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCapped guards stored output: it never exceeds the byte limit and never
// splits a multi-byte character into invalid UTF-8.
func TestCapped(t *testing.T) {
	tests := []struct {
		name    string
		s       string
		max     int
		want    string
		wantCut bool
	}{
		{"empty", "", 10, "", false},
		{"under", "hello", 10, "hello", false},
		{"exact", "hello", 5, "hello", false},
		{"ascii cut", "hello world", 5, "hello", true},
		{"zero max", "hello", 0, "", true},
		{"negative max", "hello", -1, "", true},
		{"zero max empty", "", 0, "", false},
		{"two-byte rune boundary", "aé", 3, "aé", false},
		{"two-byte rune split", "aéb", 2, "a", true},
		{"three-byte rune split", "a€b", 3, "a", true},
		{"three-byte rune split late", "a€b", 2, "a", true},
		{"four-byte rune split", "a😀b", 4, "a", true},
		{"four-byte rune whole", "a😀b", 5, "a😀", true},
		{"rune at start split", "😀", 3, "", true},
		{"invalid continuation run", "a" + strings.Repeat("\x80", 8), 6, "a\x80\x80\x80\x80\x80", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cut := Capped(tt.s, tt.max)
			if got != tt.want || cut != tt.wantCut {
				t.Errorf("Capped(%q, %d) = %q, %v; want %q, %v", tt.s, tt.max, got, cut, tt.want, tt.wantCut)
			}
			if tt.max >= 0 && len(got) > tt.max {
				t.Errorf("len = %d, over max %d", len(got), tt.max)
			}
			if utf8.ValidString(tt.s) && !utf8.ValidString(got) {
				t.Errorf("result %q is not valid UTF-8", got)
			}
		})
	}
}

// FuzzCapped checks the invariants on arbitrary input: a prefix, within the
// limit, valid UTF-8 kept valid, and the flag set exactly when bytes were
// dropped.
func FuzzCapped(f *testing.F) {
	f.Add("héllo wörld 😀", 7)
	f.Add("", 0)
	f.Add("\xff\x80\x80", 2)
	f.Fuzz(func(t *testing.T, s string, max int) {
		got, cut := Capped(s, max)
		if !strings.HasPrefix(s, got) {
			t.Fatalf("%q is not a prefix of %q", got, s)
		}
		if max >= 0 && len(got) > max {
			t.Fatalf("len %d > max %d", len(got), max)
		}
		if cut != (len(got) < len(s)) {
			t.Fatalf("cut = %v, but len %d of %d", cut, len(got), len(s))
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("%q not valid UTF-8", got)
		}
		if utf8.ValidString(s) && max > 0 && len(s) > max && len(got) < max-(utf8.UTFMax-1) {
			t.Fatalf("cut too much: len %d for max %d", len(got), max)
		}
	})
}
