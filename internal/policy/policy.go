package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmexec/vmexec/internal/codeblock"
)

// DefaultMaxCodeBytes is the code size limit when Config.MaxCodeBytes is 0.
const DefaultMaxCodeBytes = 100 * 1024

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid policy config")

// languages are the five supported languages in canonical form.
var languages = []string{codeblock.Python, codeblock.JavaScript, codeblock.Bash, codeblock.Rust, codeblock.Go}

// Decision is the outcome of a Check. The zero value allows the code.
type Decision struct {
	Blocked bool   `json:"blocked"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Config configures a Policy.
type Config struct {
	// Enabled switches the policy on. When false, Check allows everything.
	Enabled bool `json:"enabled" yaml:"enabled"`
	// AllowedLanguages lists the languages that may run, by canonical name
	// or alias ("py", "js", "sh", ...). Empty means all five.
	AllowedLanguages []string `json:"allowed_languages" yaml:"allowed_languages"`
	// MaxCodeBytes limits the size of the code; 0 means DefaultMaxCodeBytes.
	MaxCodeBytes int `json:"max_code_bytes" yaml:"max_code_bytes"`
	// DisabledRules lists rule ids (see Rules) that are not checked.
	DisabledRules []string `json:"disabled_rules" yaml:"disabled_rules"`
}

// DefaultConfig returns an enabled policy allowing all five languages and
// code up to 100 KiB, with every rule on.
func DefaultConfig() Config {
	return Config{
		Enabled:          true,
		AllowedLanguages: slices.Clone(languages),
		MaxCodeBytes:     DefaultMaxCodeBytes,
	}
}

// Validate reports whether c names only known languages and rules and has a
// usable size limit.
func (c Config) Validate() error {
	if c.MaxCodeBytes < 0 {
		return fmt.Errorf("max_code_bytes %d is negative: %w", c.MaxCodeBytes, ErrInvalidConfig)
	}
	for _, l := range c.AllowedLanguages {
		if _, ok := codeblock.Canonical(l); !ok {
			return fmt.Errorf("allowed_languages: unsupported language %q (want one of %s): %w",
				l, strings.Join(languages, ", "), ErrInvalidConfig)
		}
	}
	for _, id := range c.DisabledRules {
		if ruleIndex(id) < 0 {
			return fmt.Errorf("disabled_rules: unknown rule %q: %w", id, ErrInvalidConfig)
		}
	}
	return nil
}

// Policy checks code against a Config. It is safe for concurrent use.
type Policy struct {
	enabled  bool
	allowed  map[string]bool
	allowStr string
	maxBytes int
	disabled map[string]bool
}

// New returns a Policy for c, or an error wrapping ErrInvalidConfig.
func New(c Config) (*Policy, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &Policy{
		enabled:  c.Enabled,
		allowed:  map[string]bool{},
		maxBytes: c.MaxCodeBytes,
		disabled: map[string]bool{},
	}
	if p.maxBytes == 0 {
		p.maxBytes = DefaultMaxCodeBytes
	}
	allowed := c.AllowedLanguages
	if len(allowed) == 0 {
		allowed = languages
	}
	var names []string
	for _, l := range allowed {
		canon, _ := codeblock.Canonical(l)
		if !p.allowed[canon] {
			p.allowed[canon] = true
			names = append(names, canon)
		}
	}
	p.allowStr = strings.Join(names, ", ")
	for _, id := range c.DisabledRules {
		p.disabled[id] = true
	}
	return p, nil
}

// Check decides whether code in language may run. language should be
// canonical (python, javascript, bash, rust, go); aliases are accepted.
func (p *Policy) Check(language, code string) Decision {
	if !p.enabled {
		return Decision{}
	}
	canon, known := codeblock.Canonical(language)
	if !p.disabled[RuleLanguageNotAllowed] {
		switch {
		case !known:
			return p.block(RuleLanguageNotAllowed, fmt.Sprintf(
				"Language %q is not supported; write the code in one of: %s.", language, p.allowStr))
		case !p.allowed[canon]:
			return p.block(RuleLanguageNotAllowed, fmt.Sprintf(
				"Language %q is not allowed on this server; write the code in one of: %s.", canon, p.allowStr))
		}
	}
	if !p.disabled[RuleEmptyCode] && strings.TrimSpace(code) == "" {
		return p.block(RuleEmptyCode, "The code is empty; send the program text to run.")
	}
	if !p.disabled[RuleCodeTooLarge] && len(code) > p.maxBytes {
		return p.block(RuleCodeTooLarge, fmt.Sprintf(
			"The code is %d bytes, over the %d-byte limit; split the work into smaller programs, or generate or download large data at run time instead of embedding it.",
			len(code), p.maxBytes))
	}
	if !known {
		return Decision{}
	}
	a := &analyzer{}
	a.code(canon, code)
	best := -1
	var hit finding
	for _, f := range a.findings {
		i := ruleIndex(f.rule)
		if p.disabled[f.rule] || (best >= 0 && i >= best) {
			continue
		}
		best, hit = i, f
	}
	if best < 0 {
		return Decision{}
	}
	return p.block(hit.rule, rules[best].reason(snippet(hit.text)))
}

func (p *Policy) block(rule, reason string) Decision {
	return Decision{Blocked: true, Rule: rule, Reason: reason}
}

// snippet shortens what a rule matched for quoting in a reason.
func snippet(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	const max = 80
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}
