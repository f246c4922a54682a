// Package redact removes secrets from program output before it is stored
// or returned.
//
// A [Redactor] replaces each secret it recognizes, and only the secret,
// with "[REDACTED:<rule id>]". Where a secret is introduced by a name
// (password=..., "Authorization: Bearer ...", aws_secret_access_key = ...)
// the name is kept and only the value replaced, so the output stays
// readable. Rules are matched with regular expressions compiled once, in
// the order [Rules] lists them: provider-specific token formats first, then
// generic assignments, so a key already redacted by its own rule is not
// redacted again.
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

// Redact returns s with every secret replaced by "[REDACTED:<rule id>]",
// and the ids of the rules that matched, each once, in rule order.
func (r *Redactor) Redact(s string) (out string, hits []string) {
	out = s
	for _, ru := range r.rules {
		if !ru.mayMatch(out) {
			continue
		}
		var ok bool
		if out, ok = ru.apply(out); ok {
			hits = append(hits, ru.id)
		}
	}
	return out, hits
}

// apply replaces the secrets ru finds in s.
func (ru *rule) apply(s string) (string, bool) {
	matches := ru.re.FindAllStringSubmatchIndex(s, -1)
	if matches == nil {
		return s, false
	}
	var b strings.Builder
	last := 0
	for _, m := range matches {
		start, end := m[0], m[1]
		for _, g := range ru.group {
			if start, end = m[2*g], m[2*g+1]; start >= 0 {
				break
			}
		}
		if start < 0 || start == end || strings.HasPrefix(s[start:], redactedPrefix) {
			continue
		}
		if ru.valid != nil && !ru.valid(s[start:end], submatches(s, m)) {
			continue
		}
		b.WriteString(s[last:start])
		b.WriteString(marker(ru.id))
		last = end
	}
	if last == 0 {
		return s, false
	}
	b.WriteString(s[last:])
	return b.String(), true
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

// RuleInfo describes a rule for documentation and the API.
type RuleInfo struct {
	ID          string `json:"id"`
	Description string `json:"description"`
}

// Rules returns every rule in the order they are applied.
func Rules() []RuleInfo {
	out := make([]RuleInfo, len(rules))
	for i, r := range rules {
		out[i] = RuleInfo{ID: r.id, Description: r.desc}
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
