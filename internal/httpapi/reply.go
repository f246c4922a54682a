package httpapi

import (
	"fmt"
	"net/http"

	"github.com/vmexec/vmexec/api"
)

func (s *Server) replyRoutes() {
	s.mux.HandleFunc("POST /v1/parse-execute", s.parseExecute)
	s.mux.HandleFunc("POST /api/llm/parse-execute", s.compatParseExecute)
}

func (s *Server) parseExecute(w http.ResponseWriter, r *http.Request) {
	if wantsEvents(r) {
		s.parseExecuteEvents(w, r)
		return
	}
	handle(s, http.StatusOK, func(r *http.Request, in api.ParseExecuteRequest) (api.ParseExecuteResult, error) {
		release, err := s.prepareRun(r, &in.AgentID, &in.SandboxID)
		if err != nil {
			return api.ParseExecuteResult{}, err
		}
		defer release()
		res, err := s.svc.ParseExecute(r.Context(), in)
		s.observeBlocks(res)
		return res, err
	})(w, r)
}

func (s *Server) observeBlocks(res api.ParseExecuteResult) {
	for _, b := range res.Blocks {
		if b.Result != nil {
			s.metrics.observe(b.Result)
		}
	}
}

// The seed's shape: {agent_id, llm_response, auto_execute, auto_execute_threshold,
// vm_config} → {code_blocks, execution_results, errors}.
type compatParseRequest struct {
	AgentID   string   `json:"agent_id"`
	Response  string   `json:"llm_response"`
	Auto      *bool    `json:"auto_execute"` // absent means true
	Threshold *float64 `json:"auto_execute_threshold"`
	VMConfig  struct {
		VMID string `json:"vm_id"`
	} `json:"vm_config"`
}

type compatCodeBlock struct {
	api.CodeBlock
	// Confidence that Language is right: 1 for a labeled fence, 0.6 for a detected
	// one, 0 for an unknown language.
	Confidence float64 `json:"confidence"`
}

type compatParseResponse struct {
	CodeBlocks       []compatCodeBlock        `json:"code_blocks"`
	ExecutionResults []api.CompatExecResponse `json:"execution_results"`
	Errors           []string                 `json:"errors"`
}

func confidence(b api.CodeBlock) float64 {
	switch {
	case !b.Known:
		return 0
	case b.Detected:
		return 0.6
	}
	return 1
}

func (s *Server) compatParseExecute(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, in compatParseRequest) (compatParseResponse, error) {
		out := compatParseResponse{CodeBlocks: []compatCodeBlock{}, ExecutionResults: []api.CompatExecResponse{}, Errors: []string{}}
		threshold := 0.0
		if in.Threshold != nil {
			threshold = *in.Threshold
		}
		release, err := s.prepareRun(r, &in.AgentID, &in.VMConfig.VMID)
		if err != nil {
			return out, err
		}
		defer release()
		res, err := s.svc.ParseExecuteFiltered(r.Context(), api.ParseExecuteRequest{AgentID: in.AgentID, SandboxID: in.VMConfig.VMID,
			Text: in.Response, Execute: in.Auto}, func(b api.CodeBlock) string {
			if c := confidence(b); c < threshold {
				return fmt.Sprintf("confidence %.1f is below auto_execute_threshold %.1f", c, threshold)
			}
			return ""
		})
		s.observeBlocks(res)
		for _, b := range res.Blocks {
			out.CodeBlocks = append(out.CodeBlocks, compatCodeBlock{CodeBlock: b.Block, Confidence: confidence(b.Block)})
			if b.Result != nil {
				out.ExecutionResults = append(out.ExecutionResults, api.CompatExecResponse{ExecResult: *b.Result, VMID: b.Result.SandboxID})
			}
			if b.Status != api.BlockExecuted && b.Reason != "" {
				out.Errors = append(out.Errors, fmt.Sprintf("block %d (%s): %s", b.Block.Index, firstNonEmpty(b.Block.RawLanguage, b.Block.Language, "no language"), b.Reason))
			}
		}
		return out, err
	})(w, r)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
