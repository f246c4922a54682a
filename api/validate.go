package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
)

// Wire checks: what a request's own fields show to be wrong, whatever the server's
// configuration. The server runs them right after decoding a request and answers a
// failure with 400 bad_request, before anything runs; checks that need the server's
// settings (maximum limits, languages, code size) are the service's.

// MaxMetadataBytes bounds a request's metadata, encoded as JSON.
const MaxMetadataBytes = 64 << 10

// Validate refuses negative limits (zero means the server's default).
func (l Limits) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"timeout_ms", l.TimeoutMS}, {"max_output_bytes", l.MaxOutputBytes}, {"memory_mb", l.MemoryMB},
		{"max_procs", l.MaxProcs}, {"max_file_bytes", l.MaxFileBytes},
	} {
		if f.v < 0 {
			return fmt.Errorf("limit %s=%d: must not be negative (leave it out for the server's default)", f.name, f.v)
		}
	}
	return nil
}

// Validate checks the limits, the environment and the metadata.
func (r ExecRequest) Validate() error {
	return firstError(r.Limits.Validate(), ValidateEnv(r.Env), validateMetadata(r.Metadata))
}

// Validate checks the request's limits.
func (r ParseExecuteRequest) Validate() error { return r.Limits.Validate() }

// Validate refuses a negative memory size.
func (r CreateSandboxRequest) Validate() error {
	if r.MemoryMB < 0 {
		return fmt.Errorf("memory_mb=%d: must not be negative (leave it out for the server's default)", r.MemoryMB)
	}
	return nil
}

// Validate refuses both timeouts at once, negative ones, and oversized metadata.
func (r CompatExecRequest) Validate() error {
	switch {
	case r.TimeoutSeconds != 0 && r.TimeoutMS != 0:
		return errors.New("give timeout_seconds or timeout_ms, not both")
	case r.TimeoutSeconds < 0:
		return fmt.Errorf("timeout_seconds=%g: must not be negative (leave it out for the server's default)", r.TimeoutSeconds)
	case r.TimeoutSeconds*1000 > math.MaxInt64/2:
		return fmt.Errorf("timeout_seconds=%g: too large", r.TimeoutSeconds)
	case r.TimeoutMS < 0:
		return fmt.Errorf("timeout_ms=%d: must not be negative (leave it out for the server's default)", r.TimeoutMS)
	}
	return validateMetadata(r.Metadata)
}

// Limits returns the run's limits: timeout_ms, or timeout_seconds in milliseconds
// (rounded up), or zero for the server's default.
func (r CompatExecRequest) Limits() Limits {
	if r.TimeoutMS == 0 && r.TimeoutSeconds > 0 {
		return Limits{TimeoutMS: int64(math.Ceil(r.TimeoutSeconds * 1000))}
	}
	return Limits{TimeoutMS: r.TimeoutMS}
}

// ValidateEnv refuses environment variables a program cannot be given: a name that
// is empty or holds '=' or NUL, a value that holds NUL, and an empty PATH (which
// would leave the program unable to find any command; leave PATH out for the
// sandbox's default).
func ValidateEnv(env map[string]string) error {
	for k, v := range env {
		switch {
		case k == "":
			return errors.New("env: a variable name is empty")
		case strings.ContainsRune(k, '='):
			return fmt.Errorf("env: variable name %q contains '='", k)
		case strings.ContainsRune(k, 0):
			return fmt.Errorf("env: variable name %q contains a NUL byte", k)
		case strings.ContainsRune(v, 0):
			return fmt.Errorf("env: the value of %s contains a NUL byte", k)
		case k == "PATH" && v == "":
			return errors.New("env: PATH is empty, so no command could be found; leave PATH out for the sandbox's default")
		}
	}
	return nil
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func validateMetadata(m map[string]any) error {
	if len(m) == 0 {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	if len(b) > MaxMetadataBytes {
		return fmt.Errorf("metadata is %d bytes as JSON, over the %d byte limit", len(b), MaxMetadataBytes)
	}
	return nil
}
