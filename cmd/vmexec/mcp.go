package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/mcpserver"
)

func newMCPCmd(g *globals) *cobra.Command {
	var agent string
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve vmexec's tools to an MCP host over stdio",
		Long: `Speak the Model Context Protocol on stdin/stdout, for an MCP host (Claude Desktop,
Claude Code, an IDE, your own host) that starts this command. The tools — run_code,
run_reply, sandboxes, snapshots, rollback, fork, history, files — act as one agent
(--agent) on a running daemon (--url or $VMEXEC_URL; $VMEXEC_API_KEY is sent as a
bearer token). The agent's sandbox persists across calls and sessions.

The daemon serves the same tools over streamable HTTP at /mcp.`,
		Example: `  vmexec mcp --agent claude
  VMEXEC_URL=http://127.0.0.1:9090 vmexec mcp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if c.APIKey == "" {
				c.APIKey = os.Getenv("VMEXEC_API_KEY")
			}
			srv := mcpserver.New(mcpserver.Options{Version: version,
				Client: func(*mcp.CallToolRequest) (*client.Client, error) { return c, nil },
				Agent:  func(*mcp.CallToolRequest) string { return agent }})
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := srv.Run(ctx, &mcp.StdioTransport{}); err != nil && ctx.Err() == nil {
				return fmt.Errorf("mcp: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", mcpserver.DefaultAgent, "the agent the session acts as (a call's agent_id overrides it)")
	return cmd
}
