package api

import "time"

// The fcctl-web compatible shapes (see docs of wire compatibility). Unknown request
// fields are ignored.

// CompatExecRequest is POST /api/llm/execute.
type CompatExecRequest struct {
	AgentID        string         `json:"agent_id"`
	Language       string         `json:"language"`
	Code           string         `json:"code"`
	VMID           string         `json:"vm_id,omitempty"`
	Requirements   []string       `json:"requirements,omitempty"`
	TimeoutSeconds float64        `json:"timeout_seconds,omitempty"`
	TimeoutMS      int64          `json:"timeout_ms,omitempty"`
	WorkingDir     string         `json:"working_dir,omitempty"`
	Metadata       map[string]any `json:"metadata,omitempty"`
}

// CompatExecResponse is the answer of POST /api/llm/execute: the v1 result plus the
// vm_id name the compatible clients read.
type CompatExecResponse struct {
	ExecResult
	VMID string `json:"vm_id"`
}

// CompatCreateVM is POST /api/vms.
type CompatCreateVM struct {
	VMType string `json:"vm_type,omitempty"`
	Name   string `json:"name,omitempty"`
}

// CompatVM is one VM in the compatible routes.
type CompatVM struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Status    string    `json:"status"`
	VMType    string    `json:"vm_type"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// CompatVMList is GET /api/vms.
type CompatVMList struct {
	VMs   []CompatVM `json:"vms"`
	Total int        `json:"total"`
}
