// Package snapstore keeps snapshot images where they outlive the host that took them:
// an object store (S3-compatible, or a directory such as a shared mount) holding, per
// snapshot, an archive of the backend's image and a manifest saying what the image
// needs of the host that restores it.
//
// # Terms
//
// A backend's own image directory (backend.ImageDir, behind backend.Snapshotter) is
// the hot cache: runs, rollbacks and resumes use it, and single-host mode uses nothing
// else. A Store is the durable tier beside it. Blobs is the object store underneath
// (Dir, S3), one conformance suite for both (snapstoretest).
//
// Each snapshot has a key, Key(sandbox, snapshot), derived from its ids, so the
// history's snapshot record names its stored copy without another column: the store
// holds <key>.tar.zst (the backend's export, zstd-compressed) and <key>.json (the
// Manifest). The archive is written first and the manifest last, so a manifest's
// presence means a whole upload; both stream, nothing holds a whole image in memory.
//
// # Failure semantics
//
//   - Upload writes the archive, then the manifest; a failed upload leaves no manifest
//     (and at worst an archive that the next Upload or Delete of that key replaces or
//     removes). Blobs.Put makes an object appear whole or not at all.
//   - Fetch reads the manifest first and refuses, before downloading anything else,
//     an image this host cannot restore: ErrIncompatible wrapping a
//     *backend.IncompatibleError (or a template mismatch) that names the field. The
//     archive's checksum and size are verified as it streams; a mismatch fails the
//     import, which then leaves no image.
//   - A key with no manifest is ErrNotFound.
package snapstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Errors.
var (
	// ErrNotFound: no such object (or no whole upload under that key).
	ErrNotFound = errors.New("not in the snapshot store")
	// ErrIncompatible: the stored image cannot be restored on this host.
	ErrIncompatible = errors.New("stored snapshot incompatible with this host")
	// ErrCorrupt: the archive does not match its manifest.
	ErrCorrupt = errors.New("stored snapshot corrupt")
)

// Object describes a stored object.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Blobs is an object store of named byte streams. Keys are slash-separated paths of
// letters, digits, '.', '-' and '_' (see ValidKey).
type Blobs interface {
	// String says where the objects are ("s3://bucket/prefix", "dir /path"), for
	// messages; never credentials.
	String() string
	// Put stores r's content, read to EOF, under key, replacing any object there;
	// the object appears whole or not at all. It returns the bytes stored.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get opens key's content; ErrNotFound when there is none. Close it.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes key; ErrNotFound when there is none.
	Stat(ctx context.Context, key string) (Object, error)
	// List returns the objects whose key begins with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]Object, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// ValidKey reports whether key can name an object.
func ValidKey(key string) bool {
	if key == "" || len(key) > 512 || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return false
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for _, r := range seg {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
				return false
			}
		}
	}
	return true
}

// Probe checks that b works end to end: it puts a small object, reads it back and
// deletes it, and says which step failed.
func Probe(ctx context.Context, b Blobs) error {
	key := fmt.Sprintf("vmexec-probe/%d", time.Now().UnixNano())
	const body = "vmexec doctor probe"
	if _, err := b.Put(ctx, key, strings.NewReader(body)); err != nil {
		return fmt.Errorf("put a probe object into %s: %w", b, err)
	}
	defer b.Delete(context.WithoutCancel(ctx), key)
	rc, err := b.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read the probe object back from %s: %w", b, err)
	}
	got, err := io.ReadAll(io.LimitReader(rc, 1<<10))
	rc.Close()
	if err != nil {
		return fmt.Errorf("read the probe object back from %s: %w", b, err)
	}
	if string(got) != body {
		return fmt.Errorf("the probe object read back from %s differs from what was written", b)
	}
	if err := b.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete the probe object from %s: %w", b, err)
	}
	if _, err := b.Stat(ctx, key); !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("the probe object is still in %s after delete (%v)", b, err)
	}
	return nil
}
