package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/codeblock"
	"github.com/vmexec/vmexec/internal/llm"
)

// Defaults of an agent's loop.
const (
	DefaultMaxSteps      = 6
	MaxStepsLimit        = 50
	DefaultFeedbackBytes = 4000
)

// Config is one agent: its LLM, its prompt, its loop's bounds and the seed's
// vm_execution block (what it may run, and the transaction policy of its runs).
type Config struct {
	// ID names the agent; its runs are the runs of agent ID (its own sandbox).
	ID string `json:"id" yaml:"id"`
	// SystemPrompt is sent first; a short description of the sandbox follows it.
	SystemPrompt string `json:"system_prompt,omitempty" yaml:"system_prompt,omitempty"`
	// LLM says which server and model.
	LLM llm.Config `json:"llm,omitempty" yaml:"llm,omitempty"`
	// Provider is informational (ollama, openai, …): every provider is spoken to as
	// OpenAI-compatible.
	Provider string `json:"provider,omitempty" yaml:"provider,omitempty"`
	// Tools: "auto" (offer run_code; fall back to fenced blocks if the model cannot
	// call tools), "on" or "off" (fenced blocks only).
	Tools string `json:"tools,omitempty" yaml:"tools,omitempty"`
	// MaxSteps bounds the LLM calls of one message (DefaultMaxSteps when 0).
	MaxSteps int `json:"max_steps,omitempty" yaml:"max_steps,omitempty"`
	// FeedbackBytes bounds each stream of a run's output shown to the model.
	FeedbackBytes int `json:"feedback_bytes,omitempty" yaml:"feedback_bytes,omitempty"`
	// VMExecution is the seed's block; nil or disabled: the agent chats without
	// running code.
	VMExecution *VMExecution `json:"vm_execution,omitempty" yaml:"vm_execution,omitempty"`
}

// VMExecution is the seed's vm_execution block. Fields the seed had that vmexec has
// no use for (api_base_url: the agent runs in-process; vm_pool_size, default_vm_type)
// are accepted and ignored.
type VMExecution struct {
	Enabled            bool     `json:"enabled" yaml:"enabled"`
	APIBaseURL         string   `json:"api_base_url,omitempty" yaml:"api_base_url,omitempty"`
	AutoProvision      *bool    `json:"auto_provision,omitempty" yaml:"auto_provision,omitempty"`
	AllowedLanguages   []string `json:"allowed_languages,omitempty" yaml:"allowed_languages,omitempty"`
	ExecutionTimeoutMS int64    `json:"execution_timeout_ms,omitempty" yaml:"execution_timeout_ms,omitempty"`
	MaxCodeLength      int      `json:"max_code_length,omitempty" yaml:"max_code_length,omitempty"`
	// CodeValidation is accepted for the seed's configs; the pre-run security policy
	// is the server's and applies whatever it says.
	CodeValidation *bool    `json:"code_validation,omitempty" yaml:"code_validation,omitempty"`
	History        *History `json:"history,omitempty" yaml:"history,omitempty"`
}

// History is the seed's history block; a field left out keeps the server's default.
type History struct {
	Enabled               *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	SnapshotOnExecution   *bool `json:"snapshot_on_execution,omitempty" yaml:"snapshot_on_execution,omitempty"`
	SnapshotOnFailure     *bool `json:"snapshot_on_failure,omitempty" yaml:"snapshot_on_failure,omitempty"`
	AutoRollbackOnFailure *bool `json:"auto_rollback_on_failure,omitempty" yaml:"auto_rollback_on_failure,omitempty"`
	MaxHistoryEntries     *int  `json:"max_history_entries,omitempty" yaml:"max_history_entries,omitempty"`
}

// runs reports whether the agent runs code.
func (c Config) runs() bool { return c.VMExecution != nil && c.VMExecution.Enabled }

func (c Config) maxSteps() int {
	if c.MaxSteps <= 0 {
		return DefaultMaxSteps
	}
	return min(c.MaxSteps, MaxStepsLimit)
}

func (c Config) feedbackBytes() int {
	if c.FeedbackBytes <= 0 {
		return DefaultFeedbackBytes
	}
	return c.FeedbackBytes
}

// languages are the languages the agent may run (all five when not narrowed).
func (c Config) languages() []string {
	if c.VMExecution == nil || len(c.VMExecution.AllowedLanguages) == 0 {
		return api.Languages
	}
	var out []string
	for _, l := range c.VMExecution.AllowedLanguages {
		if k, ok := codeblock.Canonical(l); ok {
			out = append(out, k)
		}
	}
	return out
}

// policy is the agent's transaction policy as the sandbox service takes it. The
// seed's snapshot_on_execution: true is vmexec's snapshot_before_execution; false
// leaves the server's default (on), because a run without a snapshot before it cannot
// be rolled back. history.enabled is accepted: vmexec records every run.
func (c Config) policy() *api.ExecPolicy {
	if c.VMExecution == nil || c.VMExecution.History == nil {
		return nil
	}
	h := c.VMExecution.History
	p := &api.ExecPolicy{AutoRollbackOnFailure: h.AutoRollbackOnFailure, SnapshotOnFailure: h.SnapshotOnFailure, MaxHistoryEntries: h.MaxHistoryEntries}
	if h.SnapshotOnExecution != nil && *h.SnapshotOnExecution {
		p.SnapshotBeforeExecution = h.SnapshotOnExecution
	}
	return p
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if c.ID == "" || strings.ContainsAny(c.ID, "/ \t\n") {
		errs = append(errs, fmt.Errorf("agent id %q: want a non-empty name without spaces or '/'", c.ID))
	}
	switch c.Tools {
	case "", "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("agent %s: tools %q: want auto, on or off", c.ID, c.Tools))
	}
	if c.MaxSteps < 0 || c.MaxSteps > MaxStepsLimit {
		errs = append(errs, fmt.Errorf("agent %s: max_steps %d: want 1 to %d", c.ID, c.MaxSteps, MaxStepsLimit))
	}
	if v := c.VMExecution; v != nil {
		for _, l := range v.AllowedLanguages {
			if _, ok := codeblock.Canonical(l); !ok {
				errs = append(errs, fmt.Errorf("agent %s: allowed_languages: %q is not one of %s", c.ID, l, strings.Join(api.Languages, ", ")))
			}
		}
		if v.ExecutionTimeoutMS < 0 || v.MaxCodeLength < 0 {
			errs = append(errs, fmt.Errorf("agent %s: execution_timeout_ms and max_code_length must not be negative", c.ID))
		}
	}
	return errors.Join(errs...)
}

// seedFile is the seed's role configuration file; fields vmexec does not use are
// ignored.
type seedFile struct {
	Roles map[string]struct {
		Name  string    `json:"name"`
		Extra seedExtra `json:"extra"`
	} `json:"roles"`
}

type seedExtra struct {
	Provider      string       `json:"llm_provider"`
	Model         string       `json:"llm_model"`
	BaseURL       string       `json:"llm_base_url"`
	OllamaBaseURL string       `json:"ollama_base_url"`
	OllamaModel   string       `json:"ollama_model"`
	SystemPrompt  string       `json:"llm_system_prompt"`
	APIKeyEnv     string       `json:"llm_api_key_env"`
	MaxSteps      int          `json:"max_steps"`
	VMExecution   *VMExecution `json:"vm_execution"`
}

// LoadSeedRoles reads the seed's role configuration file (the shape of
// agent-config-example.json): each role becomes an agent named after the role's key.
// Its extra.llm_provider, llm_model, llm_base_url (or ollama_base_url and
// ollama_model), llm_system_prompt and vm_execution are honoured; unknown fields are
// ignored. An "openai" provider reads its key from OPENAI_API_KEY.
func LoadSeedRoles(path string) ([]Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agents config: %w", err)
	}
	return ParseSeedRoles(b)
}

// ParseSeedRoles is LoadSeedRoles on the file's bytes.
func ParseSeedRoles(b []byte) ([]Config, error) {
	var f seedFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("agents config: not the seed's role config (JSON with roles): %w", err)
	}
	if len(f.Roles) == 0 {
		return nil, errors.New("agents config: no roles")
	}
	names := make([]string, 0, len(f.Roles))
	for k := range f.Roles {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []Config
	for _, name := range names {
		x := f.Roles[name].Extra
		c := Config{ID: name, SystemPrompt: x.SystemPrompt, Provider: x.Provider, MaxSteps: x.MaxSteps, VMExecution: x.VMExecution,
			LLM: llm.Config{BaseURL: firstNonEmpty(x.BaseURL, x.OllamaBaseURL), Model: firstNonEmpty(x.Model, x.OllamaModel), APIKeyEnv: x.APIKeyEnv}}
		if c.LLM.APIKeyEnv == "" && strings.EqualFold(x.Provider, "openai") {
			c.LLM.APIKeyEnv = "OPENAI_API_KEY"
		}
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("agents config: role %s: %w", name, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
