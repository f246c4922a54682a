package auth

import (
	"net/http"
	"strings"
)

// HeaderXAPIKey is the header the E2B SDKs send their key in (their control plane's
// requests).
const HeaderXAPIKey = "X-API-KEY"

// Bearer is the token of an "Authorization: Bearer TOKEN" header, or "".
func Bearer(h http.Header) string {
	scheme, tok, ok := strings.Cut(h.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// Presented is the key a request presents: its bearer token, else, when xAPIKey
// (the E2B SDKs' routes), its X-API-KEY header.
func Presented(h http.Header, xAPIKey bool) string {
	if k := Bearer(h); k != "" || !xAPIKey {
		return k
	}
	return strings.TrimSpace(h.Get(HeaderXAPIKey))
}
