package redact

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Test secrets are assembled at run time so that the source does not look
// like it holds real keys to secret scanners.
var (
	openaiKey    = "sk-" + "proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_Ab3dEf6hIj9k-Lm2n"
	openaiLegacy = "sk-" + "T3BlbkFJ9xY8wV7uT6sR5qP4oN3mL2kJ1iH0gF9eD8cB7aZ6"
	anthropicKey = "sk-" + "ant-" + "api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z-AAAA"
	githubPAT    = "ghp_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0123"
	githubFine   = "github_pat_" + "11AB3DEF60abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP"
	githubApp    = "ghs_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0123"
	slackToken   = "xox" + "b-123456789012-1234567890123-Ab3dEf6hIj9kLm2nOp5qRs8t"
	slackHook    = "https://hooks.slack.com/" + "services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
	googleKey    = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
	stripeKey    = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
	stripeRK     = "rk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
	awsKeyID     = "AKIA" + "IOSFODNN7EXAMPLE"
	awsSecret    = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
	jwt          = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ." +
		"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	npmToken   = "npm_" + "aB3dE6fG9hJ2kL5mN8pQ1rS4tU7vW0xY3zA6"
	azureKey   = "kSudfYti2BI4GovM0UGIKsQfZScAeEaNrxomZ48KLbkvKCQ9+wvPSp8uoU40cQwE10KgLdtzopVsPdY5r77bXQ=="
	privateKey = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n/ygWyF8PbnGy0AHB7MhgwBZ0kBB\n-----END " + "RSA PRIVATE KEY-----"
)

func TestRedact(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		hits []string
	}{
		// must redact
		{"openai project key in an env dump", "OPENAI_API_KEY=" + openaiKey + "\nPATH=/usr/bin",
			"OPENAI_API_KEY=[REDACTED:openai]\nPATH=/usr/bin", []string{RuleOpenAI}},
		{"openai legacy key in prose", "using key " + openaiLegacy + " now",
			"using key [REDACTED:openai] now", []string{RuleOpenAI}},
		{"anthropic key is not mistaken for openai", "key: " + anthropicKey,
			"key: [REDACTED:anthropic]", []string{RuleAnthropic}},
		{"github classic token", "token " + githubPAT + " ok", "token [REDACTED:github] ok", []string{RuleGitHub}},
		{"github fine-grained token", githubFine, "[REDACTED:github]", []string{RuleGitHub}},
		{"github app token inside a clone URL", "https://x-access-token:" + githubApp + "@github.com/o/r.git",
			"https://x-access-token:[REDACTED:github]@github.com/o/r.git", []string{RuleGitHub}},
		{"slack bot token", "SLACK=" + slackToken, "SLACK=[REDACTED:slack]", []string{RuleSlack}},
		{"slack webhook", "posting to " + slackHook, "posting to [REDACTED:slack]", []string{RuleSlack}},
		{"google api key in a URL", "https://maps.googleapis.com/x?key=" + googleKey,
			"https://maps.googleapis.com/x?key=[REDACTED:google_api_key]", []string{RuleGoogleAPIKey}},
		{"stripe secret and restricted keys", stripeKey + " " + stripeRK,
			"[REDACTED:stripe] [REDACTED:stripe]", []string{RuleStripe}},
		{"aws key id and secret from a credentials file",
			"[default]\naws_access_key_id = " + awsKeyID + "\naws_secret_access_key = " + awsSecret + "\n",
			"[default]\naws_access_key_id = [REDACTED:aws_access_key_id]\naws_secret_access_key = [REDACTED:aws_secret_access_key]\n",
			[]string{RuleAWSAccessKey, RuleAWSSecret}},
		{"aws secret in sts JSON", `{"AccessKeyId": "ASIA` + "IOSFODNN7EXAMPLE" + `", "SecretAccessKey": "` + awsSecret + `"}`,
			`{"AccessKeyId": "[REDACTED:aws_access_key_id]", "SecretAccessKey": "[REDACTED:aws_secret_access_key]"}`,
			[]string{RuleAWSAccessKey, RuleAWSSecret}},
		{"bearer header keeps Bearer", "Authorization: Bearer abc123DEF456ghi789jkl",
			"Authorization: Bearer [REDACTED:bearer]", []string{RuleBearer}},
		{"bearer JWT is redacted as a JWT", "Authorization: Bearer " + jwt,
			"Authorization: Bearer [REDACTED:jwt]", []string{RuleJWT}},
		{"basic auth header", "Authorization: Basic dXNlcjpwYXNzd29yZA==",
			"Authorization: Basic [REDACTED:basic_auth]", []string{RuleBasicAuth}},
		{"private key block only", "before\n" + privateKey + "\nafter",
			"before\n[REDACTED:private_key]\nafter", []string{RulePrivateKey}},
		{"truncated private key", "key:\n-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAA",
			"key:\n[REDACTED:private_key]", []string{RulePrivateKey}},
		{"jwt alone", "session=" + jwt + ";", "session=[REDACTED:jwt];", []string{RuleJWT}},
		{"password assignment keeps the name", "password=hunter22 user=bob",
			"password=[REDACTED:secret_assignment] user=bob", []string{RuleSecretAssign}},
		{"passwd colon", "passwd: Tr0ub4dor!3x", "passwd: [REDACTED:secret_assignment]", []string{RuleSecretAssign}},
		{"quoted JSON values", `{"db_password": "s3 cr3t", "api_key": 'k-123'}`,
			`{"db_password": "[REDACTED:secret_assignment]", "api_key": '[REDACTED:secret_assignment]'}`, []string{RuleSecretAssign}},
		{"secret and token in a query string", "GET /cb?client_secret=abc123&token=xyz789&page=2",
			"GET /cb?client_secret=[REDACTED:secret_assignment]&token=[REDACTED:secret_assignment]&page=2", []string{RuleSecretAssign}},
		{"env var names", "DB_PASSWORD=pa55word\nGITHUB_TOKEN: gho_short\n",
			"DB_PASSWORD=[REDACTED:secret_assignment]\nGITHUB_TOKEN: [REDACTED:secret_assignment]\n", []string{RuleSecretAssign}},
		{"password in a database URL", "postgres://app:pa55w0rd@db:5432/app",
			"postgres://app:[REDACTED:url_password]@db:5432/app", []string{RuleURLPassword}},
		{"several kinds, hits deduplicated in rule order",
			"a=" + githubPAT + " b=" + githubPAT + " password=x1 " + awsKeyID,
			"a=[REDACTED:github] b=[REDACTED:github] password=[REDACTED:secret_assignment] [REDACTED:aws_access_key_id]",
			[]string{RuleGitHub, RuleAWSAccessKey, RuleSecretAssign}},

		{"github token glued to a letter", "x" + githubPAT, "x[REDACTED:github]", []string{RuleGitHub}},
		{"github token glued on both sides by punctuation", `"tok":"` + githubPAT + `"`, `"tok":"[REDACTED:github]"`, []string{RuleGitHub}},
		{"openai key glued to a word", "mykey" + openaiLegacy, "mykey[REDACTED:openai]", []string{RuleOpenAI}},
		{"aws key id glued to a letter", "id" + awsKeyID + "\n", "id[REDACTED:aws_access_key_id]\n", []string{RuleAWSAccessKey}},
		{"google key glued", "k" + googleKey + "&", "k[REDACTED:google_api_key]&", []string{RuleGoogleAPIKey}},
		{"jwt glued", "t" + jwt, "t[REDACTED:jwt]", []string{RuleJWT}},
		{"npm token in an npmrc", "//registry.npmjs.org/:_authToken=" + npmToken, "//registry.npmjs.org/:_authToken=[REDACTED:npm]", []string{RuleNPM}},
		{"npm token glued", "z" + npmToken, "z[REDACTED:npm]", []string{RuleNPM}},
		{"azure account key in a connection string", "AccountName=a;AccountKey=" + azureKey + ";EndpointSuffix=core.windows.net",
			"AccountName=a;AccountKey=[REDACTED:azure_key];EndpointSuffix=core.windows.net", []string{RuleAzure}},
		{"bare aws secret after its key id", awsKeyID + "," + awsSecret + "\n", "[REDACTED:aws_access_key_id],[REDACTED:aws_secret_access_key]\n",
			[]string{RuleAWSAccessKey, RuleAWSSecret}},
		{"bare aws secret before its key id", "('" + awsSecret + "', '" + awsKeyID + "')", "('[REDACTED:aws_secret_access_key]', '[REDACTED:aws_access_key_id]')",
			[]string{RuleAWSAccessKey, RuleAWSSecret}},
		{"an unterminated private key stops at the text after it", "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n\nexit status 1\nmore",
			"[REDACTED:private_key]\n\nexit status 1\nmore", []string{RulePrivateKey}},
		{"a private key in a JSON string", `{"private_key": "-----BEGIN ` + `PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END ` + `PRIVATE KEY-----\n", "x": 1}`,
			`{"private_key": "[REDACTED:private_key]\n", "x": 1}`, []string{RulePrivateKey}},

		{"a URL password that held a slash until a secret in it was replaced", "https://u:api_key='a/b'@h",
			"https://u:[REDACTED:url_password]@h", []string{RuleURLPassword, RuleSecretAssign}},
		{"tokens glued to each other", npmToken + githubPAT + googleKey + awsKeyID,
			"[REDACTED:npm][REDACTED:github][REDACTED:google_api_key][REDACTED:aws_access_key_id]",
			[]string{RuleGitHub, RuleNPM, RuleGoogleAPIKey, RuleAWSAccessKey}},

		// must not redact
		{"a git hash next to an aws key id is not its secret", awsKeyID + " a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
			"[REDACTED:aws_access_key_id] a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", []string{RuleAWSAccessKey}},
		{"a 40-character base64 run far from any key id", awsSecret + strings.Repeat(" ", 200) + awsKeyID,
			awsSecret + strings.Repeat(" ", 200) + "[REDACTED:aws_access_key_id]", []string{RuleAWSAccessKey}},
		{"the same letters inside a longer run are not a key", "QUJD" + googleKey + "QUJD", "QUJD" + googleKey + "QUJD", nil},
		{"words after a provider prefix", "risk-averse-investment-strategies-2024 task-ReportGenerator2Service risk_test_parametrizedCases2",
			"risk-averse-investment-strategies-2024 task-ReportGenerator2Service risk_test_parametrizedCases2", nil},
		{"an npm config variable", "npm_config_cache=/root/.npm", "npm_config_cache=/root/.npm", nil},
		{"sha512 integrity is not an azure key", `"integrity": "sha512-` + azureKey + `"`, `"integrity": "sha512-` + azureKey + `"`, nil},
		{"a private key header in prose", "a PEM file starts with -----BEGIN " + "RSA PRIVATE KEY----- then the key",
			"a PEM file starts with [REDACTED:private_key] then the key", []string{RulePrivateKey}},
		{"ordinary text", "Hello, world! 2 + 2 = 4", "Hello, world! 2 + 2 = 4", nil},
		{"the word password alone", "Enter the password to continue.\nWrong password", "Enter the password to continue.\nWrong password", nil},
		{"a password prompt with no value", "Password: \n", "Password: \n", nil},
		{"git log hashes", "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3\nMerge: 1a2b3c4 5d6e7f8\n",
			"commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3\nMerge: 1a2b3c4 5d6e7f8\n", nil},
		{"sha256 digests", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", nil},
		{"uuids", "id=123e4567-e89b-12d3-a456-426614174000 request 9b2c7c4e-2f0a-4d55-b3f1-6c1a0e5f3d2b",
			"id=123e4567-e89b-12d3-a456-426614174000 request 9b2c7c4e-2f0a-4d55-b3f1-6c1a0e5f3d2b", nil},
		{"token counts", "max_tokens: 512, prompt_token: 1000, tokens=3", "max_tokens: 512, prompt_token: 1000, tokens=3", nil},
		{"masked and placeholder values", "password=******** token=<your-token> secret=$SECRET api_key=None",
			"password=******** token=<your-token> secret=$SECRET api_key=None", nil},
		{"bearer as a word", "Bearer authentication is configured; the bearer of bad news",
			"Bearer authentication is configured; the bearer of bad news", nil},
		{"sk- in ordinary words", "task-runner sk-learn-is-a-library", "task-runner sk-learn-is-a-library", nil},
		{"a URL with a port but no password", "https://example.com:8443/path and ssh://git@github.com/x",
			"https://example.com:8443/path and ssh://git@github.com/x", nil},
		{"a public key", "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----",
			"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----", nil},
		{"python code mentioning tokenizer", "tokenizer = AutoTokenizer.from_pretrained(name)",
			"tokenizer = AutoTokenizer.from_pretrained(name)", nil},
		{"empty", "", "", nil},
	}
	r, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, hits := r.Redact(tt.in)
			if got != tt.want {
				t.Errorf("Redact(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
			if !reflect.DeepEqual(hits, tt.hits) {
				t.Errorf("hits = %v, want %v", hits, tt.hits)
			}
			// Redacting again changes nothing: markers are not secrets.
			if again, more := r.Redact(got); again != got || more != nil {
				t.Errorf("second pass changed %q to %q (%v)", got, again, more)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	in := "password=hunter22 " + githubPAT
	tests := []struct {
		name    string
		cfg     Config
		want    string
		wantErr bool
	}{
		{"default redacts", DefaultConfig(), "password=[REDACTED:secret_assignment] [REDACTED:github]", false},
		{"disabled returns the input", Config{}, in, false},
		{"a disabled rule is skipped", Config{Enabled: true, DisabledRules: []string{RuleSecretAssign}},
			"password=hunter22 [REDACTED:github]", false},
		{"unknown rule is an error", Config{Enabled: true, DisabledRules: []string{"nope"}}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.cfg)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("New() error = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := r.Redact(in); got != tt.want {
				t.Errorf("Redact = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRules(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Rules() {
		if r.ID == "" || r.Description == "" || seen[r.ID] {
			t.Errorf("bad or duplicate rule %+v", r)
		}
		seen[r.ID] = true
	}
}

// Large output is redacted in linear time.
func TestRedactLargeOutput(t *testing.T) {
	r, _ := New(DefaultConfig())
	line := "INFO step ok token_count=5 sk-not-a-key bearer of news password AKIA secret: \n key: -----BEGIN\n"
	in := strings.Repeat(line, 20000) + "password=last1"
	got, hits := r.Redact(in)
	if !strings.HasSuffix(got, "password=[REDACTED:secret_assignment]") || len(hits) != 1 {
		t.Errorf("hits %v, tail %q", hits, got[len(got)-60:])
	}
}

// Redaction never makes output much longer than its input: markers longer
// than the secrets they replace (password=x) would otherwise make an output
// at the run's limit several times larger. Before the bound, 1 MiB of short
// tokens came back as 4 MiB.
func TestRedactGrowthBounded(t *testing.T) {
	r, _ := New(DefaultConfig())
	for _, unit := range []string{"password=q ", "token=1a\n", awsKeyID + " ", "https://u:p@h "} {
		in := strings.Repeat(unit, (256<<10)/len(unit))
		out, hits := r.Redact(in)
		if len(out) > len(in)+MaxGrowth {
			t.Errorf("%q: %d bytes in, %d out: more than %d longer", unit, len(in), len(out), MaxGrowth)
		}
		if !strings.HasSuffix(out, CutNotice) || len(hits) == 0 {
			t.Errorf("%q: output does not end with the cut notice (hits %v): %q", unit, hits, out[max(0, len(out)-100):])
		}
		kept := strings.TrimSuffix(out, CutNotice)
		for _, leak := range []string{"=q ", "=1a", awsKeyID, ":p@"} {
			if strings.Contains(kept, leak) {
				t.Errorf("%q: %q left in the kept output", unit, leak)
			}
		}
		if again, _ := r.Redact(out); again != out {
			t.Errorf("%q: a second pass changed the cut output", unit)
		}
	}
	// Secrets as long as their markers do not grow the output: no cut.
	in := strings.Repeat("key "+githubPAT+"\n", 20000)
	if out, _ := r.Redact(in); strings.HasSuffix(out, CutNotice) || len(out) > len(in) {
		t.Errorf("github tokens: %d bytes in, %d out", len(in), len(out))
	}
}

// A private key block is bounded: a BEGIN line without its END does not take
// the rest of the output (before, 6 MB after such a line became 22 bytes).
func TestPrivateKeyBounded(t *testing.T) {
	r, _ := New(DefaultConfig())
	header := "-----BEGIN " + "RSA PRIVATE KEY-----\n"
	body := strings.Repeat("MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwBZ0kBB+abc\n", 20)
	log := strings.Repeat("2026-12-01 INFO step done, 12 items in 3 ms\n", 150_000) // 6 MB
	b64 := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkw", 150_000)  // 6 MB, one line
	tests := []struct {
		name, in, want string
		minLen         int
	}{
		{"key text then a log", header + body + log, "[REDACTED:private_key]\n" + log, 0},
		{"a BEGIN line then a log", header + log, "[REDACTED:private_key]\n" + log, 0},
		{"a BEGIN line then one 1 MB base64 line", header + b64, "", len(b64) - maxKeyBytes},
		{"a complete key then a log", header + body + "-----END " + "RSA PRIVATE KEY-----\n" + log, "[REDACTED:private_key]\n" + log, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, hits := r.Redact(tt.in)
			if tt.want != "" && out != tt.want {
				t.Errorf("got %d bytes starting %q, want %d bytes", len(out), out[:min(len(out), 80)], len(tt.want))
			}
			if len(out) < tt.minLen || !strings.HasPrefix(out, "[REDACTED:private_key]") || len(hits) != 1 {
				t.Errorf("got %d bytes (want at least %d), hits %v", len(out), tt.minLen, hits)
			}
		})
	}
}
