package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/sqlite"
)

// `vmexec keys`: API keys, managed in the data dir's database directly (not through
// the daemon), whether or not a daemon runs on it; a running daemon sees a change
// within a second or two.

func newKeysCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create, list and revoke API keys (in the data dir, daemon running or not)",
		Long: `API keys let vmexec face a network. Once a key exists in the data dir, every route
but GET /health needs "Authorization: Bearer KEY" (clients: --api-key or
$VMEXEC_API_KEY). A key is either --admin (acts as the operator: anything) or
scoped with --agents to agent ids matching glob patterns (team-a-*): it may act
only as those agents, and sees only their sandboxes, snapshots, runs and policies.

These commands work on the data dir's database directly; a running daemon picks up
a new or revoked key within a second or two, without a restart. Keys are stored
hashed: a key is shown once, when it is created. In cluster mode, set
VMEXEC_POSTGRES_URL: the keys are then in the cluster's PostgreSQL.`,
		Example: `  sudo vmexec keys create --name ops --admin
  sudo vmexec keys create --name team-a --agents 'team-a-*' --rate 20/s --max-sandboxes 10 --max-runs 4
  sudo vmexec keys list
  sudo vmexec keys revoke team-a`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", "", "the daemon's data dir (default $VMEXEC_DATA_DIR or "+config.Default().DataDir+")")
	open := func(ctx context.Context) (interface {
		auth.Store
		Close() error
	}, error) {
		if u := os.Getenv("VMEXEC_POSTGRES_URL"); u != "" { // cluster mode: the keys are in PostgreSQL
			return postgres.Open(ctx, u)
		}
		dir := dataDir
		if dir == "" {
			dir = os.Getenv("VMEXEC_DATA_DIR")
		}
		if dir == "" {
			dir = config.Default().DataDir
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		return sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	}

	var (
		k       auth.Key
		rate    string
		e2bForm bool
	)
	create := &cobra.Command{
		Use:   "create --name NAME (--admin | --agents PATTERN,...)",
		Short: "Create a key and print it (once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if k.Rate, err = auth.ParseRate(rate); err != nil {
				return err
			}
			secret, hash, err := auth.Generate()
			if err != nil {
				return err
			}
			k.ID, k.Hash, k.CreatedAt = auth.NewID(), hash, time.Now().UTC()
			if err := k.Validate(); err != nil {
				return err
			}
			st, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			if err := st.CreateKey(cmd.Context(), k); err != nil {
				return err
			}
			if e2bForm {
				secret = auth.E2BForm(secret) // the same key, as E2B_API_KEY
			}
			fmt.Fprintln(cmd.OutOrStdout(), secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s created (%s); it is shown only now: keep it safe\n", k.Name, k.Scope())
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&k.Name, "name", "", "the key's name (letters, digits, - _ .), shown in listings and the history")
	f.BoolVar(&k.Admin, "admin", false, "the key acts as the operator: every agent, every route")
	f.StringSliceVar(&k.Agents, "agents", nil, "agent id patterns the key may act as, comma-separated globs (team-a-*)")
	f.StringVar(&rate, "rate", "", "request rate limit: N, N/s, N/m or N/h (default: none)")
	f.IntVar(&k.MaxSandboxes, "max-sandboxes", 0, "most sandboxes in the key's scope at once (default: no cap)")
	f.BoolVar(&e2bForm, "e2b", false, "print the key in its e2b_ form, for E2B_API_KEY (it works as Bearer too; vmx_ and e2b_ are the same key)")
	f.IntVar(&k.MaxRuns, "max-runs", 0, "most runs in progress at once with this key (default: no cap)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List keys: name, scope, limits, created, last used (never the key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			keys, err := st.ListKeys(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSCOPE\tRATE/S\tMAX-SANDBOXES\tMAX-RUNS\tCREATED\tLAST USED\tSTATE")
			for _, k := range keys {
				state := "live"
				if k.Revoked() {
					state = "revoked " + stamp(k.RevokedAt)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, k.Scope(), orNone(strconv.FormatFloat(k.Rate, 'g', -1, 64)),
					orNone(strconv.Itoa(k.MaxSandboxes)), orNone(strconv.Itoa(k.MaxRuns)), stamp(k.CreatedAt), stamp(k.LastUsedAt), state)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a key: a running daemon refuses it within a second or two",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			if err := st.RevokeKey(cmd.Context(), args[0], time.Now().UTC()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func orNone(v string) string {
	if v == "0" {
		return "-"
	}
	return v
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}
