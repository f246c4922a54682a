package redact

import (
	"regexp"
	"strings"
	"unicode"
)

// Rule ids. They are stable: they appear in output and in configs.
const (
	RulePrivateKey   = "private_key"
	RuleJWT          = "jwt"
	RuleAnthropic    = "anthropic"
	RuleOpenAI       = "openai"
	RuleGitHub       = "github"
	RuleNPM          = "npm"
	RuleSlack        = "slack"
	RuleGoogleAPIKey = "google_api_key"
	RuleStripe       = "stripe"
	RuleAzure        = "azure_key"
	RuleAWSAccessKey = "aws_access_key_id"
	RuleAWSSecret    = "aws_secret_access_key"
	RuleBearer       = "bearer"
	RuleBasicAuth    = "basic_auth"
	RuleURLPassword  = "url_password"
	RuleSecretAssign = "secret_assignment"
	redactedPrefix   = "[REDACTED:"
	tokenChars       = `A-Za-z0-9_-`
	base64Alphabet   = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
	tokenAlphabet    = base64Alphabet + "._~-"
)

// A rule finds secrets either with a regular expression (re, group, valid)
// or with its own linear scanner (find).
//
// Provider token rules do not require a word boundary before or after the
// token: a key glued to the text around it (x + ghp_..., "key:"sk-...) is
// still a key. Formats of a fixed length take that length (ghp_ and 36,
// AKIA and 16); the others take the whole run of their alphabet. Only a
// Google key, whose prefix AIza turns up in base64, must be followed by a
// character outside its alphabet (or the end), so the same letters inside a
// longer run (a base64 image) are not taken for a key.
type rule struct {
	id   string
	desc string // "" for the second and later entries of the same id
	re   *regexp.Regexp
	// group lists submatch groups holding the secret, first non-empty wins;
	// none means the whole match.
	group []int
	// find, instead of re, yields the [start, end) of each secret in s, in
	// increasing order, without overlaps, in time linear in len(s).
	find func(s string, yield func(start, end int) bool)
	// hints are substrings one of which must occur for the rule to apply;
	// a cheap test before running the expression.
	hints     []string
	foldHints bool // hints are lower-case and matched ignoring case
	// valid, when set, vets a candidate secret; false keeps it. match holds
	// the submatches; before is the byte before the match, 0 at the start.
	valid func(secret string, match []string, before byte) bool
}

// rules in the order they are applied: specific formats first, so generic
// rules see "[REDACTED:...]" instead of a known token. An id may have
// several entries (applied in turn); only the first has a description.
var rules = []rule{
	{
		id: RulePrivateKey,
		desc: "PEM and PGP private key blocks: the BEGIN line, the key text and the END line; when the END line is missing, " +
			"the key text up to a blank line or other text, and at most 32 KiB.",
		find:  privateKeys,
		hints: []string{"PRIVATE KEY"},
	},
	{
		id:    RuleJWT,
		desc:  "JSON Web Tokens: eyJ... . eyJ... . signature.",
		re:    regexp.MustCompile(`eyJ[` + tokenChars + `]{8,}\.eyJ[` + tokenChars + `]{8,}\.[` + tokenChars + `]*`),
		hints: []string{"eyJ"},
	},
	{
		id:    RuleAnthropic,
		desc:  "Anthropic API keys (sk-ant-...).",
		re:    regexp.MustCompile(`sk-ant-[` + tokenChars + `]{20,}`),
		hints: []string{"sk-ant-"},
	},
	{
		id:    RuleOpenAI,
		desc:  "OpenAI API keys (sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...) that look generated (mixed case and digits).",
		re:    regexp.MustCompile(`sk-(?:(?:proj|svcacct|admin)-)?([` + tokenChars + `]{20,})`),
		hints: []string{"sk-"},
		valid: func(_ string, m []string, _ byte) bool { return looksRandom(m[1]) },
	},
	{
		id:    RuleGitHub,
		desc:  "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_ and 36 letters and digits; github_pat_...).",
		re:    regexp.MustCompile(`gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{30,}`),
		hints: []string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"},
	},
	{
		id:    RuleNPM,
		desc:  "npm access tokens (npm_ and 36 letters and digits).",
		re:    regexp.MustCompile(`npm_[A-Za-z0-9]{36}`),
		hints: []string{"npm_"},
	},
	{
		id:    RuleSlack,
		desc:  "Slack tokens (xoxb-, xoxa-, xoxp-, xoxr-, xoxs-) and incoming webhook URLs.",
		re:    regexp.MustCompile(`xox[baprs]-[A-Za-z0-9-]{10,}`),
		hints: []string{"xox"},
	},
	{
		id:    RuleSlack,
		re:    regexp.MustCompile(`https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+`),
		hints: []string{"hooks.slack.com"},
	},
	{
		id:    RuleGoogleAPIKey,
		desc:  "Google API keys (AIza...).",
		re:    regexp.MustCompile(`(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)`),
		group: []int{1},
		hints: []string{"AIza"},
	},
	{
		id:    RuleStripe,
		desc:  "Stripe secret and restricted keys (sk_live_, rk_live_, sk_test_, rk_test_).",
		re:    regexp.MustCompile(`[sr]k_(?:live|test)_([0-9A-Za-z]{16,})`),
		hints: []string{"k_live_", "k_test_"},
		// Glued to a word (risk_test_...), only a generated-looking key.
		valid: func(_ string, m []string, before byte) bool { return !isWordByte(before) || looksRandom(m[1]) },
	},
	{
		id: RuleAzure,
		desc: "Azure storage account keys (AccountKey=... in connection strings, AZURE_STORAGE_KEY=...: 88 characters of base64) " +
			"and shared access keys (SharedAccessKey=...: 44).",
		find:      (&assignment{names: []string{"accountkey", "storagekey", "storageaccesskey"}, value: base64Value(88, 2)}).find,
		hints:     []string{"key"},
		foldHints: true,
	},
	{
		id:        RuleAzure,
		find:      (&assignment{names: []string{"sharedaccesskey"}, value: base64Value(44, 1)}).find,
		hints:     []string{"sharedaccesskey"},
		foldHints: true,
	},
	{
		id:    RuleAWSAccessKey,
		desc:  "AWS access key ids (AKIA..., ASIA...).",
		find:  func(s string, yield func(start, end int) bool) { awsKeyIDs(s, false, yield) },
		hints: awsKeyPrefixes,
	},
	{
		id: RuleAWSSecret,
		desc: "AWS secret access keys: after their name (aws_secret_access_key = ..., \"SecretAccessKey\": \"...\"), " +
			"or 40 generated-looking base64 characters within 128 bytes of an AWS access key id.",
		find:      (&assignment{names: []string{"secretaccesskey", "awssecretkey"}, value: awsSecretValue}).find,
		hints:     []string{"secret"},
		foldHints: true,
	},
	{
		id:    RuleAWSSecret,
		find:  awsPairedSecrets,
		hints: []string{"AKIA", "ASIA", "ABIA", "ACCA", awsKeyMarker},
	},
	{
		id:        RuleBearer,
		desc:      "Bearer tokens (Authorization: Bearer xxx); \"Bearer \" is kept.",
		find:      headerCredentials("bearer", false, tokenAlphabet, randomLooking),
		hints:     []string{"bearer"},
		foldHints: true,
	},
	{
		id:        RuleBasicAuth,
		desc:      "HTTP basic credentials (Authorization: Basic xxx); the header is kept.",
		find:      headerCredentials("basic", true, base64Alphabet, nil),
		hints:     []string{"basic"},
		foldHints: true,
	},
	{
		id:    RuleURLPassword,
		desc:  "Passwords in URLs (scheme://user:password@host); the user is kept.",
		re:    regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@`),
		group: []int{1},
		hints: []string{"://"},
	},
	{
		id: RuleSecretAssign,
		desc: "Values assigned to names ending in password, passwd, passphrase, secret, token, api_key, " +
			"access_key, private_key or client_secret (password=x, \"token\": \"x\", API_KEY: x); the name is kept.",
		find: (&assignment{names: []string{"password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey"},
			value: plainValue, valid: assignedSecret}).find,
		hints:     []string{"pass", "secret", "token", "key"},
		foldHints: true,
	},
}

// randomLooking reports whether s looks like generated key material rather
// than words: long, or mixing letters and digits. It accepts hex; see
// looksRandom for a stricter test.
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

// looksRandom reports whether s looks like random base62 or base64: upper-
// and lower-case letters and digits (or + and /) all occur, and the class
// changes between at least a third of adjacent characters, as it does for
// about 60 % of them in random text. Words, identifiers (ReportGenerator2),
// hex digests and upper-case-only ids do not qualify. Other characters
// (- and _ in tokens) are ignored.
func looksRandom(s string) bool {
	var seen [3]bool
	pairs, changes, prev := 0, 0, -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		class := -1
		switch {
		case 'A' <= c && c <= 'Z':
			class = 0
		case 'a' <= c && c <= 'z':
			class = 1
		case '0' <= c && c <= '9', c == '+', c == '/':
			class = 2
		}
		if class < 0 {
			continue
		}
		seen[class] = true
		if prev >= 0 {
			pairs++
			if class != prev {
				changes++
			}
		}
		prev = class
	}
	return seen[0] && seen[1] && seen[2] && pairs > 0 && 3*changes >= pairs
}

func isWordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
}

// assignedSecret keeps values that are not secrets: empty values, masks,
// placeholders, variable references, null-like literals and counts
// (max_token: 512). name is the name ending that introduced v.
func assignedSecret(v, name string) bool {
	t := strings.Trim(v, "*xX•. ")
	switch strings.ToLower(v) {
	case "", "null", "none", "nil", "true", "false", "undefined", "required", "optional", "string":
		return false
	}
	if t == "" || strings.HasPrefix(v, "$") || strings.HasPrefix(v, "<") || strings.HasPrefix(v, "%") ||
		strings.HasPrefix(v, "{{") || strings.HasPrefix(v, "os.") || strings.HasPrefix(v, "process.env") {
		return false
	}
	if name == "token" && strings.Trim(v, "0123456789") == "" {
		return false
	}
	return true
}
