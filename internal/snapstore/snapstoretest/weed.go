package snapstoretest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/testenv"
)

// Credentials of the test server's one S3 user.
const (
	AccessKey = "vmexec-test"
	SecretKey = "vmexec-test-secret"
	Bucket    = "vmexec-test"
)

// Server is a running SeaweedFS (weed mini) bound to 127.0.0.1.
type Server struct {
	Endpoint string
	Dir      string
}

// Config is an S3Config for the server's test bucket.
func (s *Server) Config() snapstore.S3Config {
	return snapstore.S3Config{Endpoint: s.Endpoint, Bucket: Bucket, AccessKeyID: AccessKey, SecretAccessKey: SecretKey, PathStyle: true}
}

// StartServer starts `weed mini` in a temporary directory, on free loopback ports,
// with every outgoing feature off (telemetry above all: its default reports to an
// internet address), and stops it when the test ends. It skips when weed is not
// installed (scripts/setup builds it).
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin := testenv.Weed(t)
	dir := t.TempDir()
	ports := freePorts(t, 10)
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	args := []string{"mini",
		"-dir=" + filepath.Join(dir, "data"),
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		// Nothing leaves this machine: no telemetry (and, should a later version
		// ignore the switch, a URL that goes nowhere), no metrics push gateway.
		"-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:1/",
		"-master.metrics.address=",
		"-master.port=" + p(0), "-master.port.grpc=" + p(1),
		"-volume.port=" + p(2), "-volume.port.grpc=" + p(3),
		"-filer.port=" + p(4), "-filer.port.grpc=" + p(5),
		"-s3.port=" + p(6), "-s3.port.grpc=" + p(7),
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-webdav=false", "-admin.ui=false",
		"-admin.port=" + p(8), "-admin.port.grpc=" + p(9), "-admin.port.legacy=0",
		"-bucket=" + Bucket,
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+AccessKey, "AWS_SECRET_ACCESS_KEY="+SecretKey, "HOME="+dir)
	logf, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start weed: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
	})
	s := &Server{Endpoint: "http://127.0.0.1:" + p(6), Dir: dir}
	// Ready once the bucket answers a probe object's round trip.
	b, err := snapstore.NewS3(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = b.CreateBucket(ctx)
		if err == nil {
			err = snapstore.Probe(ctx, b)
		}
		cancel()
		if err == nil {
			return s
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			t.Fatalf("weed exited before it was ready: %s", tail(log))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			t.Fatalf("weed not ready after 90s (%v): %s", err, tail(log))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// S3 starts a server and returns a Blobs on its bucket, under a prefix of its own.
func S3(t testing.TB) *snapstore.S3 {
	t.Helper()
	cfg := StartServer(t).Config()
	cfg.Prefix = "test/"
	b, err := snapstore.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var out []int
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		port := l.Addr().(*net.TCPAddr).Port
		if port+10000 > 65535 || port < 11000 { // weed derives some ports ±10000
			continue
		}
		out = append(out, port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return fmt.Sprint(string(b))
}
