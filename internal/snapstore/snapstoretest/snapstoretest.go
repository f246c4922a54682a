// Package snapstoretest is the conformance suite every snapstore.Blobs passes (the
// local directory and S3 alike), and starts the real S3 server the tests use.
package snapstoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/snapstore"
)

// Run checks b against the Blobs contract: put/get/stat/list/delete, replacing, a
// large streamed object, missing keys, invalid keys, and a failed Put leaving nothing.
func Run(t *testing.T, b snapstore.Blobs) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)

	t.Run("PutGetListDelete", func(t *testing.T) {
		for _, kv := range [][2]string{{"a/one.json", "1"}, {"a/two.json", "22"}, {"b/three", "333"}} {
			if n, err := b.Put(ctx, kv[0], strings.NewReader(kv[1])); err != nil || n != int64(len(kv[1])) {
				t.Fatalf("put %s: %d, %v", kv[0], n, err)
			}
		}
		if got := read(t, ctx, b, "a/two.json"); got != "22" {
			t.Errorf("get a/two.json = %q, want 22", got)
		}
		if o, err := b.Stat(ctx, "b/three"); err != nil || o.Size != 3 || o.Key != "b/three" {
			t.Errorf("stat b/three = %+v, %v", o, err)
		}
		objs, err := b.List(ctx, "a/")
		if err != nil {
			t.Fatal(err)
		}
		if keys := keysOf(objs); keys != "a/one.json a/two.json" {
			t.Errorf("list a/ = %s, want a/one.json a/two.json", keys)
		}
		if _, err := b.Put(ctx, "a/one.json", strings.NewReader("replaced")); err != nil {
			t.Fatal(err)
		}
		if got := read(t, ctx, b, "a/one.json"); got != "replaced" {
			t.Errorf("after replacing, get = %q", got)
		}
		for i := 0; i < 2; i++ { // idempotent
			if err := b.Delete(ctx, "a/one.json"); err != nil {
				t.Fatalf("delete #%d: %v", i+1, err)
			}
		}
		if _, err := b.Get(ctx, "a/one.json"); !errors.Is(err, snapstore.ErrNotFound) {
			t.Errorf("get after delete: %v, want ErrNotFound", err)
		}
		if _, err := b.Stat(ctx, "a/one.json"); !errors.Is(err, snapstore.ErrNotFound) {
			t.Errorf("stat after delete: %v, want ErrNotFound", err)
		}
		if _, err := b.Stat(ctx, "never/written"); !errors.Is(err, snapstore.ErrNotFound) {
			t.Errorf("stat of a missing key: %v, want ErrNotFound", err)
		}
		b.Delete(ctx, "a/two.json")
		b.Delete(ctx, "b/three")
	})

	// An object larger than a multipart part streams in and out intact.
	t.Run("Large", func(t *testing.T) {
		data := make([]byte, 2*snapstore.DefaultPartBytes+12345)
		rand.Read(data)
		if n, err := b.Put(ctx, "large/obj", onlyReader{bytes.NewReader(data)}); err != nil || n != int64(len(data)) {
			t.Fatalf("put: %d, %v", n, err)
		}
		defer b.Delete(ctx, "large/obj")
		rc, err := b.Get(ctx, "large/obj")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes (%v), want the %d written", len(got), err, len(data))
		}
	})

	// A Put whose reader fails leaves no object (not even a prefix of it).
	t.Run("FailedPut", func(t *testing.T) {
		for _, size := range []int{100, snapstore.DefaultPartBytes + 100} {
			r := io.MultiReader(bytes.NewReader(make([]byte, size)), errReader{})
			if _, err := b.Put(ctx, "failed/obj", r); err == nil {
				t.Fatalf("put of a failing reader (%d bytes first) succeeded", size)
			}
			if _, err := b.Stat(ctx, "failed/obj"); !errors.Is(err, snapstore.ErrNotFound) {
				t.Fatalf("after a failed put of %d bytes: stat = %v, want ErrNotFound", size, err)
			}
			if objs, _ := b.List(ctx, "failed/"); len(objs) != 0 {
				t.Fatalf("after a failed put: listed %s", keysOf(objs))
			}
		}
	})

	t.Run("InvalidKey", func(t *testing.T) {
		for _, k := range []string{"", "../x", "a/../../x", "/abs", "a//b", "sp ace"} {
			if _, err := b.Put(ctx, k, strings.NewReader("x")); err == nil {
				t.Errorf("put of key %q succeeded", k)
				b.Delete(ctx, k)
			}
		}
	})

	t.Run("Probe", func(t *testing.T) {
		if err := snapstore.Probe(ctx, b); err != nil {
			t.Fatal(err)
		}
	})
}

func read(t *testing.T, ctx context.Context, b snapstore.Blobs, key string) string {
	t.Helper()
	rc, err := b.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(got)
}

func keysOf(objs []snapstore.Object) string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.Key)
	}
	return strings.Join(ks, " ")
}

type onlyReader struct{ r io.Reader } // hides Seek/WriteTo: a stream of unknown length

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("the source failed mid-stream") }
