// Package auth owns vmexec's API keys: their shape, their storage (hashed), the
// daemon's view of them (a cache refreshed from the database every second), and the
// per-key limits (a token-bucket rate and caps on concurrent runs and sandboxes).
//
// Terms:
//
//   - A key's secret is "vmx_" followed by 40 lowercase hex digits (160 random bits
//     from crypto/rand). The same secret is accepted as "e2b_" + the same hex, for
//     the E2B-compatible surface. Only the secret's SHA-256 (of the hex part) is
//     stored; a plain hash is enough for random 160-bit secrets, which cannot be
//     guessed, so no slow password hash is needed. Secrets are never logged.
//   - A key has a unique name (unique among keys not revoked); `keys list` and the
//     history show the name, never the secret.
//   - A Principal is what a request carrying a valid key acts as: an admin key is the
//     operator (it may do anything, as requests on an open loopback daemon may); a
//     key scoped to agent patterns (path.Match globs such as "team-a-*") may act only
//     as matching agent ids.
//
// Lifecycle: `vmexec keys create/revoke` write the database directly, daemon
// running or not. A running daemon's Cache reloads the keys every RefreshEvery, so a
// new or revoked key takes effect within about a second. Revoking keeps the row
// (list shows it revoked) and the name may be reused. Once any key has been created,
// the daemon requires keys on every route but the public ones, even if every key has
// since been revoked: revoking the last key closes the daemon, it never opens it.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"
)

// Prefix and E2BPrefix start a key's secret; the 40 hex digits that follow are the
// same secret either way.
const (
	Prefix    = "vmx_"
	E2BPrefix = "e2b_"
	hexLen    = 40
)

var (
	// ErrUnauthenticated: no key, a malformed one, an unknown one or a revoked one.
	// The four are indistinguishable to the caller on purpose.
	ErrUnauthenticated = errors.New("a valid API key is required")
	// ErrInvalid: a key definition that cannot be stored (bad name, pattern, rate).
	ErrInvalid = errors.New("invalid key")
	// ErrNotFound: no live key has that name.
	ErrNotFound = errors.New("no such key")
	// ErrExists: a live key already has that name.
	ErrExists = errors.New("a key with that name exists")
)

// Key is a stored key, without its secret.
type Key struct {
	ID   string // random, stable; the row's identity (names can be reused after revoking)
	Name string
	// Hash is the hex SHA-256 of the secret's 40 hex digits.
	Hash  string
	Admin bool
	// Agents are path.Match patterns of the agent ids the key may act as; empty for
	// an admin key.
	Agents []string
	// Rate is the sustained request rate allowed, per second (0: unlimited); the
	// bucket holds Burst() requests.
	Rate float64
	// MaxSandboxes caps the sandboxes that exist in the key's scope (0: no cap).
	MaxSandboxes int
	// MaxRuns caps the key's runs in progress at once (0: no cap).
	MaxRuns    int
	CreatedAt  time.Time
	LastUsedAt time.Time // zero: never used
	RevokedAt  time.Time // zero: live
}

// Revoked reports whether the key was revoked.
func (k Key) Revoked() bool { return !k.RevokedAt.IsZero() }

// Burst is the token bucket's size: a second's worth of requests, at least 1.
func (k Key) Burst() float64 { return math.Max(1, math.Ceil(k.Rate)) }

// Scope describes what the key may act as, for listings.
func (k Key) Scope() string {
	if k.Admin {
		return "admin"
	}
	return "agents " + strings.Join(k.Agents, ",")
}

// Validate checks a key definition.
func (k Key) Validate() error {
	if k.Name == "" || len(k.Name) > 64 || strings.ContainsFunc(k.Name, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) {
		return fmt.Errorf("name %q: want 1 to 64 letters, digits, '-', '_' or '.': %w", k.Name, ErrInvalid)
	}
	if k.Admin == (len(k.Agents) > 0) {
		return fmt.Errorf("key %s: give either --admin or --agents PATTERN,... (a key must say what it may act as): %w", k.Name, ErrInvalid)
	}
	for _, p := range k.Agents {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return fmt.Errorf("agent pattern %q: not a valid glob (path.Match syntax: *, ?, [a-z]): %w", p, ErrInvalid)
		}
	}
	if k.Rate < 0 || math.IsNaN(k.Rate) || math.IsInf(k.Rate, 0) || k.MaxSandboxes < 0 || k.MaxRuns < 0 {
		return fmt.Errorf("key %s: rate and caps must not be negative: %w", k.Name, ErrInvalid)
	}
	return nil
}

// Generate makes a new secret and its hash. The secret is shown once and never
// stored.
func Generate() (secret, hash string, err error) {
	b := make([]byte, hexLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	h := hex.EncodeToString(b)
	return Prefix + h, hashHex(h), nil
}

// E2BForm is a key's secret in its e2b_ form, the one E2B's SDKs take as
// E2B_API_KEY (older SDKs check for ^e2b_[0-9a-f]+$): the same 40 hex digits after
// "e2b_" instead of "vmx_". A secret in neither form is returned unchanged.
func E2BForm(secret string) string {
	if h, ok := strings.CutPrefix(secret, Prefix); ok {
		return E2BPrefix + h
	}
	return secret
}

// NewID returns a random row id for a key.
func NewID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "key-" + hex.EncodeToString(b)
}

func hashHex(h string) string {
	sum := sha256.Sum256([]byte(h))
	return hex.EncodeToString(sum[:])
}

// HashSecret returns the stored hash of a secret presented by a client, or
// ErrUnauthenticated when it is not shaped like a key (either prefix, 40 hex digits).
func HashSecret(secret string) (string, error) {
	var h string
	switch {
	case strings.HasPrefix(secret, Prefix):
		h = secret[len(Prefix):]
	case strings.HasPrefix(secret, E2BPrefix):
		h = secret[len(E2BPrefix):]
	default:
		return "", ErrUnauthenticated
	}
	if len(h) != hexLen || strings.ContainsFunc(h, func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') }) {
		return "", ErrUnauthenticated
	}
	return hashHex(h), nil
}

// ParseRate reads a rate: "10", "10/s", "600/m" or "3600/h", as requests per second.
func ParseRate(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	num, unit, _ := strings.Cut(s, "/")
	per := map[string]float64{"": 1, "s": 1, "m": 60, "h": 3600}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || per == 0 || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("rate %q: want N, N/s, N/m or N/h: %w", s, ErrInvalid)
	}
	return v / per, nil
}

// Store is where keys live: the data dir's database (internal/history/sqlite), which
// the `keys` commands and a running daemon share (SQLite's locking orders their
// writes). Every method is one statement or one transaction: it takes effect whole or
// not at all.
type Store interface {
	// CreateKey stores a new live key. It fails with ErrInvalid for a key that does
	// not Validate and ErrExists if a live key has its name; nothing is stored then.
	CreateKey(ctx context.Context, k Key) error
	// ListKeys returns every key, revoked ones included, oldest first. An error means
	// the keys could not be read; the caller must not take it as "no keys".
	ListKeys(ctx context.Context) ([]Key, error)
	// RevokeKey revokes the live key named name at at; ErrNotFound if there is none
	// (revoking twice is ErrNotFound the second time).
	RevokeKey(ctx context.Context, name string, at time.Time) error
	// TouchKeys records when keys (by id) were last used; it never moves a time
	// back, and ignores ids it does not know.
	TouchKeys(ctx context.Context, used map[string]time.Time) error
}
