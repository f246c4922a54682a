package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Server-Sent Events for the run routes (api/stream.go lists the events).
//
// A request to POST /v1/exec, /v1/sandboxes/{id}/exec or /v1/parse-execute whose Accept
// header names text/event-stream is answered 200 text/event-stream once its body is
// read, whatever follows: output events as the program writes, then exactly one
// `result` (the body the plain call would answer) or one `error` (the {error, code}
// body the plain call would answer with a status, for a request that failed before or
// outside its run). Every event is flushed as it is written. A comment is sent every
// keepAliveEvery so that proxies keep an idle stream open.
//
// A client that goes away cancels the run: net/http cancels the request's context when
// the connection closes, and a failed write cancels it too. A write that cannot finish
// within writeTimeout (a client that stopped reading) counts as gone, so a stalled
// client cannot hold a sandbox.

var (
	keepAliveEvery = 15 * time.Second
	// writeTimeout bounds one write of a stream or a download, and one read of an
	// upload: a client idle that long is treated as gone.
	writeTimeout = 30 * time.Second
)

// wantsEvents reports whether the request asks for Server-Sent Events.
func wantsEvents(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/event-stream" {
				return true
			}
		}
	}
	return false
}

// eventStream writes one SSE response. Its methods are safe for concurrent use.
type eventStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	r      *http.Request
	s      *Server
	cancel context.CancelFunc

	mu   sync.Mutex
	err  error // the first write error: the client is gone
	stop chan struct{}
	done chan struct{}
}

// openStream starts an SSE response and returns it with the context the run should
// use: it ends when the client goes away.
func (s *Server) openStream(w http.ResponseWriter, r *http.Request) (*eventStream, context.Context) {
	ctx, cancel := context.WithCancel(r.Context())
	es := &eventStream{w: w, rc: http.NewResponseController(w), r: r, s: s, cancel: cancel,
		stop: make(chan struct{}), done: make(chan struct{})}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // tell nginx-like proxies not to buffer
	w.WriteHeader(http.StatusOK)
	es.write(": stream open\n\n")
	go es.keepAlive()
	return es, ctx
}

func (es *eventStream) keepAlive() {
	defer close(es.done)
	t := time.NewTicker(keepAliveEvery)
	defer t.Stop()
	for {
		select {
		case <-es.stop:
			return
		case <-t.C:
			es.write(": keep-alive\n\n")
		}
	}
}

// close stops the keep-alive; nothing is written after it returns.
func (es *eventStream) close() {
	close(es.stop)
	<-es.done
	es.mu.Lock()
	es.err = io.ErrClosedPipe
	es.mu.Unlock()
	es.cancel()
}

// send writes one event whose data is v as one line of JSON.
func (es *eventStream) send(event string, v any) {
	var buf bytes.Buffer
	buf.WriteString("event: " + event + "\ndata: ")
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // Encode ends the line
		es.s.log.Error("encoding an event", "event", event, "err", err)
		return
	}
	buf.WriteString("\n")
	es.write(buf.String())
}

// fail sends err as the stream's error event.
func (es *eventStream) fail(err error) {
	_, body := errorBody(es.r, es.s.log, err)
	es.send(api.EventError, body)
}

func (es *eventStream) write(s string) {
	es.mu.Lock()
	defer es.mu.Unlock()
	if es.err != nil {
		return
	}
	es.rc.SetWriteDeadline(time.Now().Add(writeTimeout)) // not every writer supports it
	_, err := io.WriteString(es.w, s)
	if err == nil {
		err = es.rc.Flush()
	}
	if err != nil {
		es.err = err
		es.cancel() // the client is gone: stop the run
	}
}

// output is a run's output callback sending stdout/stderr events.
func (es *eventStream) output() sandbox.OutputFunc {
	return func(stream string, p []byte) {
		es.send(stream, api.OutputChunk{Data: string(p)})
	}
}

// execEvents serves POST /v1/exec and /v1/sandboxes/{id}/exec as a stream.
func (s *Server) execEvents(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	derr := decode(r, &req) // read the whole body before answering
	es, ctx := s.openStream(w, r)
	defer es.close()
	if derr != nil {
		es.fail(derr)
		return
	}
	if id := r.PathValue("id"); id != "" {
		req.SandboxID = id
	}
	release, err := s.prepareRun(r, &req.AgentID, &req.SandboxID)
	if err != nil {
		es.fail(err)
		return
	}
	defer release()
	res, err := s.svc.ExecStream(ctx, req, es.output())
	if err != nil {
		es.fail(err)
		return
	}
	s.metrics.observe(res)
	es.send(api.EventResult, res)
}

// parseExecuteEvents serves POST /v1/parse-execute as a stream.
func (s *Server) parseExecuteEvents(w http.ResponseWriter, r *http.Request) {
	var req api.ParseExecuteRequest
	derr := decode(r, &req)
	es, ctx := s.openStream(w, r)
	defer es.close()
	if derr != nil {
		es.fail(derr)
		return
	}
	release, err := s.prepareRun(r, &req.AgentID, &req.SandboxID)
	if err != nil {
		es.fail(err)
		return
	}
	defer release()
	res, err := s.svc.ParseExecuteStream(ctx, req, nil, sandbox.ParseStream{
		Output: func(block int, stream string, p []byte) {
			es.send(stream, api.OutputChunk{Data: string(p), Block: &block})
		},
		Block: func(b api.BlockResult) { es.send(api.EventBlock, b) },
	})
	s.observeBlocks(res)
	if err != nil {
		es.fail(err)
		return
	}
	es.send(api.EventResult, res)
}
