// Package pgtest runs a real PostgreSQL server for tests: initdb into a fresh
// temporary directory, postgres listening on 127.0.0.1 at a free port (and on a unix
// socket in that directory), stopped when the test ends. Tests that need it skip,
// saying how to install it, when PostgreSQL's binaries are absent; scripts/setup
// installs Debian's PostgreSQL 15, so in CI they run.
//
// PostgreSQL refuses to run as root: when the test runs as root, the server runs as
// the uid of the "postgres" user (Debian's package creates it), owning its
// directory. The server is tuned for tests, not durability (fsync off); every test
// gets its own database with [Server.NewDatabase], so tests sharing a server do not
// see each other's rows.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// superuser is the name initdb gives the server's superuser.
const superuser = "vmexec"

// BinDir returns the directory of PostgreSQL's server binaries (initdb, postgres):
// $VMEXEC_PG_BIN, else Debian's /usr/lib/postgresql/15/bin, else the newest
// /usr/lib/postgresql/*/bin, else "" when none is installed.
func BinDir() string {
	cands := []string{os.Getenv("VMEXEC_PG_BIN"), "/usr/lib/postgresql/15/bin"}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(more) - 1; i >= 0; i-- {
		cands = append(cands, more[i])
	}
	for _, d := range cands {
		if d == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d
			}
		}
	}
	return ""
}

// Server is a running PostgreSQL server owned by one test.
type Server struct {
	// Host and Port are where it listens (127.0.0.1).
	Host string
	Port int
	dir  string
}

// URL returns a connection URL for database db on the server, as its superuser.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", superuser, s.Host, s.Port, db)
}

// Start runs a fresh server for t and stops it (removing its files) when t ends. It
// skips t when PostgreSQL is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := BinDir()
	if bin == "" {
		t.Skip("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/postgres): run scripts/setup --tests, or apt-get install postgresql-15, or set VMEXEC_PG_BIN")
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		t.Skipf("cannot run PostgreSQL: %v", err)
	}
	// Not t.TempDir: its parents are 0700 root, which the postgres user cannot enter.
	dir, err := os.MkdirTemp("", "vmexec-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s := &Server{Host: "127.0.0.1", Port: port, dir: dir}
		err = s.run(t, bin, data, cred)
		if err == nil {
			return s
		}
		if attempt == 2 {
			t.Fatalf("postgres: %v", err)
		}
		t.Logf("postgres on port %d: %v; retrying on another port", port, err)
	}
}

// run starts postgres and waits until it accepts connections; on success its
// stop is registered with t.Cleanup.
func (s *Server) run(t testing.TB, bin, data string, cred *syscall.Credential) error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses="+s.Host, "-p", strconv.Itoa(s.Port),
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=32MB")
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a killed test binary takes its server with it (Go sets it after
	// the credential change, which would otherwise clear it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		c, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			c.Close(ctx)
			break
		}
		select {
		case werr := <-exited:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("exited (%v) before accepting connections:\n%s", werr, b)
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("not accepting connections after 60s (%v):\n%s", err, b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT) // fast shutdown: disconnect clients, stop
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	return nil
}

// NewDatabase creates an empty database with a fresh name and returns its URL.
// It is dropped with the server.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := freshName()
	s.Exec(t, "postgres", "CREATE DATABASE "+name)
	return s.URL(name)
}

// CloneDatabase creates a database with a fresh name as a copy of the one at url
// (which must have no open connections) and returns its URL: cheaper than
// migrating each test's database anew.
func (s *Server) CloneDatabase(t testing.TB, url string) string {
	t.Helper()
	name := freshName()
	q := "CREATE DATABASE " + name + " TEMPLATE " + DatabaseName(url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := s.exec(ctx, "postgres", q)
		if err == nil {
			return s.URL(name)
		}
		// A closed pool's server processes may take a moment to exit.
		if !strings.Contains(err.Error(), "being accessed by other users") || ctx.Err() != nil {
			t.Fatalf("%s: %v", q, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) exec(ctx context.Context, db, sql string) error {
	c, err := pgx.Connect(ctx, s.URL(db))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql)
	return err
}

func freshName() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "t_" + hex.EncodeToString(b)
}

// Exec runs sql on database db as the superuser.
func (s *Server) Exec(t testing.TB, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.exec(ctx, db, sql); err != nil {
		t.Fatalf("on database %s: %s: %v", db, sql, err)
	}
}

// DatabaseName returns the database a URL made by this package names.
func DatabaseName(url string) string {
	name := url[strings.LastIndex(url, "/")+1:]
	name, _, _ = strings.Cut(name, "?")
	return name
}

// runAs returns the credential to run the server with: nil when not root, else the
// postgres user's.
func runAs() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, os.Geteuid(), os.Getegid(), nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, errors.New(`running as root and there is no "postgres" user to run the server as (Debian's postgresql package creates it)`)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

// freePort returns a loopback port nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
