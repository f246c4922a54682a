package config

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/vmexec/vmexec/internal/snapstore"
)

// S3 configures the S3-compatible snapshot store.
type S3 struct {
	// Endpoint is the service's base URL (http://127.0.0.1:8333); empty means AWS.
	Endpoint string `yaml:"endpoint"`
	// Bucket holds the snapshots; empty turns the store off.
	Bucket string `yaml:"bucket"`
	// Region is the bucket's region (default us-east-1).
	Region string `yaml:"region"`
	// AccessKeyID and SecretAccessKey sign requests; when empty they are read from
	// VMEXEC_S3_ACCESS_KEY_ID / VMEXEC_S3_SECRET_ACCESS_KEY, else AWS_ACCESS_KEY_ID /
	// AWS_SECRET_ACCESS_KEY.
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	// Prefix goes before every key (e.g. "vmexec/").
	Prefix string `yaml:"prefix"`
	// PathStyle addresses endpoint/bucket/key (self-hosted servers need it);
	// default true.
	PathStyle *bool `yaml:"path_style"`
	// Upload is when snapshots are uploaded: after_run (default: each new current
	// snapshot, coalesced), on_suspend, or never (the store is only read).
	Upload string `yaml:"upload"`
}

// Enabled reports whether the snapshot store is configured.
func (s S3) Enabled() bool { return s.Bucket != "" }

// Validate reports what is wrong with s.
func (s S3) Validate() error {
	if !s.Enabled() {
		if s.Endpoint != "" {
			return errors.New("cluster.s3: endpoint given without a bucket")
		}
		return nil
	}
	var errs []error
	if s.Endpoint != "" {
		if u, err := url.Parse(s.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("cluster.s3.endpoint %q: want http(s)://host[:port]", s.Endpoint))
		}
	}
	if (s.AccessKeyID == "") != (s.SecretAccessKey == "") {
		errs = append(errs, errors.New("cluster.s3: give both access_key_id and secret_access_key (or their environment variables), or neither"))
	}
	if s.Upload != "" && !snapstore.Policy(s.Upload).Valid() {
		errs = append(errs, fmt.Errorf("cluster.s3.upload %q: want after_run, on_suspend or never", s.Upload))
	}
	if s.Prefix != "" && !snapstore.ValidKey(s.Prefix+"x") {
		errs = append(errs, fmt.Errorf("cluster.s3.prefix %q: letters, digits, '.', '-', '_' and '/' only", s.Prefix))
	}
	return errors.Join(errs...)
}

// applyEnv fills the credentials from the environment when the file gives none.
func (s *S3) applyEnv(lookup func(string) (string, bool)) {
	get := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := lookup(k); ok && v != "" {
				return v
			}
		}
		return ""
	}
	if s.AccessKeyID == "" && s.SecretAccessKey == "" {
		s.AccessKeyID = get("VMEXEC_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
		s.SecretAccessKey = get("VMEXEC_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
	}
	if v := get("VMEXEC_S3_ENDPOINT"); v != "" {
		s.Endpoint = v
	}
	if v := get("VMEXEC_S3_BUCKET"); v != "" {
		s.Bucket = v
	}
}

// Blobs returns the S3 client for s (nil when the store is off); it contacts nothing.
func (s S3) Blobs() (*snapstore.S3, error) {
	if !s.Enabled() {
		return nil, nil
	}
	ps := s.PathStyle == nil || *s.PathStyle
	return snapstore.NewS3(snapstore.S3Config{Endpoint: s.Endpoint, Bucket: s.Bucket, Region: s.Region,
		AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey, Prefix: s.Prefix, PathStyle: ps})
}
