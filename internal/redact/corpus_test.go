package redact

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// corpusCase is one case of a testdata corpus file.
type corpusCase struct{ name, text string }

// readCorpus reads a corpus file: "#" lines before the first case are
// comments, each case starts with a line "=== name", and trailing blank
// lines of a case are not part of it.
func readCorpus(t *testing.T, path string) []corpusCase {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusCase
	for i, part := range strings.Split("\n"+string(b), "\n=== ") {
		if i == 0 {
			continue
		}
		name, text, _ := strings.Cut(part, "\n")
		out = append(out, corpusCase{name, strings.TrimRight(text, "\n")})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return out
}

var annotation = regexp.MustCompile(`(?s)«([a-z_]+):(.*?)»`)

// TestCorpusPositives redacts testdata/positives.txt: realistic fake secrets
// of every rule, in the places they turn up (environment dumps, connection
// strings, credential files and CSVs, JSON, YAML, keys glued to the text
// before them). Each «rule:secret» must become exactly [REDACTED:rule] and
// everything else must stay.
func TestCorpusPositives(t *testing.T) {
	r, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range readCorpus(t, "testdata/positives.txt") {
		t.Run(c.name, func(t *testing.T) {
			in := annotation.ReplaceAllString(c.text, "$2")
			want := annotation.ReplaceAllString(c.text, "[REDACTED:$1]")
			var wantHits []string
			for _, m := range annotation.FindAllStringSubmatch(c.text, -1) {
				seen[m[1]] = true
				if !slices.Contains(wantHits, m[1]) {
					wantHits = append(wantHits, m[1])
				}
			}
			got, hits := r.Redact(in)
			if got != want {
				t.Errorf("Redact\n got %q\nwant %q", got, want)
			}
			slices.Sort(hits)
			slices.Sort(wantHits)
			if !slices.Equal(hits, wantHits) {
				t.Errorf("hits %v, want %v", hits, wantHits)
			}
		})
	}
	for _, ru := range Rules() {
		if !seen[ru.ID] {
			t.Errorf("rule %s has no case in testdata/positives.txt", ru.ID)
		}
	}
}

// TestCorpusNegatives redacts testdata/negatives.txt: ordinary output that
// looks a little like secrets (hashes, uuids, base64 images, long hex, public
// keys, words starting like provider prefixes) must come back unchanged.
func TestCorpusNegatives(t *testing.T) {
	r, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range readCorpus(t, "testdata/negatives.txt") {
		t.Run(c.name, func(t *testing.T) {
			if got, hits := r.Redact(c.text); got != c.text || hits != nil {
				t.Errorf("changed (hits %v):\n got %q\nwant %q", hits, got, c.text)
			}
		})
	}
}
