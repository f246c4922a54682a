package snapstoretest

import (
	"context"
	"errors"
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
	cmd      *exec.Cmd
	done     chan struct{}
	log      *os.File
}

// Config is an S3Config for the server's test bucket.
func (s *Server) Config() snapstore.S3Config {
	return snapstore.S3Config{Endpoint: s.Endpoint, Bucket: Bucket, AccessKeyID: AccessKey, SecretAccessKey: SecretKey, PathStyle: true}
}

// StartServer starts a server (Start) in a temporary directory and stops it when the
// test ends; it skips when weed is not installed (scripts/setup --tests builds it).
func StartServer(t testing.TB) *Server {
	t.Helper()
	s, err := Start(testenv.Weed(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Start runs `weed mini` (the binary bin) with its data in dir, on free loopback
// ports, with every outgoing feature off — telemetry above all, whose default reports
// to an internet address — and returns once its bucket answers a probe object's
// round trip. Stop it with Stop.
func Start(bin, dir string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ports, err := freePorts(10)
	if err != nil {
		return nil, err
	}
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	// -logtostderr: glog's files would otherwise pile up in /tmp, one set per start.
	args := []string{"-logtostderr", "mini",
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
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start weed: %w", err)
	}
	s := &Server{Endpoint: "http://127.0.0.1:" + p(6), Dir: dir, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { cmd.Wait(); close(s.done) }()
	b, err := snapstore.NewS3(s.Config())
	if err != nil {
		s.Stop()
		return nil, err
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
			return s, nil
		}
		select {
		case <-s.done:
			s.Stop()
			return nil, fmt.Errorf("weed exited before it was ready: %s", s.tail())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("weed not ready after 90s (%v): %s", err, s.tail())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Stop ends the server (its whole process group) and waits for it.
func (s *Server) Stop() {
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.log.Close()
}

func (s *Server) tail() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "weed.log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
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

// freePorts finds n free loopback ports that weed can also use +10000 of (it derives
// some gRPC ports that way when not told).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free loopback ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		if port := l.Addr().(*net.TCPAddr).Port; port >= 11000 && port+10000 <= 65535 {
			out = append(out, port)
		}
	}
	return out, nil
}
