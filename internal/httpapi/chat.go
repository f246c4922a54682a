package httpapi

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// The agent routes (internal/agent): a turn of an agent's chat, plain or as events,
// a stored conversation, and the seed's POST /chat.

func (s *Server) chatRoutes() {
	s.mux.HandleFunc("POST /v1/agents/{id}/chat", s.chat)
	s.mux.HandleFunc("GET /v1/conversations/{id}", handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.Conversation, error) {
		if s.agents == nil {
			return api.Conversation{}, errNoAgents
		}
		if _, err := s.actingAgent(r, "", target{"conversation", r.PathValue("id")}); err != nil {
			return api.Conversation{}, err
		}
		return s.agents.Conversation(r.Context(), r.PathValue("id"))
	}))
	s.mux.HandleFunc("POST /chat", s.compatChat)
}

var errNoAgents = fmt.Errorf("no agents are configured (serve --agents-config FILE, or agents: in the config file): %w", sandbox.ErrNotFound)

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	if wantsEvents(r) {
		s.chatEvents(w, r)
		return
	}
	handle(s, http.StatusOK, func(r *http.Request, in api.ChatRequest) (api.ChatResult, error) {
		if s.agents == nil {
			return api.ChatResult{}, errNoAgents
		}
		release, err := s.prepareAgentTurn(r, r.PathValue("id"))
		if err != nil {
			return api.ChatResult{}, err
		}
		defer release()
		res, err := s.agents.Chat(r.Context(), r.PathValue("id"), in, agent.Events{Run: s.observeRun})
		return res, err
	})(w, r)
}

func (s *Server) observeRun(run api.ChatRun) {
	if run.Result != nil {
		s.metrics.observe(run.Result)
	}
}

// chatEvents serves a chat turn as Server-Sent Events: delta (the model's text as it
// comes), stdout and stderr (a run's output), run (a run's outcome), step (a step's
// outcome), then result (the ChatResult) or error.
func (s *Server) chatEvents(w http.ResponseWriter, r *http.Request) {
	var req api.ChatRequest
	derr := decode(r, &req)
	es, ctx := s.openStream(w, r)
	defer es.close()
	switch {
	case derr != nil:
		es.fail(derr)
		return
	case s.agents == nil:
		es.fail(errNoAgents)
		return
	}
	release, err := s.prepareAgentTurn(r, r.PathValue("id"))
	if err != nil {
		es.fail(err)
		return
	}
	defer release()
	res, err := s.agents.Chat(ctx, r.PathValue("id"), req, agent.Events{
		Delta:  func(d api.ChatDelta) { es.send(api.EventDelta, d) },
		Output: func(stream string, o api.ChatOutput) { es.send(stream, o) },
		Run:    func(run api.ChatRun) { s.observeRun(run); es.send(api.EventRun, run) },
		Step:   func(st api.ChatStep) { es.send(api.EventStep, st) },
	})
	if err != nil {
		es.fail(err)
		return
	}
	es.send(api.EventResult, res)
}

// compatChat is the seed's POST /chat: the role names the agent; the last user
// message is the message; the answer is the model's reply followed by the runs'
// output.
func (s *Server) compatChat(w http.ResponseWriter, r *http.Request) {
	var in api.CompatChatRequest
	res, err := func() (api.CompatChatResponse, error) {
		if err := decode(r, &in); err != nil {
			return api.CompatChatResponse{}, err
		}
		if s.agents == nil {
			return api.CompatChatResponse{}, errNoAgents
		}
		last := -1
		for i, m := range in.Messages {
			if m.Role == "user" {
				last = i
			}
		}
		if last < 0 {
			return api.CompatChatResponse{}, fmt.Errorf("messages has no user message: %w", sandbox.ErrInvalid)
		}
		release, err := s.prepareAgentTurn(r, in.Role)
		if err != nil {
			return api.CompatChatResponse{}, err
		}
		defer release()
		out, err := s.agents.ChatWithHistory(r.Context(), in.Role, api.ChatRequest{Message: in.Messages[last].Content,
			ConversationID: in.ConversationID, Model: in.Model}, in.Messages[:last], agent.Events{Run: s.observeRun})
		if err != nil {
			return api.CompatChatResponse{}, err
		}
		return api.CompatChatResponse{Status: "success", Message: WithResults(out), ModelUsed: out.Model, ConversationID: out.ConversationID}, nil
	}()
	if err != nil {
		status, body := errorBody(r, s.log, err)
		writeJSON(w, status, api.CompatChatResponse{Status: "error", Error: body.Error, Code: body.Code})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// ResultsHeader separates the model's reply from the runs' output in the seed's
// chat answer.
const ResultsHeader = "\n\n--- VM Execution Results ---\n"

// WithResults is a turn as the seed answered it: the model's reply, then, when code
// ran, ResultsHeader and each run's output.
func WithResults(res api.ChatResult) string {
	var runs []api.ChatRun
	for _, st := range res.Steps {
		runs = append(runs, st.Runs...)
	}
	if len(runs) == 0 {
		return res.Message
	}
	return strings.TrimRight(res.Message, "\n") + ResultsHeader + agent.ResultsText(runs)
}
