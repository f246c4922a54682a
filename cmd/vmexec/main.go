// Command vmexec runs AI agents' code in isolated sandboxes: `vmexec serve` is the
// daemon; every other subcommand is a client of it (or, for `template` and `doctor`, a
// tool for the host). This package only wires the parts together.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/client"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		// The client's errors already say they are vmexec's; say it once.
		fmt.Fprintln(os.Stderr, "vmexec:", strings.TrimPrefix(err.Error(), "vmexec: "))
		os.Exit(1)
	}
}

type globals struct {
	url, apiKey string
}

func (g *globals) client() *client.Client {
	c := client.New(g.url)
	c.APIKey = g.apiKey // empty: the client reads $VMEXEC_API_KEY
	return c
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "vmexec",
		Short: "Run AI agents' code in isolated sandboxes",
		Long: `vmexec runs the code AI agents write — python, javascript, bash, rust, go — in
gVisor sandboxes, one per agent, whose state persists between turns. Each run is a
transaction: the sandbox is snapshotted first and rolled back if the run fails, and
every run is kept in a durable history.

Start the daemon (as root; it builds the sandbox template on first start):
  vmexec serve

Then run code as an agent:
  vmexec exec --agent demo --lang python -c 'import math; print(math.factorial(10))'
  echo 'console.log(6*7)' | vmexec exec --agent demo --lang js
  vmexec exec --agent demo main.rs          # language from the file's extension

Then look back, or undo:
  vmexec history --agent demo --failures
  vmexec rollback SANDBOX --last-success

Or over HTTP:
  curl -s localhost:8080/api/llm/execute -H 'Content-Type: application/json' -d '{"agent_id":"demo","language":"python","code":"print(2+2)"}'`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&g.url, "url", "", "vmexec server URL (default $VMEXEC_URL or "+client.DefaultURL+")")
	root.PersistentFlags().StringVar(&g.apiKey, "api-key", "", "API key sent as Authorization: Bearer (default $VMEXEC_API_KEY)")
	root.AddCommand(newServeCmd(), newExecCmd(g), newRunReplyCmd(g), newSandboxesCmd(g), newBackendsCmd(g),
		newSnapshotCmd(g), newRollbackCmd(g), newForkCmd(g), newHistoryCmd(g), newFilesCmd(g),
		newTemplateCmd(), newDoctorCmd(g), newChatCmd(g), newMCPCmd(g), newKeysCmd(), newRouterCmd())
	return root
}
