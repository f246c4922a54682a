package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Guards precedence: file over defaults, environment over file.
func TestLoadPrecedence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("addr: 127.0.0.1:9999\ncpus: 0.5\nsandbox:\n  idle_timeout: 2m\n  pool_size: 1\n"), 0o644)
	t.Setenv("VMEXEC_ADDR", "127.0.0.1:7777")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.CPUs != 0.5 {
		t.Errorf("cpus = %v, want the file's 0.5", c.CPUs)
	}
	if c.Addr != "127.0.0.1:7777" {
		t.Errorf("addr = %s, env should win", c.Addr)
	}
	if c.Sandbox.IdleTimeout != 2*time.Minute || c.Sandbox.PoolSize != 1 {
		t.Errorf("sandbox = %+v", c.Sandbox)
	}
	if c.Sandbox.Defaults.TimeoutMS != 30000 {
		t.Errorf("defaults lost: %+v", c.Sandbox.Defaults)
	}
}

// Guards that typos in the config file are reported rather than silently ignored.
func TestUnknownField(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("adress: x\n"), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "adress") {
		t.Fatalf("err = %v", err)
	}
}

// Guards that every problem is reported at once, each saying what is expected.
func TestValidate(t *testing.T) {
	c := Default()
	c.Addr = "nope"
	c.LogLevel = "loud"
	c.Sandbox.Defaults.TimeoutMS = c.Sandbox.Max.TimeoutMS + 1
	c.CPUs = 0
	err := c.Validate()
	for _, want := range []string{"addr", "log_level", "timeout_ms", "cpus 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

// Guards the HTTP boundary settings: the allow lists come from the file and the
// environment, and malformed entries and timeouts are reported.
func TestHTTPConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("http:\n  allowed_origins: [https://ui.example]\n  allowed_hosts: [box.lan]\n  read_body_timeout: 5m\n"), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.ReadBodyTimeout != 5*time.Minute || c.HTTP.ReadHeaderTimeout != 10*time.Second ||
		len(c.HTTP.AllowedOrigins) != 1 || c.HTTP.AllowedHosts[0] != "box.lan" {
		t.Errorf("http = %+v", c.HTTP)
	}
	t.Setenv("VMEXEC_ALLOWED_ORIGINS", "http://localhost:3000, https://b.example")
	t.Setenv("VMEXEC_ALLOWED_HOSTS", "proxy.example:443")
	if c, err = Load(p); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.HTTP.AllowedOrigins, " ") != "http://localhost:3000 https://b.example" || c.HTTP.AllowedHosts[0] != "proxy.example:443" {
		t.Errorf("env not applied: %+v", c.HTTP)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
	c.HTTP = HTTP{AllowedOrigins: []string{"ui.example", "https://ui.example/app", "*"}, AllowedHosts: []string{"", "a b"}}
	err = c.Validate()
	for _, want := range []string{`"ui.example" is not an origin`, `"https://ui.example/app"`, `"*"`, `allowed_hosts: ""`, `"a b"`,
		"read_header_timeout", "read_body_timeout", "idle_timeout", "max_header_bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

// Guards the limits in a config file: they are read by their documented names
// (api.Limits had no yaml names, so any sandbox.defaults or sandbox.max failed to load).
func TestLoadLimits(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("sandbox:\n  defaults:\n    timeout_ms: 5000\n    max_file_bytes: 1048576\n  max:\n    max_output_bytes: 33554432\n    max_file_bytes: 1048576\n"), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if d, m := c.Sandbox.Defaults, c.Sandbox.Max; d.TimeoutMS != 5000 || d.MaxFileBytes != 1<<20 || m.MaxOutputBytes != 32<<20 || m.MaxFileBytes != 1<<20 {
		t.Fatalf("defaults %+v max %+v", d, m)
	}
}

// TestAuthAndTLSConfig: TLS needs both files; the auth switches come from the file and
// the environment.
func TestAuthAndTLSConfig(t *testing.T) {
	for _, c := range []struct {
		tls TLS
		ok  bool
	}{{TLS{}, true}, {TLS{Cert: "c", Key: "k"}, true}, {TLS{Cert: "c"}, false}, {TLS{Key: "k"}, false}} {
		cfg := Default()
		cfg.TLS = c.tls
		if err := cfg.Validate(); (err == nil) != c.ok {
			t.Errorf("tls %+v: %v, want ok=%v", c.tls, err, c.ok)
		}
	}
	cfg := Default()
	env := map[string]string{"VMEXEC_AUTH_REQUIRED": "true", "VMEXEC_TLS_CERT": "/c", "VMEXEC_TLS_KEY": "/k"}
	if err := cfg.applyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if !cfg.Auth.Required || cfg.TLS != (TLS{Cert: "/c", Key: "/k"}) {
		t.Errorf("from the environment: %+v %+v", cfg.Auth, cfg.TLS)
	}
	bad := map[string]string{"VMEXEC_INSECURE_NO_AUTH": "maybe"}
	if err := cfg.applyEnv(func(k string) (string, bool) { v, ok := bad[k]; return v, ok }); err == nil {
		t.Error("VMEXEC_INSECURE_NO_AUTH=maybe accepted")
	}
}

// max_sandboxes defaults from the host's memory, within its bounds, and a config
// file's value wins.
func TestMaxSandboxesDefault(t *testing.T) {
	for _, c := range []struct {
		memMiB int64
		want   int
	}{
		{0, MinSandboxes},            // MemTotal unreadable
		{1024, MinSandboxes},         // smaller than the reserve
		{8 << 10, 96},                // 8 GiB
		{24 << 10, 352},              // 24 GiB: room for the 300 of bench -density
		{256 << 10, MaxSandboxesCap}, // capped
	} {
		if got := DefaultMaxSandboxes(c.memMiB); got != c.want {
			t.Errorf("DefaultMaxSandboxes(%d MiB) = %d, want %d", c.memMiB, got, c.want)
		}
	}
	if got, want := Default().Sandbox.MaxSandboxes, DefaultMaxSandboxes(hostMemTotalMiB()); got != want {
		t.Errorf("Default().Sandbox.MaxSandboxes = %d, want %d for this host", got, want)
	}
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("sandbox:\n  max_sandboxes: 7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.Sandbox.MaxSandboxes != 7 {
		t.Errorf("max_sandboxes from the file = %d, want 7", c.Sandbox.MaxSandboxes)
	}
	if err := os.WriteFile(f, []byte("sandbox:\n  max_sandboxes: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(f); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Sandbox.MaxSandboxes, DefaultMaxSandboxes(hostMemTotalMiB()); got != want {
		t.Errorf("max_sandboxes: 0 in the file = %d, want the host's default %d", got, want)
	}
}
