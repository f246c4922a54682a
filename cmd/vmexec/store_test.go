package main

import (
	"net"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
)

// Guards doctor's cluster.s3 check: off when not configured, ok against a real S3
// server, and a failure that says what to do for a server that is not there, a bucket
// that does not exist, and wrong credentials.
func TestDoctorStoreCheck(t *testing.T) {
	if _, on := storeCheck(config.Default()); on {
		t.Fatal("the store is checked without being configured")
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + l.Addr().String()
	l.Close()
	c, _ := storeCheck(config.Config{Cluster: config.Cluster{S3: config.S3{Endpoint: closed, Bucket: "b"}}})
	if c.ok || !c.required || !strings.Contains(c.info, "reachable") {
		t.Fatalf("unreachable endpoint: %+v", c)
	}

	srv := snapstoretest.StartServer(t)
	good := config.S3{Endpoint: srv.Endpoint, Bucket: snapstoretest.Bucket, AccessKeyID: snapstoretest.AccessKey, SecretAccessKey: snapstoretest.SecretKey}
	for _, tc := range []struct {
		name string
		mod  func(*config.S3)
		ok   bool
		say  string
	}{
		{"working", func(*config.S3) {}, true, "probe object"},
		{"missing bucket", func(s *config.S3) { s.Bucket = "no-such-bucket" }, false, "bucket exists"},
		{"bad credentials", func(s *config.S3) { s.SecretAccessKey = "wrong" }, false, "credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.mod(&s)
			c, on := storeCheck(config.Config{Cluster: config.Cluster{S3: s}})
			if !on || c.ok != tc.ok || !strings.Contains(c.info, tc.say) {
				t.Fatalf("check = %+v; want ok=%v and a message containing %q", c, tc.ok, tc.say)
			}
		})
	}
}
