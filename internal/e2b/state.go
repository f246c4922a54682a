package e2b

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// record is what the E2B surface keeps about a sandbox beyond what the service
// knows: the E2B-only fields the SDK sends and reads back, and the sandbox's end of
// life. The sandbox itself (its state, history, snapshots) is the service's.
type record struct {
	ID         string            `json:"id"`
	AgentID    string            `json:"agent_id,omitempty"`
	TemplateID string            `json:"template_id"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	// EnvVars are the create request's envVars: every command and cell gets them
	// (a request's own envs win).
	EnvVars   map[string]string `json:"env_vars,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	// EndAt is when the sandbox is killed (its E2B timeout).
	EndAt time.Time `json:"end_at"`
}

// registry holds the records, the expiry timers, and the secret the sandboxes'
// access tokens derive from. With a path, every change is saved to it (one JSON
// file, replaced atomically), and New loads it: records, timers and tokens survive
// a daemon restart. Without one they live in memory.
type registry struct {
	path   string
	secret []byte
	log    *slog.Logger
	expire func(id string) // kills a sandbox whose time is up

	saveMu sync.Mutex
	mu     sync.Mutex
	recs   map[string]*record
	timers map[string]*time.Timer
	closed bool
}

type stateFile struct {
	Secret  string    `json:"secret"`
	Records []*record `json:"sandboxes"`
}

func newRegistry(path string, log *slog.Logger, expire func(string)) (*registry, error) {
	if path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("e2b state: %w", err)
		}
	}
	g := &registry{path: path, log: log, expire: expire, recs: map[string]*record{}, timers: map[string]*time.Timer{}}
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("e2b state: %w", err)
		default:
			var st stateFile
			secret, herr := []byte(nil), error(nil)
			err := json.Unmarshal(b, &st)
			if err == nil {
				secret, herr = hex.DecodeString(st.Secret)
			}
			if err != nil || herr != nil || len(secret) < 16 {
				// Kept aside for a look, not lost; the E2B sandboxes' timers and tokens
				// start afresh (the sandboxes themselves are the service's).
				aside := path + ".corrupt"
				os.Rename(path, aside)
				log.Error("the E2B state file is unreadable; moved aside, starting afresh", "path", path, "aside", aside, "err", errors.Join(err, herr))
				break
			}
			g.secret = secret
			for _, r := range st.Records {
				g.recs[r.ID] = r
			}
		}
	}
	if g.secret == nil {
		g.secret = make([]byte, 32)
		rand.Read(g.secret)
	}
	return g, nil
}

// start arms the timers of the loaded records; alive reports whether a sandbox still
// exists (a record whose sandbox is gone is dropped).
func (g *registry) start(alive func(id string) bool) {
	g.mu.Lock()
	for id, r := range g.recs {
		if !alive(id) {
			delete(g.recs, id)
			continue
		}
		g.armLocked(r)
	}
	g.mu.Unlock()
	g.save()
}

// token is the sandbox's access token of the given kind ("envd" or "traffic"):
// derived from the registry's secret, so it is the same on every connect and after
// a restart, and none is stored.
func (g *registry) token(kind, id string) string {
	m := hmac.New(sha256.New, g.secret)
	m.Write([]byte(kind + "\x00" + id))
	return hex.EncodeToString(m.Sum(nil))[:40]
}

// tokenOK reports whether tok is the sandbox's token of that kind.
func (g *registry) tokenOK(kind, id, tok string) bool {
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(g.token(kind, id))) == 1
}

// get returns a copy of id's record.
func (g *registry) get(id string) (record, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.recs[id]
	if !ok {
		return record{}, false
	}
	return *r, true
}

// all returns copies of every record, oldest first.
func (g *registry) all() []record {
	g.mu.Lock()
	out := make([]record, 0, len(g.recs))
	for _, r := range g.recs {
		out = append(out, *r)
	}
	g.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// put stores r and (re)arms its timer.
func (g *registry) put(r record) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.recs[r.ID] = &r
	g.armLocked(&r)
	g.mu.Unlock()
	g.save()
}

// setEnd moves id's end of life to end (only later, with extendOnly); false when
// there is no record.
func (g *registry) setEnd(id string, end time.Time, extendOnly bool) bool {
	g.mu.Lock()
	r, ok := g.recs[id]
	if ok && !(extendOnly && end.Before(r.EndAt)) {
		r.EndAt = end
		g.armLocked(r)
	}
	g.mu.Unlock()
	if ok {
		g.save()
	}
	return ok
}

// drop forgets id.
func (g *registry) drop(id string) {
	g.mu.Lock()
	_, ok := g.recs[id]
	delete(g.recs, id)
	if t := g.timers[id]; t != nil {
		t.Stop()
		delete(g.timers, id)
	}
	g.mu.Unlock()
	if ok {
		g.save()
	}
}

// armLocked (re)starts r's expiry timer; g.mu held.
func (g *registry) armLocked(r *record) {
	if t := g.timers[r.ID]; t != nil {
		t.Stop()
	}
	id := r.ID
	g.timers[id] = time.AfterFunc(max(0, time.Until(r.EndAt)), func() {
		g.mu.Lock()
		cur, ok := g.recs[id]
		due := ok && !g.closed && !time.Now().Before(cur.EndAt)
		g.mu.Unlock()
		if due {
			g.expire(id)
		}
	})
}

// close stops the timers; the records stay on disk for the next start.
func (g *registry) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for _, t := range g.timers {
		t.Stop()
	}
}

// save writes the state file, if there is one. A failure is logged: the sandboxes
// work on, and a restart loses their E2B timers and fields.
func (g *registry) save() {
	if g.path == "" {
		return
	}
	g.saveMu.Lock() // saves in order: the last write holds the newest state
	defer g.saveMu.Unlock()
	g.mu.Lock()
	st := stateFile{Secret: hex.EncodeToString(g.secret), Records: make([]*record, 0, len(g.recs))}
	for _, r := range g.recs {
		c := *r
		st.Records = append(st.Records, &c)
	}
	g.mu.Unlock()
	sort.Slice(st.Records, func(i, j int) bool { return st.Records[i].ID < st.Records[j].ID })
	b, _ := json.MarshalIndent(st, "", " ")
	if err := writeAtomic(g.path, b); err != nil {
		g.log.Error("saving the E2B state; a restart loses the E2B sandboxes' timers", "path", g.path, "err", err)
	}
}

// writeAtomic replaces path with b: a crash leaves the old file or the new one.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".e2b-state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
