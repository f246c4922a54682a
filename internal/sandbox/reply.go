package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/codeblock"
)

// ParseExecute finds the code blocks of an LLM's reply (with a CommonMark parser) and
// runs them in document order in the agent's sandbox, each as its own transaction with
// its own history row. Blocks in languages vmexec does not run are reported, not
// dropped; with StopOnFailure (the default) the blocks after a failure are skipped.
func (s *Service) ParseExecute(ctx context.Context, req api.ParseExecuteRequest) (api.ParseExecuteResult, error) {
	return s.ParseExecuteFiltered(ctx, req, nil)
}

// ParseExecuteFiltered is ParseExecute with a filter: a block for which skip returns
// a reason is skipped with it.
func (s *Service) ParseExecuteFiltered(ctx context.Context, req api.ParseExecuteRequest, skip func(api.CodeBlock) string) (api.ParseExecuteResult, error) {
	return s.ParseExecuteStream(ctx, req, skip, ParseStream{})
}

// ParseStream receives a streaming parse-execute's events; nil fields are not called.
// They are called from the goroutine of ParseExecuteStream or of the run in progress,
// one at a time, and never after ParseExecuteStream returns.
type ParseStream struct {
	// Output receives the output of block (its index) while it runs, as ExecStream's
	// out does.
	Output func(block int, stream string, p []byte)
	// Block receives each block's outcome, in document order, as soon as it is known.
	Block func(api.BlockResult)
}

// ParseExecuteStream is ParseExecuteFiltered with events as it goes. A caller that
// goes away (ctx ends) cancels the block running, and the blocks after it are not run.
func (s *Service) ParseExecuteStream(ctx context.Context, req api.ParseExecuteRequest, skip func(api.CodeBlock) string, ev ParseStream) (api.ParseExecuteResult, error) {
	if req.AgentID == "" && req.SandboxID == "" {
		return api.ParseExecuteResult{}, fmt.Errorf("agent_id is required: %w", ErrInvalid)
	}
	execute := req.Execute == nil || *req.Execute
	stop := req.StopOnFailure == nil || *req.StopOnFailure
	runUnlabeled := req.RunUnlabeled == nil || *req.RunUnlabeled
	opt := codeblock.DefaultOptions()
	opt.IncludeIndented = req.IncludeIndented
	blocks := codeblock.Extract(req.Text, opt)

	out := api.ParseExecuteResult{Blocks: make([]api.BlockResult, 0, len(blocks))}
	failed := false
	for _, b := range blocks {
		br := api.BlockResult{Block: blockAPI(b)}
		why := ""
		if skip != nil {
			why = skip(br.Block)
		}
		switch {
		case !b.Known:
			br.Status = api.BlockUnsupported
			br.Reason = unsupportedReason(b)
		case !execute:
			br.Status, br.Reason = api.BlockSkipped, "execute is false"
		case failed && stop:
			br.Status, br.Reason = api.BlockSkipped, "an earlier block failed (stop_on_failure)"
		case b.Detected && !runUnlabeled:
			br.Status, br.Reason = api.BlockSkipped, "the fence has no language and run_unlabeled is false"
		case why != "":
			br.Status, br.Reason = api.BlockSkipped, why
		default:
			if err := ctx.Err(); err != nil {
				return out, err
			}
			var blockOut OutputFunc
			if ev.Output != nil {
				blockOut = func(stream string, p []byte) { ev.Output(b.Index, stream, p) }
			}
			res, err := s.ExecStream(ctx, api.ExecRequest{AgentID: req.AgentID, SandboxID: req.SandboxID, Language: b.Language,
				Code: b.Code, Limits: req.Limits, History: req.History,
				Metadata: map[string]any{"source": "parse-execute", "block_index": fmt.Sprint(b.Index)}}, blockOut)
			bad := true
			switch {
			case errors.Is(err, ErrInvalid):
				br.Status, br.Reason = api.BlockError, err.Error()
			case err != nil:
				return out, err // the service itself failed: no point going on
			case res.Blocked:
				br.Status, br.Result, br.Reason = api.BlockBlocked, res, res.BlockedReason
			default:
				br.Status, br.Result = api.BlockExecuted, res
				out.Executed++
				bad = !res.Success()
			}
			if bad {
				failed = true
				out.Failed++
			}
		}
		if br.Status == api.BlockSkipped {
			out.Skipped++
		}
		out.Blocks = append(out.Blocks, br)
		if ev.Block != nil {
			ev.Block(br)
		}
	}
	out.Success = out.Executed > 0 && out.Failed == 0
	return out, nil
}

func unsupportedReason(b codeblock.Block) string {
	switch {
	case b.Language == "" && b.RawLanguage == "":
		return "the fence has no language and none could be detected; label it (python, javascript, bash, rust, go)"
	default:
		return fmt.Sprintf("language %q is not one vmexec runs (python, javascript, bash, rust, go)", firstNonEmpty(b.RawLanguage, b.Language))
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func blockAPI(b codeblock.Block) api.CodeBlock {
	return api.CodeBlock{Index: b.Index, Language: b.Language, RawLanguage: b.RawLanguage, Info: b.Info, Code: b.Code,
		Detected: b.Detected, Known: b.Known, StartLine: b.StartLine, EndLine: b.EndLine, Closed: b.Closed, Fence: b.Fence}
}
