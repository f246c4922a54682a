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

		// must not redact
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
	line := "INFO step ok token_count=5 sk-not-a-key bearer of news password\n"
	in := strings.Repeat(line, 20000) + "password=last1"
	got, hits := r.Redact(in)
	if !strings.HasSuffix(got, "password=[REDACTED:secret_assignment]") || len(hits) != 1 {
		t.Errorf("hits %v, tail %q", hits, got[len(got)-60:])
	}
}
