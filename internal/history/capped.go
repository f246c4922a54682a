package history

import "unicode/utf8"

// Capped returns s cut to at most max bytes, and whether it was cut. The cut
// falls on a UTF-8 rune boundary, so valid UTF-8 stays valid and the result
// may be up to three bytes shorter than max. A max of zero or less yields "",
// reported as cut unless s was empty.
func Capped(s string, max int) (string, bool) {
	if len(s) <= max || s == "" {
		return s, false
	}
	if max <= 0 {
		return "", true
	}
	n := max
	// Back off over continuation bytes to the start of the rune that
	// straddles the limit. A valid rune has at most UTFMax-1 of them; if
	// there are more, s is not valid UTF-8 there and the byte cut stands.
	for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); i++ {
		n--
	}
	if !utf8.RuneStart(s[n]) {
		n = max
	}
	return s[:n], true
}
