// Package e2b serves vmexec as a drop-in for E2B: the official `e2b` and
// `@e2b/code-interpreter` SDKs run unchanged against it once E2B_API_URL and
// E2B_SANDBOX_URL point at the daemon's /e2b/api and /e2b/envd (see the README's
// "Coming from E2B"). It is a thin adapter over the sandbox service: an E2B sandbox
// IS a vmexec sandbox (same ids, same history, same snapshots and rollback via /v1),
// an E2B command is a vmexec run (recorded in the history like any other), an E2B
// file call is the service's file call.
//
// Terms:
//
//   - Control plane (/e2b/api, API.ServeHTTP): create, connect, get, list, kill and
//     set the timeout of sandboxes, in the JSON shapes of E2B's REST API (errors
//     {"code": status, "message"}). Both route generations are served: /v2/sandboxes
//     (e2b ≥ 2.51) and /sandboxes (≤ 2.50).
//   - envd (/e2b/envd, Envd.ServeHTTP): every request about one sandbox, told apart by
//     the E2b-Sandbox-Id header, and by E2b-Sandbox-Port between envd (49983: the
//     Connect RPCs process.Process/* and filesystem.Filesystem/*, /files, /health)
//     and the code interpreter (49999: /execute as NDJSON, /contexts). The Connect
//     protocol is spoken with the JSON codec, framed by connect.go.
//   - Record: the E2B-only facts of a sandbox (template id, metadata, envVars, end of
//     life), kept by the registry (state.go), saved in the data dir when there is
//     one. A sandbox without a record (made through /v1) is adopted by an E2B
//     connect.
//   - Tokens: each sandbox has an envd access token (envdAccessToken) and a traffic
//     token (trafficAccessToken), HMACs of its id under the registry's secret, given
//     in the create and connect answers. Every envd request must carry one
//     (X-Access-Token, or E2B-Traffic-Access-Token, which is all the interpreter SDK
//     sends on /contexts) unless it carries a valid API key.
//   - Owner: the vmexec agent a sandbox belongs to is the create request's
//     metadata["agent_id"] ("" for none: the operator's). A key scoped to agents must
//     name one in its scope; it sees and uses only sandboxes whose owner is in scope.
//
// Lifecycle: a sandbox is killed (deleted through the service, snapshots and all;
// its run history stays) when its end of life passes — timeout seconds after create
// (default 300, at most MaxTimeout), moved by setTimeout, extended by connect. The
// timers survive a daemon restart with the records.
//
// Semantics: a command or cell that fails does not roll the sandbox back, as on
// E2B, unless the owner agent's stored policy turns auto_rollback_on_failure on
// explicitly; the pre-run snapshot is still taken (per the policy), so a failed run
// can be rolled back later through /v1. A command runs to its end while it holds the
// sandbox: other requests about the same sandbox (files, other commands) queue
// behind it, as runs do. handle.kill() (SendSignal) stops it.
//
// Failure semantics: errors are the service's classes mapped once, in errors.go, to
// the status and Connect code each SDK turns into its error class. What the surface
// does not serve (PTY, watchers, stdin, pause, metrics, templates) answers
// unimplemented / 501 with a message saying so.
package e2b
