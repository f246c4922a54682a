package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Guards the cluster.s3 settings: a file's values load, credentials come from the
// environment when the file has none, path-style addressing is the default, and bad
// values are refused with the field's name.
func TestClusterS3(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("cluster:\n  s3:\n    endpoint: http://127.0.0.1:8333\n    bucket: snaps\n    prefix: fleet/\n    upload: on_suspend\n"), 0o600)
	t.Setenv("AWS_ACCESS_KEY_ID", "ak")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "sk")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Cluster.S3
	if !s.Enabled() || s.Bucket != "snaps" || s.AccessKeyID != "ak" || s.SecretAccessKey != "sk" || s.Upload != "on_suspend" {
		t.Fatalf("loaded %+v", s)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := s.Blobs()
	if err != nil || !strings.Contains(b.String(), "s3://snaps/fleet/") {
		t.Fatalf("blobs %v, %v", b, err)
	}
	if Default().Cluster.S3.Enabled() {
		t.Fatal("the store is on by default")
	}

	for _, tc := range []struct {
		s     S3
		field string
	}{
		{S3{Bucket: "b", Endpoint: "ftp://x"}, "cluster.s3.endpoint"},
		{S3{Bucket: "b", Upload: "sometimes"}, "cluster.s3.upload"},
		{S3{Bucket: "b", AccessKeyID: "only-one"}, "secret_access_key"},
		{S3{Bucket: "b", Prefix: "../x"}, "cluster.s3.prefix"},
		{S3{Endpoint: "http://x"}, "without a bucket"},
	} {
		if err := tc.s.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("validate %+v: %v, want an error naming %s", tc.s, err, tc.field)
		}
	}
}
