package redact

import "strings"

// Named values (password=x, "client_secret": "x", AccountKey=x;) are found
// by a scanner rather than a case-insensitive regular expression: the
// expression had no literal to skip ahead to and ran its automaton over
// every byte (about 1.5 MB/s on ordinary logs). The scanner stops at each
// ':' and '=' only, and looks a few bytes back for a name and forward for
// the value.

// assignment describes the names of one rule and the value they introduce.
type assignment struct {
	// names are lower-case name endings, without separators: a name
	// matches when it ends with one of them, ignoring case and the
	// characters '_' and '-' (aws_secret_access_key, SecretAccessKey).
	names []string
	// value returns the length of the value at the start of v (after the
	// operator, blanks and any opening quote; quote is that quote or 0),
	// or 0 when there is none.
	value func(v string, quote byte) int
	// valid, when set, vets the value; name is the ending that matched.
	valid func(value, name string) bool
}

// find yields the values assigned to a's names in s: name, optionally a
// quote, blanks, ':' or '=', blanks, optionally a quote, the value.
func (a *assignment) find(s string, yield func(start, end int) bool) {
	for pos := 0; pos < len(s); {
		k := strings.IndexAny(s[pos:], ":=")
		if k < 0 {
			return
		}
		op := pos + k
		pos = op + 1
		name := a.nameBefore(s, op)
		if name == "" {
			continue
		}
		i := op + 1
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		var quote byte
		if i < len(s) && (s[i] == '"' || s[i] == '\'') {
			quote = s[i]
			i++
		}
		n := a.value(s[i:], quote)
		if n == 0 || a.valid != nil && !a.valid(s[i:i+n], name) {
			continue
		}
		if !yield(i, i+n) {
			return
		}
		pos = i + n
	}
}

// nameBefore returns the name ending that ends before the operator at op
// (past blanks and a closing quote), or "".
func (a *assignment) nameBefore(s string, op int) string {
	j := op
	for j > 0 && (s[j-1] == ' ' || s[j-1] == '\t') {
		j--
	}
	if j > 0 && (s[j-1] == '"' || s[j-1] == '\'') {
		j--
	}
	for _, name := range a.names {
		if endsWithName(s[:j], name) {
			return name
		}
	}
	return ""
}

// endsWithName reports whether s ends with name (lower-case letters),
// ignoring ASCII case and any '_' and '-' in s.
func endsWithName(s, name string) bool {
	i := len(s)
	for k := len(name) - 1; k >= 0; k-- {
		for i > 0 && (s[i-1] == '_' || s[i-1] == '-') {
			i--
		}
		if i == 0 || s[i-1]|0x20 != name[k] {
			return false
		}
		i--
	}
	return true
}

// plainValue is the value of secret_assignment: a quoted string to its
// closing quote on the same line, or a run up to a blank, quote or
// punctuation that ends values in code and URLs.
func plainValue(v string, quote byte) int {
	if quote != 0 {
		end := strings.IndexAny(v, string(quote)+"\n")
		if end < 0 || v[end] != quote {
			return 0
		}
		return end
	}
	for i := 0; i < len(v); i++ {
		if strings.IndexByte(" \t\n\r\f\"'`,;&<>(){}[]", v[i]) >= 0 {
			return i
		}
	}
	return len(v)
}

// awsSecretValue is 40 characters of A-Z a-z 0-9 / + =, then the end or
// another character.
func awsSecretValue(v string, _ byte) int {
	if len(v) < 40 || len(v) > 40 && isBase64Byte(v[40]) {
		return 0
	}
	for i := 0; i < 40; i++ {
		if !isBase64Byte(v[i]) {
			return 0
		}
	}
	return 40
}

// base64Value returns a value of exactly n base64 characters ending in pad
// '=' (n counts them), followed by the end or a character that is not
// base64; 0 otherwise.
func base64Value(n, pad int) func(v string, _ byte) int {
	return func(v string, _ byte) int {
		if len(v) < n {
			return 0
		}
		for i := 0; i < n; i++ {
			c := v[i]
			if i >= n-pad {
				if c != '=' {
					return 0
				}
			} else if !isBase64Byte(c) || c == '=' {
				return 0
			}
		}
		if len(v) > n && isBase64Byte(v[n]) {
			return 0
		}
		return n
	}
}
