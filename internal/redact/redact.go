// Package redact removes secrets from program output before it is stored
// or returned.
//
// A [Redactor] replaces each secret it recognizes, and only the secret,
// with "[REDACTED:<rule id>]". Where a secret is introduced by a name
// (password=..., "Authorization: Bearer ...", aws_secret_access_key = ...)
// the name is kept and only the value replaced, so the output stays
// readable. Rules are applied in the order [Rules] lists them: provider
// token formats first, then generic assignments, so a key already redacted
// by its own rule is not redacted again.
//
// Rules are bounded and do not depend on word boundaries:
//
//   - a provider token is found wherever its prefix is, also glued to the
//     text before it (x + ghp_...); fixed-length formats must end at a
//     character outside their alphabet, so the same letters inside a
//     longer run (a base64 image) are not taken for a key;
//   - a private key block ends at its END line or, without one, at the end
//     of its key text, and takes at most 32 KiB after its BEGIN line;
//   - an output never grows by more than [MaxGrowth]: markers longer than
//     the secrets they replace would otherwise inflate an output made of
//     short secrets several times over (past that, it is cut and ends with
//     [CutNotice]);
//   - time is linear in the output: the expressions have literal prefixes
//     to skip ahead to, and the case-insensitive rules (named values,
//     header credentials, private key and AWS scanners) are hand-written
//     scanners that look at each byte a bounded number of times
//     (BenchmarkRedact).
//
// testdata/positives.txt and testdata/negatives.txt are the corpus the
// rules are held to: fake secrets as they turn up in real output, and
// ordinary output (hashes, uuids, base64 images, public keys, long hex)
// that must come back unchanged.
//
// Redaction works on whole strings: a secret split across two chunks of a
// stream is not recognized, so callers should redact complete output or
// complete lines. Recognition is by format; an unusual secret (a password
// printed on its own) is not found. It is a safety net, not a guarantee.
// A Redactor is safe for concurrent use.
package redact

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid redact config")

// Config configures a Redactor.
type Config struct {
	// Enabled switches redaction on; when false Redact returns its input.
	Enabled bool `json:"enabled" yaml:"enabled"`
	// DisabledRules lists rule ids (see Rules) that are not applied.
	DisabledRules []string `json:"disabled_rules" yaml:"disabled_rules"`
}

// DefaultConfig returns an enabled config with every rule on.
func DefaultConfig() Config {
	return Config{Enabled: true}
}

// Validate reports whether c names only known rules.
func (c Config) Validate() error {
	for _, id := range c.DisabledRules {
		if !slices.ContainsFunc(rules, func(r rule) bool { return r.id == id }) {
			return fmt.Errorf("disabled_rules: unknown rule %q: %w", id, ErrInvalidConfig)
		}
	}
	return nil
}

// Redactor applies the enabled rules.
type Redactor struct {
	rules []*rule // nil when disabled
}

// New returns a Redactor for c, or an error wrapping ErrInvalidConfig.
func New(c Config) (*Redactor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := &Redactor{}
	if !c.Enabled {
		return r, nil
	}
	for i := range rules {
		if !slices.Contains(c.DisabledRules, rules[i].id) {
			r.rules = append(r.rules, &rules[i])
		}
	}
	return r, nil
}

// MaxGrowth bounds how much longer than its input Redact's output is. A
// marker is longer than a short secret (password=x becomes
// password=[REDACTED:secret_assignment]), so output made of many short
// secrets would otherwise grow several times over, past the run's output
// limit.
const MaxGrowth = 16 << 10

// CutNotice ends an output that Redact cut to keep it within MaxGrowth.
const CutNotice = "\n[output cut: redaction markers would have made it more than 16 KiB longer]"

// Redact returns s with every secret replaced by "[REDACTED:<rule id>]",
// and the ids of the rules that matched, each once, in rule order.
//
// The output is at most MaxGrowth bytes longer than s. When the markers
// would make it longer, it is cut before the first secret that does not
// fit (and before the word that secret is glued to), and ends with
// CutNotice; the secrets of the part kept are all redacted. Redacting the
// output again changes nothing (unless more than maxPasses secrets are
// glued into a chain). Time is linear in len(s): at most maxPasses passes,
// and outputs without secrets take one.
func (r *Redactor) Redact(s string) (out string, hits []string) {
	out = s
	limit := len(s) + MaxGrowth - len(CutNotice)
	cut := false
	for range maxPasses {
		again := false
		for _, ru := range r.rules {
			if !ru.mayMatch(out) {
				continue
			}
			var n int
			var c bool
			out, n, c = ru.apply(out, limit)
			cut, again = cut || c, again || n > 0
			if n > 0 && !slices.Contains(hits, ru.id) {
				hits = append(hits, ru.id)
			}
		}
		if !again {
			break
		}
	}
	if cut {
		out += CutNotice
	}
	return out, r.inRuleOrder(hits)
}

// inRuleOrder sorts ids as r applies their rules.
func (r *Redactor) inRuleOrder(ids []string) []string {
	if len(ids) < 2 {
		return ids
	}
	var out []string
	for _, ru := range r.rules {
		if slices.Contains(ids, ru.id) && !slices.Contains(out, ru.id) {
			out = append(out, ru.id)
		}
	}
	return out
}

// maxPasses bounds how often Redact applies its rules. A replacement can
// make text match an earlier rule that it did not match before: a token
// glued to a secret after it (AIza... followed by ghp_..., where AIza needs
// a non-token character after it), a URL whose password held a '/' until it
// was replaced. So the rules are applied again after a pass that replaced
// something, until one replaces nothing: two passes unless secrets are
// chained; outputs without secrets take one.
const maxPasses = 4

// apply replaces the secrets ru finds in s, keeping the result within limit
// bytes: it reports how many it replaced and whether it cut s short.
func (ru *rule) apply(s string, limit int) (out string, n int, cut bool) {
	var b strings.Builder
	last := 0
	mark := marker(ru.id)
	ru.spans(s, func(start, end int) bool {
		if start == end || start < last || strings.HasPrefix(s[start:], redactedPrefix) {
			return true
		}
		if b.Len()+(start-last)+len(mark)+(len(s)-end) > limit {
			cut = true
			b.WriteString(s[last:cutPoint(s, last, start)])
			last = len(s)
			return false
		}
		if n == 0 {
			b.Grow(len(s))
		}
		b.WriteString(s[last:start])
		b.WriteString(mark)
		last = end
		n++
		return true
	})
	if n == 0 && !cut {
		return s, 0, false
	}
	b.WriteString(s[last:])
	return b.String(), n, cut
}

// cutPoint is where to cut s before a secret at start that does not fit:
// before the word it is glued to, so that the text kept does not end in
// part of a token a second pass would take for a secret; not before from.
func cutPoint(s string, from, start int) int {
	i := start
	for i > from && start-i < 256 && (isWordByte(s[i-1]) || s[i-1] == '-') {
		i--
	}
	if start-i >= 256 {
		return start
	}
	return i
}

// spans yields the [start, end) of the secrets ru finds in s, in order.
func (ru *rule) spans(s string, yield func(start, end int) bool) {
	if ru.find != nil {
		ru.find(s, yield)
		return
	}
	for pos := 0; pos <= len(s); {
		m := ru.re.FindStringSubmatchIndex(s[pos:])
		if m == nil {
			return
		}
		for i := range m {
			if m[i] >= 0 {
				m[i] += pos
			}
		}
		start, end := m[0], m[1]
		for _, g := range ru.group {
			if start, end = m[2*g], m[2*g+1]; start >= 0 {
				break
			}
		}
		if start >= 0 && (ru.valid == nil || ru.valid(s[start:end], submatches(s, m), byteBefore(s, m[0]))) {
			if !yield(start, end) {
				return
			}
		}
		if m[1] > pos {
			pos = m[1]
		} else {
			pos++
		}
	}
}

func byteBefore(s string, i int) byte {
	if i == 0 {
		return 0
	}
	return s[i-1]
}

// RuleInfo describes a rule for documentation and the API.
type RuleInfo struct {
	ID          string `json:"id"`
	Description string `json:"description"`
}

// Rules returns every rule in the order they are applied.
func Rules() []RuleInfo {
	var out []RuleInfo
	for _, r := range rules {
		if r.desc != "" {
			out = append(out, RuleInfo{ID: r.id, Description: r.desc})
		}
	}
	return out
}

// marker is the replacement for a secret found by rule id.
func marker(id string) string {
	return "[REDACTED:" + id + "]"
}

func (ru *rule) mayMatch(s string) bool {
	if len(ru.hints) == 0 {
		return true
	}
	for _, h := range ru.hints {
		if ru.foldHints {
			if containsFold(s, h) {
				return true
			}
		} else if strings.Contains(s, h) {
			return true
		}
	}
	return false
}

// containsFold reports whether s contains the lower-case ASCII word sub,
// ignoring case, without allocating a lower-cased copy of s.
func containsFold(s, sub string) bool {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		if s[i]|0x20 == sub[0] && strings.EqualFold(s[i:i+n], sub) {
			return true
		}
	}
	return false
}

func submatches(s string, m []int) []string {
	out := make([]string, len(m)/2)
	for i := range out {
		if m[2*i] >= 0 {
			out[i] = s[m[2*i]:m[2*i+1]]
		}
	}
	return out
}
