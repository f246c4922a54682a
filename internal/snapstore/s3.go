package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// S3Config says how to reach an S3-compatible bucket.
type S3Config struct {
	// Endpoint is the service's base URL (http://127.0.0.1:8333, https://s3.example);
	// empty means AWS's own endpoint for Region.
	Endpoint string
	Bucket   string
	// Region is the bucket's region; default us-east-1 (what most S3-compatible
	// servers accept).
	Region string
	// AccessKeyID and SecretAccessKey sign requests; both empty sends unsigned ones.
	AccessKeyID, SecretAccessKey string
	// Prefix is put before every key ("vmexec/" keeps one daemon fleet's objects
	// apart in a shared bucket).
	Prefix string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key; self-hosted servers (SeaweedFS, MinIO) need it.
	PathStyle bool
	// PartBytes is the multipart upload's part size; default 8 MiB (S3's minimum is
	// 5 MiB).
	PartBytes int
	// Concurrency is how many parts are sent at once (default 4); Put holds at most
	// Concurrency×PartBytes in memory.
	Concurrency int
	// HTTPClient, if set, makes the requests (tests).
	HTTPClient *http.Client
}

// S3 is a Blobs in an S3-compatible bucket, with the AWS SDK for Go v2.
type S3 struct {
	cfg    S3Config
	client *s3.Client
}

var _ Blobs = (*S3)(nil)

// DefaultPartBytes is S3Config.PartBytes's default.
const DefaultPartBytes = 8 << 20

// NewS3 returns an S3 Blobs; it does not contact the server (Probe does).
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.PartBytes == 0 {
		cfg.PartBytes = DefaultPartBytes
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.PartBytes < 5<<20 {
		return nil, fmt.Errorf("s3: part size %d below S3's minimum of 5 MiB", cfg.PartBytes)
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return nil, errors.New("s3: give both access_key_id and secret_access_key, or neither")
	}
	o := s3.Options{
		Region:       cfg.Region,
		UsePathStyle: cfg.PathStyle,
		// Checksums only where S3 requires them: S3-compatible servers differ in
		// which of the newer trailing checksums they accept.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if cfg.Endpoint != "" {
		o.BaseEndpoint = aws.String(cfg.Endpoint)
	}
	if cfg.AccessKeyID != "" {
		o.Credentials = credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")
	} else {
		o.Credentials = aws.AnonymousCredentials{}
	}
	if cfg.HTTPClient != nil {
		o.HTTPClient = cfg.HTTPClient
	}
	return &S3{cfg: cfg, client: s3.New(o)}, nil
}

func (s *S3) String() string {
	where := "s3://" + s.cfg.Bucket + "/" + s.cfg.Prefix
	if s.cfg.Endpoint != "" {
		where += " at " + s.cfg.Endpoint
	}
	return where
}

func (s *S3) key(key string) (*string, error) {
	if !ValidKey(key) {
		return nil, fmt.Errorf("key %q: invalid (letters, digits, '.', '-', '_' and '/' only)", key)
	}
	return aws.String(s.cfg.Prefix + key), nil
}

// CheckBucket reports whether the bucket exists and may be reached (HeadBucket).
func (s *S3) CheckBucket(ctx context.Context) error {
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.cfg.Bucket)}); err != nil {
		return fmt.Errorf("bucket %s: %w", s.cfg.Bucket, classify(err))
	}
	return nil
}

// CreateBucket makes the bucket (tests, and `doctor` on a fresh server); one that
// exists already and is ours is not an error.
func (s *S3) CreateBucket(ctx context.Context) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("create bucket %s: %w", s.cfg.Bucket, err)
	}
	return nil
}

// Put implements Blobs: one PutObject for a body smaller than a part, else a
// multipart upload of PartBytes parts (Concurrency at a time), aborted on any error
// so that nothing appears.
func (s *S3) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	k, err := s.key(key)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, s.cfg.PartBytes)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("put %s: read: %w", key, err)
	}
	if n < len(buf) { // all of it fits in one request
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.cfg.Bucket, Key: k, Body: bytes.NewReader(buf[:n]), ContentLength: aws.Int64(int64(n))})
		if err != nil {
			return 0, fmt.Errorf("put %s: %w", key, classify(err))
		}
		return int64(n), nil
	}
	up, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: k})
	if err != nil {
		return 0, fmt.Errorf("put %s: start multipart upload: %w", key, classify(err))
	}
	total, err := s.putParts(ctx, k, up.UploadId, r, buf, n)
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: k, UploadId: up.UploadId})
		return 0, fmt.Errorf("put %s: %w", key, err)
	}
	return total, nil
}

// putParts sends the multipart upload's parts, up to Concurrency at a time, each
// from its own PartBytes buffer (so at most Concurrency parts are in memory), the
// first from buf (n bytes), and completes the upload.
func (s *S3) putParts(ctx context.Context, k, id *string, r io.Reader, buf []byte, n int) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan []byte, s.cfg.Concurrency)
	free <- buf
	for i := 1; i < s.cfg.Concurrency; i++ {
		free <- nil // allocated on first use
	}
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
		first error
		wg    sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
			cancel()
		}
		mu.Unlock()
	}
	var total int64
	for num := int32(1); ; num++ {
		b := buf
		if num > 1 {
			select {
			case b = <-free:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			if b == nil {
				b = make([]byte, s.cfg.PartBytes)
			}
			var err error
			n, err = io.ReadFull(r, b)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
				fail(fmt.Errorf("read: %w", err))
				break
			}
		} else {
			<-free // buf, taken
		}
		total += int64(n)
		wg.Add(1)
		go func(num int32, b []byte, n int) {
			defer wg.Done()
			out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.cfg.Bucket, Key: k, UploadId: id, PartNumber: aws.Int32(num),
				Body: bytes.NewReader(b[:n]), ContentLength: aws.Int64(int64(n))})
			if err != nil {
				fail(fmt.Errorf("upload part %d: %w", num, classify(err)))
			} else {
				mu.Lock()
				parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
				mu.Unlock()
			}
			free <- b
		}(num, b, n)
		if n < len(b) {
			break // the last part
		}
	}
	wg.Wait()
	if first != nil {
		return 0, first
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	_, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: k, UploadId: id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return 0, fmt.Errorf("complete multipart upload: %w", classify(err))
	}
	return total, nil
}

// Get implements Blobs.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: k})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, classify(err))
	}
	return out.Body, nil
}

// Stat implements Blobs.
func (s *S3) Stat(ctx context.Context, key string) (Object, error) {
	k, err := s.key(key)
	if err != nil {
		return Object{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: k})
	if err != nil {
		return Object{}, fmt.Errorf("stat %s: %w", key, classify(err))
	}
	o := Object{Key: key, Size: aws.ToInt64(out.ContentLength)}
	if out.LastModified != nil {
		o.Modified = out.LastModified.UTC()
	}
	return o, nil
}

// List implements Blobs.
func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: aws.String(s.cfg.Prefix + prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, classify(err))
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), s.cfg.Prefix)
			obj := Object{Key: key, Size: aws.ToInt64(o.Size)}
			if o.LastModified != nil {
				obj.Modified = o.LastModified.UTC()
			}
			out = append(out, obj)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Blobs.
func (s *S3) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: k}); err != nil {
		if errors.Is(classify(err), ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, classify(err))
	}
	return nil
}

// classify turns S3's not-found answers into ErrNotFound.
func classify(err error) error {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var nb *types.NoSuchBucket
	if errors.As(err, &nb) {
		return fmt.Errorf("%w (no such bucket: create it, or fix cluster.s3.bucket)", err)
	}
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case "NoSuchBucket":
			return fmt.Errorf("%w (no such bucket: create it, or fix cluster.s3.bucket)", err)
		}
	}
	return err
}
