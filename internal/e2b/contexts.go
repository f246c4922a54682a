package e2b

import "github.com/vmexec/vmexec/internal/sandbox"

// serviceInterpreter adapts the service's contexts API to interpreter. Until the
// service has interpreter contexts, there is none.
func serviceInterpreter(*sandbox.Service) interpreter { return nil }
