package sandbox

import "context"

// The caller's identity as the service needs it: the name of the API key a request
// came with, recorded on each run it makes. The service does not authenticate
// anyone; the HTTP layer (internal/auth, internal/httpapi) does, and passes the
// acting agent in each request and the key's name in the context.

type keyNameKey struct{}

// WithKeyName returns ctx naming the API key of the request; runs made under it
// record the name in the history.
func WithKeyName(ctx context.Context, name string) context.Context {
	if name == "" {
		return ctx
	}
	return context.WithValue(ctx, keyNameKey{}, name)
}

func keyNameOf(ctx context.Context) string {
	n, _ := ctx.Value(keyNameKey{}).(string)
	return n
}

// HasDefault reports whether agent has a default sandbox, the one its runs without
// a sandbox id use (a run of an agent without one creates it).
func (s *Service) HasDefault(agent string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.sandboxes[s.byAgent[agent]]
	return ok
}
