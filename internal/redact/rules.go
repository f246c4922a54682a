package redact

import (
	"regexp"
	"strings"
	"unicode"
)

// Rule ids. They are stable: they appear in output and in configs.
const (
	RulePrivateKey    = "private_key"
	RuleJWT           = "jwt"
	RuleAnthropic     = "anthropic"
	RuleOpenAI        = "openai"
	RuleGitHub        = "github"
	RuleSlack         = "slack"
	RuleGoogleAPIKey  = "google_api_key"
	RuleStripe        = "stripe"
	RuleAWSAccessKey  = "aws_access_key_id"
	RuleAWSSecret     = "aws_secret_access_key"
	RuleBearer        = "bearer"
	RuleBasicAuth     = "basic_auth"
	RuleURLPassword   = "url_password"
	RuleSecretAssign  = "secret_assignment"
	redactedPrefix    = "[REDACTED:"
	tokenChars        = `A-Za-z0-9_-`
	assignmentValueRe = `(?:"([^"\n]*)"|'([^'\n]*)'|([^\s"'` + "`" + `,;&<>(){}\[\]]+))`
)

type rule struct {
	id    string
	desc  string
	re    *regexp.Regexp
	group []int // submatch groups holding the secret, first non-empty wins; none means the whole match
	// hints are substrings one of which must occur for the rule to apply;
	// a cheap test before running the expression.
	hints     []string
	foldHints bool // hints are lower-case and matched ignoring case
	// valid, when set, vets a candidate secret; false keeps it.
	valid func(secret string, match []string) bool
}

// rules in the order they are applied: specific formats first, so generic
// rules see "[REDACTED:...]" instead of a known token.
var rules = []rule{
	{
		id:    RulePrivateKey,
		desc:  "PEM and PGP private key blocks, BEGIN to END (to the end of the key text when the END line is missing).",
		re:    regexp.MustCompile(`-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)`),
		hints: []string{"PRIVATE KEY"},
	},
	{
		id:    RuleJWT,
		desc:  "JSON Web Tokens: eyJ... . eyJ... . signature.",
		re:    regexp.MustCompile(`\beyJ[` + tokenChars + `]{8,}\.eyJ[` + tokenChars + `]{8,}\.[` + tokenChars + `]*`),
		hints: []string{"eyJ"},
	},
	{
		id:    RuleAnthropic,
		desc:  "Anthropic API keys (sk-ant-...).",
		re:    regexp.MustCompile(`\bsk-ant-[` + tokenChars + `]{20,}`),
		hints: []string{"sk-ant-"},
	},
	{
		id:    RuleOpenAI,
		desc:  "OpenAI API keys (sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...).",
		re:    regexp.MustCompile(`\bsk-(?:(?:proj|svcacct|admin)-)?([` + tokenChars + `]{20,})`),
		hints: []string{"sk-"},
		valid: func(_ string, m []string) bool { return randomLooking(m[1]) },
	},
	{
		id:    RuleGitHub,
		desc:  "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_).",
		re:    regexp.MustCompile(`\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b`),
		hints: []string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"},
	},
	{
		id:    RuleSlack,
		desc:  "Slack tokens (xoxb-, xoxa-, xoxp-, xoxr-, xoxs-) and incoming webhook URLs.",
		re:    regexp.MustCompile(`\bxox[baprs]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+`),
		hints: []string{"xox", "hooks.slack.com"},
	},
	{
		id:    RuleGoogleAPIKey,
		desc:  "Google API keys (AIza...).",
		re:    regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}`),
		hints: []string{"AIza"},
	},
	{
		id:    RuleStripe,
		desc:  "Stripe secret and restricted keys (sk_live_, rk_live_, sk_test_, rk_test_).",
		re:    regexp.MustCompile(`\b[sr]k_(?:live|test)_[0-9A-Za-z]{16,}`),
		hints: []string{"k_live_", "k_test_"},
	},
	{
		id:    RuleAWSAccessKey,
		desc:  "AWS access key ids (AKIA..., ASIA...).",
		re:    regexp.MustCompile(`\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b`),
		hints: []string{"AKIA", "ASIA", "ABIA", "ACCA"},
	},
	{
		id:        RuleAWSSecret,
		desc:      "AWS secret access keys after their name: aws_secret_access_key = ..., \"SecretAccessKey\": \"...\".",
		re:        regexp.MustCompile(`(?i)(?:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9/+=]{40})(?:[^A-Za-z0-9/+=]|$)`),
		group:     []int{1},
		hints:     []string{"secret"},
		foldHints: true,
	},
	{
		id:        RuleBearer,
		desc:      "Bearer tokens (Authorization: Bearer xxx); \"Bearer \" is kept.",
		re:        regexp.MustCompile(`(?i)\bbearer[ \t]+([A-Za-z0-9._~+/=-]{8,})`),
		group:     []int{1},
		hints:     []string{"bearer"},
		foldHints: true,
		valid:     func(s string, _ []string) bool { return randomLooking(s) },
	},
	{
		id:        RuleBasicAuth,
		desc:      "HTTP basic credentials (Authorization: Basic xxx); the header is kept.",
		re:        regexp.MustCompile(`(?i)\bauthorization:[ \t]*basic[ \t]+([A-Za-z0-9+/=]{8,})`),
		group:     []int{1},
		hints:     []string{"basic"},
		foldHints: true,
	},
	{
		id:    RuleURLPassword,
		desc:  "Passwords in URLs (scheme://user:password@host); the user is kept.",
		re:    regexp.MustCompile(`\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@`),
		group: []int{1},
		hints: []string{"://"},
	},
	{
		id: RuleSecretAssign,
		desc: "Values assigned to names ending in password, passwd, passphrase, secret, token, api_key, " +
			"access_key, private_key or client_secret (password=x, \"token\": \"x\", API_KEY: x); the name is kept.",
		re: regexp.MustCompile(`(?i)\b([A-Za-z0-9_.-]*?(?:password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|client[_-]?secret))` +
			`["']?[ \t]*[:=][ \t]*` + assignmentValueRe),
		group:     []int{2, 3, 4},
		hints:     []string{"pass", "secret", "token", "key"},
		foldHints: true,
		valid:     assignedSecret,
	},
}

// randomLooking reports whether s looks like generated key material rather
// than words: long, or mixing letters and digits.
func randomLooking(s string) bool {
	var upper, lower, digit bool
	for _, c := range s {
		switch {
		case unicode.IsUpper(c):
			upper = true
		case unicode.IsLower(c):
			lower = true
		case unicode.IsDigit(c):
			digit = true
		}
	}
	return len(s) >= 32 || digit && (upper || lower) && (upper && lower || len(s) >= 16)
}

// assignedSecret keeps values that are not secrets: empty values, masks,
// placeholders, variable references, null-like literals and counts
// (max_token: 512).
func assignedSecret(v string, m []string) bool {
	t := strings.Trim(v, "*xX•. ")
	switch strings.ToLower(v) {
	case "", "null", "none", "nil", "true", "false", "undefined", "required", "optional", "string":
		return false
	}
	if t == "" || strings.HasPrefix(v, "$") || strings.HasPrefix(v, "<") || strings.HasPrefix(v, "%") ||
		strings.HasPrefix(v, "{{") || strings.HasPrefix(v, "os.") || strings.HasPrefix(v, "process.env") {
		return false
	}
	if key := strings.ToLower(m[1]); strings.HasSuffix(key, "token") && strings.Trim(v, "0123456789") == "" {
		return false
	}
	return true
}
