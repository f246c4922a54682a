package redact

import (
	"regexp"
	"slices"
	"strings"
)

// The rules here are scanners rather than one regular expression: a private
// key block must be bounded (a BEGIN line without its END must not take the
// rest of the output, as "BEGIN, then anything up to END" did: 6 MB became
// 22 bytes), and an AWS secret is found by its distance to a key id. Both
// look at each byte of the text a bounded number of times.

// maxKeyBytes bounds what one private key block redacts after its BEGIN
// line. A PEM RSA key of 16,384 bits is about 12.5 KiB.
const maxKeyBytes = 32 << 10

var (
	keyBegin = regexp.MustCompile(`-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----`)
	keyEnd   = regexp.MustCompile(`^-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----`)
	// keyField is a header line of an encrypted PEM key or a PGP block
	// (Proc-Type: 4,ENCRYPTED, DEK-Info: ..., Version: ..., Comment: ...).
	keyField = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{0,30}: `)
)

// privateKeys yields each private key block: its BEGIN line, then the lines
// of key text (base64, header fields before the first base64 line, a blank
// line between them), then its END line. The block ends before the first
// other line, before a blank line after the key text, or maxKeyBytes after
// the BEGIN line. A line may also be broken by escaped newlines (\n in a
// JSON string), and on the BEGIN line itself by spaces (a key in an
// environment variable); a line that is not key text but starts with at
// least 16 characters of it (a JSON string cut short) gives those.
func privateKeys(s string, yield func(start, end int) bool) {
	for pos := 0; pos < len(s); {
		m := keyBegin.FindStringIndex(s[pos:])
		if m == nil {
			return
		}
		start, end := pos+m[0], keyBlockEnd(s, pos+m[1])
		if !yield(start, end) {
			return
		}
		pos = end
	}
}

// keyBlockEnd returns where the key block whose BEGIN line ends at i ends.
func keyBlockEnd(s string, i int) int {
	limit := min(len(s), i+maxKeyBytes)
	end := i
	body := false
	first := true // the rest of the BEGIN line
	for i < limit {
		nl := strings.IndexByte(s[i:limit], '\n')
		lineEnd, next := limit, limit
		if nl >= 0 {
			lineEnd, next = i+nl, i+nl+1
		}
		line := strings.TrimRight(s[i:lineEnd], " \t\r")
		lead := len(line) - len(strings.TrimLeft(line, " \t"))
		line = line[lead:]
		at := i + lead
		n := keyTextRun(line, first)
		if first && !hasLongPiece(line[:n]) {
			n = 0 // prose after a BEGIN line, not a key with spaces for newlines
		}
		switch {
		case line == "" && first:
			// BEGIN line ends here.
		case line == "":
			if body {
				return end
			}
		case n == len(line):
			body = true
			end = at + n
		case !body && !first && keyField.MatchString(line):
			end = at + len(line)
		default:
			if e := keyEnd.FindStringIndex(line[n:]); e != nil {
				return at + n + e[1]
			}
			if n >= 16 {
				return at + n
			}
			return end
		}
		first = false
		i = next
	}
	return end
}

// hasLongPiece reports whether run has 16 key text characters in a row.
func hasLongPiece(run string) bool {
	n := 0
	for i := 0; i < len(run); i++ {
		if run[i] == ' ' || run[i] == '\t' {
			n = 0
		} else if n++; n >= 16 {
			return true
		}
	}
	return false
}

// keyTextRun returns the length of the key text (base64 characters and
// escaped line breaks, \n and \r, and spaces when spaces are allowed) at the
// start of line.
func keyTextRun(line string, spaces bool) int {
	i := 0
	for i < len(line) {
		c := line[i]
		switch {
		case isBase64Byte(c):
			i++
		case c == '\\' && i+1 < len(line) && (line[i+1] == 'n' || line[i+1] == 'r'):
			i += 2
		case spaces && (c == ' ' || c == '\t'):
			i++
		default:
			return i
		}
	}
	return i
}

func isBase64Byte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '='
}

// awsGap is how far from an AWS access key id a bare secret access key is
// looked for, before and after it.
const awsGap = 128

// awsKeyMarker is what the access key id rule leaves of a key id.
var awsKeyMarker = marker(RuleAWSAccessKey)

// awsPairedSecrets yields the bare AWS secret access keys near an access
// key id: runs of exactly 40 base64 characters (A-Z a-z 0-9 + /, then the
// text or a non-base64 character on both sides) that look generated (see
// looksRandom; hex, words and paths do not), at most awsGap bytes before or
// after the id, as in a console credentials CSV ("AKIA...,wJalr...") or
// print(key_id, secret). Each byte is scanned once.
func awsPairedSecrets(s string, yield func(start, end int) bool) {
	scanned, lastEnd := 0, 0 // the bytes before scanned were looked at
	awsKeyIDs(s, true, func(idStart, idEnd int) bool {
		for _, w := range [2][2]int{{idStart - awsGap, idStart}, {idEnd, min(len(s), idEnd+awsGap)}} {
			for i := max(scanned, w[0]); i < w[1]; {
				if !isBase64Byte(s[i]) || s[i] == '=' {
					i++
					continue
				}
				j := i
				for j < len(s) && isBase64Byte(s[j]) && s[j] != '=' {
					j++
				}
				run := s[i:j]
				clean := (i == 0 || !isBase64Byte(s[i-1])) && (j == len(s) || !isBase64Byte(s[j]))
				if len(run) == 40 && clean && i >= lastEnd && (j <= idStart || i >= idEnd) && looksRandom(run) {
					if !yield(i, j) {
						return false
					}
					lastEnd = j
				}
				i = j
				scanned = max(scanned, j)
			}
			scanned = max(scanned, w[1])
		}
		return true
	})
}

// awsKeyPrefixes start AWS access key ids.
var awsKeyPrefixes = []string{"AKIA", "ASIA", "ABIA", "ACCA"}

// awsKeyIDs yields the AWS access key ids in s, and the markers their rule
// left of them when anchors is set: a prefix and 16 upper-case letters or
// digits. Each prefix is
// searched for with strings.Index, the next occurrence cached, so the scan
// is linear.
func awsKeyIDs(s string, anchors bool, yield func(start, end int) bool) {
	needles := awsKeyPrefixes
	if anchors {
		needles = append(slices.Clip(needles), awsKeyMarker)
	}
	next := make([]int, len(needles)) // next occurrence at or after pos, -1 none, -2 unknown
	for i := range next {
		next[i] = -2
	}
	for pos := 0; pos < len(s); {
		best, which := -1, -1
		for i, n := range needles {
			if next[i] == -2 || next[i] >= 0 && next[i] < pos {
				next[i] = -1
				if k := strings.Index(s[pos:], n); k >= 0 {
					next[i] = pos + k
				}
			}
			if next[i] >= 0 && (best < 0 || next[i] < best) {
				best, which = next[i], i
			}
		}
		if best < 0 {
			return
		}
		end := best + len(needles[which])
		if which < len(awsKeyPrefixes) {
			end = best + 20
			if !isKeyID(s, best) {
				pos = best + 1
				continue
			}
		}
		if !yield(best, end) {
			return
		}
		pos = end
	}
}

// isKeyID reports whether an access key id starts at i: 4 prefix bytes and
// 16 of A-Z 0-9.
func isKeyID(s string, i int) bool {
	if i+20 > len(s) {
		return false
	}
	for _, c := range []byte(s[i+4 : i+20]) {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// foldIndex returns the index of the first occurrence of the lower-case
// ASCII word in s, ignoring case, or -1.
func foldIndex(s, word string) int {
	first := word[0]
	for i := 0; i+len(word) <= len(s); {
		k := strings.IndexAny(s[i:len(s)-len(word)+1], string([]byte{first, first &^ 0x20}))
		if k < 0 {
			return -1
		}
		i += k
		if strings.EqualFold(s[i:i+len(word)], word) {
			return i
		}
		i++
	}
	return -1
}

// headerCredentials yields the credential after each scheme word ("bearer",
// "basic"; after "authorization:" too when header is set): the word at a
// word start, blanks, then at least 8 bytes of the token characters chars.
func headerCredentials(scheme string, header bool, chars string, valid func(string) bool) func(s string, yield func(start, end int) bool) {
	return func(s string, yield func(start, end int) bool) {
		for pos := 0; pos < len(s); {
			k := foldIndex(s[pos:], scheme)
			if k < 0 {
				return
			}
			at := pos + k
			pos = at + len(scheme)
			if at > 0 && isWordByte(s[at-1]) || header && !afterAuthorization(s[:at]) {
				continue
			}
			i := pos
			for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
				i++
			}
			if i == pos {
				continue
			}
			j := i
			for j < len(s) && strings.IndexByte(chars, s[j]) >= 0 {
				j++
			}
			if j-i < 8 || valid != nil && !valid(s[i:j]) {
				continue
			}
			if !yield(i, j) {
				return
			}
			pos = j
		}
	}
}

// afterAuthorization reports whether s ends with "authorization:" and
// blanks, ignoring case.
func afterAuthorization(s string) bool {
	s = strings.TrimRight(s, " \t")
	const h = "authorization:"
	return len(s) >= len(h) && strings.EqualFold(s[len(s)-len(h):], h)
}
