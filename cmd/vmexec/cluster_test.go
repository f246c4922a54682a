package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
)

// TestDoctorPostgres guards doctor's cluster checks against a real PostgreSQL: a
// reachable fresh database passes and says the daemon will migrate it; a migrated
// one passes; a user who may not create tables, a schema newer than this binary and
// an unreachable server fail, each saying what to do.
func TestDoctorPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	db := pgtest.DatabaseName(url)
	doctorOf := func(url string) map[string]check {
		cfg := config.Default()
		cfg.Cluster.ClusterPostgres = config.ClusterPostgres{PostgresURL: url, NodeName: "node-1"}
		out := map[string]check{}
		for _, c := range clusterChecks(cfg) {
			out[c.name] = c
		}
		return out
	}
	expect := func(t *testing.T, got map[string]check, name string, ok bool, says string) {
		t.Helper()
		c, found := got[name]
		if !found {
			t.Fatalf("no %q check in %+v", name, got)
		}
		if c.ok != ok || !strings.Contains(c.info, says) {
			t.Errorf("%s: ok=%v %q; want ok=%v saying %q", name, c.ok, c.info, ok, says)
		}
	}

	got := doctorOf(url)
	expect(t, got, "postgres", true, "PostgreSQL 15")
	expect(t, got, "postgres schema", true, "`vmexec serve` applies the rest")
	expect(t, got, "clock", true, "within")
	expect(t, got, "node name", true, "node-1")

	s, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	expect(t, doctorOf(url), "postgres schema", true, "all 8 migrations applied")

	// PostgreSQL 15 grants no CREATE on schema public to other users.
	srv.Exec(t, "postgres", "CREATE ROLE limited LOGIN")
	fresh := srv.NewDatabase(t)
	limited := fmt.Sprintf("postgres://limited@%s:%d/%s?sslmode=disable", srv.Host, srv.Port, pgtest.DatabaseName(fresh))
	expect(t, doctorOf(limited), "postgres schema", false, "GRANT CREATE ON SCHEMA public TO limited")

	srv.Exec(t, db, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, '0099_future.sql', 0)")
	expect(t, doctorOf(url), "postgres schema", false, "upgrade vmexec")

	got = doctorOf("postgres://vmexec:s3cret@127.0.0.1:1/x?connect_timeout=2")
	expect(t, got, "postgres", false, "cannot reach postgres://vmexec:xxxxx@127.0.0.1:1")
	if strings.Contains(got["postgres"].info, "s3cret") {
		t.Errorf("doctor shows the password: %s", got["postgres"].info)
	}

	cfg := config.Default()
	if c := clusterChecks(cfg); c != nil {
		t.Errorf("single-host doctor has cluster checks: %+v", c)
	}
}
