package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
)

// Commands: process.Process/Start runs one as a vmexec run (bash), streaming its
// output as it comes; SendSignal stops it; List lists the running ones.

// processConfig is envd's ProcessConfig.
type processConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Envs map[string]string `json:"envs"`
	Cwd  string            `json:"cwd"`
}

type startRequest struct {
	Process processConfig   `json:"process"`
	Stdin   bool            `json:"stdin"`
	Tag     string          `json:"tag"`
	PTY     json.RawMessage `json:"pty"`
}

// proc is a command in progress, known by the pid the surface gave it.
type proc struct {
	pid    uint32
	cfg    processConfig
	tag    string
	cancel context.CancelFunc
	killed atomic.Bool // stopped by SendSignal (or its sandbox's kill), not by its client
}

// kill stops the command.
func (p *proc) kill() {
	p.killed.Store(true)
	p.cancel()
}

// keepaliveEvery is how often a quiet command's stream gets a keepalive event (the
// SDK asks for one at least every 50 s).
const keepaliveEvery = 20 * time.Second

// code turns a process config into the bash program of a run: the SDK's
// `/bin/bash -l -c CMD` is CMD itself; anything else is the command line, quoted.
func (c processConfig) code() string {
	if (c.Cmd == "/bin/bash" || c.Cmd == "bash" || c.Cmd == "/bin/sh" || c.Cmd == "sh") && len(c.Args) >= 2 && c.Args[len(c.Args)-2] == "-c" {
		return c.Args[len(c.Args)-1]
	}
	words := []string{shellQuote(c.Cmd)}
	for _, a := range c.Args {
		words = append(words, shellQuote(a))
	}
	return strings.Join(words, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// streamTimeout is the run's time limit: the client's Connect-Timeout-Ms (the SDK's
// timeoutMs, 60 s by default), capped at the server's maximum, which is also the
// limit of a command without one (timeoutMs: 0).
func (h *Handler) streamTimeout(r *http.Request) int64 {
	_, max := h.svc.Limits()
	ms, err := strconv.ParseInt(r.Header.Get("Connect-Timeout-Ms"), 10, 64)
	if err != nil || ms <= 0 {
		return max.TimeoutMS
	}
	return min(ms, max.TimeoutMS)
}

func (h *Handler) processStart(w http.ResponseWriter, r *http.Request) {
	rec := recOf(r)
	var in startRequest
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, ctConnectJSON) {
		startStream(w).end(h.streamError(r, fmt.Errorf("Start is a server stream: Content-Type %s, not %q: %w", ctConnectJSON, ct, errBadRequest)))
		return
	}
	if err := readStreamRequest(r.Body, &in); err != nil {
		startStream(w).end(h.streamError(r, err))
		return
	}
	if len(in.PTY) > 0 && string(in.PTY) != "null" {
		startStream(w).end(h.streamError(r, fmt.Errorf("a PTY (sandbox.pty): %w", errUnsupported)))
		return
	}
	if in.Stdin {
		startStream(w).end(h.streamError(r, fmt.Errorf("stdin: true (a command fed by sendStdin): %w", errUnsupported)))
		return
	}
	env := maps.Clone(rec.EnvVars)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, in.Process.Envs)
	no := false
	req := api.ExecRequest{AgentID: rec.AgentID, SandboxID: rec.ID, Language: "bash", Code: in.Process.code(), Env: env,
		WorkDir: in.Process.Cwd, Limits: api.Limits{TimeoutMS: h.streamTimeout(r)}}
	if !h.rollbackFor(r.Context(), rec.AgentID) {
		req.History = &api.ExecPolicy{AutoRollbackOnFailure: &no}
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	p := h.addProc(rec.ID, in.Process, in.Tag, cancel)
	defer h.removeProc(rec.ID, p.pid)

	st := startStream(w)
	st.send(event{"start": map[string]any{"pid": p.pid}})
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keepalives while the command is quiet
		defer wg.Done()
		t := time.NewTicker(keepaliveEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				st.send(event{"keepalive": struct{}{}})
			}
		}
	}()
	res, err := h.svc.ExecStream(ctx, req, func(stream string, b []byte) {
		key := "stdout"
		if stream == agentproto.StreamStderr {
			key = "stderr"
		}
		st.send(event{"data": map[string][]byte{key: b}})
	})
	close(done)
	wg.Wait()
	if err != nil && p.killed.Load() && errors.Is(err, context.Canceled) {
		// Killed before the run began (while it queued or its snapshot was taken):
		// it ends as a killed command, as one killed while running does.
		res, err = &api.ExecResult{Verdict: api.VerdictCanceled, ExitCode: -1}, nil
	}
	if err != nil {
		st.end(h.streamError(r, err))
		return
	}
	h.endProcess(st, res, req.Limits.TimeoutMS)
}

// event is one ProcessEvent, sent as {"event": {...}}.
type event map[string]any

func (e event) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"event": map[string]any(e)})
}

// endProcess sends the run's end: its exit as envd reports one (a non-zero code makes
// the SDK throw CommandExitError), or, for a run stopped by its time limit, a
// deadline_exceeded error (the SDK's TimeoutError), as envd does.
func (h *Handler) endProcess(st *stream, res *api.ExecResult, timeoutMS int64) {
	code := res.ExitCode
	status := "exit status " + strconv.Itoa(code)
	switch res.Verdict {
	case api.VerdictOK, api.VerdictNonzeroExit:
	case api.VerdictTimeout:
		st.end(&connectError{Code: codeDeadlineExceeded, Message: "the command ran past its time limit and was stopped: " + res.Error})
		return
	case api.VerdictCanceled:
		code, status = -1, "signal: killed"
	default: // blocked, memory or output limit, killed: say why on stderr
		if res.Error != "" {
			st.send(event{"data": map[string][]byte{"stderr": []byte("vmexec: " + res.Error + "\n")}})
		}
		if code == 0 {
			code = 1
		}
		status = res.Verdict
	}
	end := map[string]any{"exitCode": code, "exited": true, "status": status}
	if res.Verdict != api.VerdictOK && res.Verdict != api.VerdictNonzeroExit && res.Error != "" {
		end["error"] = res.Error
	}
	st.send(event{"end": end})
	st.end(nil)
}

func (h *Handler) addProc(sandboxID string, cfg processConfig, tag string, cancel context.CancelFunc) *proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pid++
	p := &proc{pid: h.pid, cfg: cfg, tag: tag, cancel: cancel}
	if h.procs[sandboxID] == nil {
		h.procs[sandboxID] = map[uint32]*proc{}
	}
	h.procs[sandboxID][p.pid] = p
	return p
}

func (h *Handler) removeProc(sandboxID string, pid uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.procs[sandboxID], pid)
	if len(h.procs[sandboxID]) == 0 {
		delete(h.procs, sandboxID)
	}
}

// stopProcs stops every command running in a sandbox (it is being killed).
func (h *Handler) stopProcs(sandboxID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.procs[sandboxID] {
		p.kill()
	}
}

// selector is envd's ProcessSelector.
type selector struct {
	PID *uint32 `json:"pid"`
	Tag string  `json:"tag"`
}

// find returns the running command sel names in a sandbox.
func (h *Handler) find(sandboxID string, sel selector) *proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.procs[sandboxID] {
		if sel.PID != nil && p.pid == *sel.PID || sel.PID == nil && sel.Tag != "" && p.tag == sel.Tag {
			return p
		}
	}
	return nil
}

// processSignal stops a running command: SIGKILL and SIGTERM both end the run (its
// end event says "signal: killed").
func (h *Handler) processSignal(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Process selector `json:"process"`
		Signal  string   `json:"signal"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	if in.Signal != "SIGNAL_SIGKILL" && in.Signal != "SIGNAL_SIGTERM" && in.Signal != "9" && in.Signal != "15" {
		h.writeRPCError(w, r, fmt.Errorf("signal %q (only SIGKILL and SIGTERM, which stop the command): %w", in.Signal, errUnsupported))
		return
	}
	p := h.find(recOf(r).ID, in.Process)
	if p == nil {
		h.writeRPCError(w, r, fmt.Errorf("no running process with that pid: %w", errNoRoute))
		return
	}
	p.kill()
	writeJSON(w, http.StatusOK, struct{}{})
}

func (h *Handler) processList(w http.ResponseWriter, r *http.Request) {
	var in struct{}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	type info struct {
		Config processConfig `json:"config"`
		PID    uint32        `json:"pid"`
		Tag    string        `json:"tag,omitempty"`
	}
	out := struct {
		Processes []info `json:"processes"`
	}{Processes: []info{}}
	h.mu.Lock()
	for _, p := range h.procs[recOf(r).ID] {
		out.Processes = append(out.Processes, info{Config: p.cfg, PID: p.pid, Tag: p.tag})
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// decodeRPC reads a unary Connect request (application/json) into v, answering the
// error itself; it reports whether to go on.
func (h *Handler) decodeRPC(w http.ResponseWriter, r *http.Request, v any) bool {
	if !isJSON(r.Header.Get("Content-Type")) {
		h.writeRPCError(w, r, fmt.Errorf("unary Connect calls are JSON: Content-Type application/json, not %q: %w", r.Header.Get("Content-Type"), errBadRequest))
		return false
	}
	if err := decodeJSON(r, v); err != nil {
		h.writeRPCError(w, r, err)
		return false
	}
	return true
}
