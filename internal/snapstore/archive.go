package snapstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/vmexec/vmexec/internal/backend"
)

// Policy says when a daemon uploads a sandbox's snapshots.
type Policy string

const (
	// UploadAfterRun uploads every snapshot that becomes a sandbox's current one:
	// the background snapshot after each successful run, suspensions, rollbacks'
	// targets are already there. Coalesced: while one upload of a sandbox runs, only
	// the newest snapshot waiting is uploaded next.
	UploadAfterRun Policy = "after_run"
	// UploadOnSuspend uploads only the snapshots taken to suspend a sandbox (idle,
	// at the cap, at shutdown).
	UploadOnSuspend Policy = "on_suspend"
	// UploadNever uploads nothing; the store is only read (restores).
	UploadNever Policy = "never"
)

// Valid reports whether p is a known policy.
func (p Policy) Valid() bool {
	return p == UploadAfterRun || p == UploadOnSuspend || p == UploadNever
}

// Format is the manifest format written; Fetch refuses a newer one.
const Format = 1

// Manifest describes a stored snapshot: where it came from, what restoring it needs,
// and how to check the archive.
type Manifest struct {
	Format int    `json:"format"`
	Key    string `json:"key"`
	// SnapshotID, SandboxID, AgentID and Kind are the history's.
	SnapshotID string `json:"snapshot_id"`
	SandboxID  string `json:"sandbox_id"`
	AgentID    string `json:"agent_id,omitempty"`
	Kind       string `json:"kind,omitempty"`
	// Parent is the snapshot the sandbox's state descended from when this one was
	// taken (its previous current snapshot, or a fork's source), if any.
	Parent string `json:"parent,omitempty"`
	// StateRunID is the run whose end state the image holds.
	StateRunID string `json:"state_run_id,omitempty"`
	// Epoch is the sandbox's ownership epoch when it was taken (cluster mode; 0
	// on a single host).
	Epoch int64 `json:"epoch"`
	// Template and TemplateHash name the template the image's sandbox started
	// from; a restore needs the same one.
	Template     string `json:"template"`
	TemplateHash string `json:"template_hash"`
	// Compat is what the image needs of the restoring host (runsc version,
	// platform, CPU features).
	Compat backend.ImageCompat `json:"compat"`
	// MemoryMB is the sandbox's memory size.
	MemoryMB int64 `json:"memory_mb,omitempty"`
	// ImageBytes is the uncompressed export's size; ArchiveBytes and SHA256 are
	// the stored archive's (zstd of the export).
	ImageBytes   int64     `json:"image_bytes"`
	ArchiveBytes int64     `json:"archive_bytes"`
	SHA256       string    `json:"sha256"`
	Compression  string    `json:"compression"`
	TakenAt      time.Time `json:"taken_at"`
	UploadedAt   time.Time `json:"uploaded_at"`
	// Node is the daemon that uploaded it.
	Node string `json:"node,omitempty"`
}

// Key is the stored snapshot's key: snapshots/<sandbox>/<snapshot>.
func Key(sandboxID, snapshotID string) string { return "snapshots/" + sandboxID + "/" + snapshotID }

func archiveKey(key string) string  { return key + ".tar.zst" }
func manifestKey(key string) string { return key + ".json" }

// Store keeps snapshot images in Blobs.
type Store struct {
	Blobs Blobs
	// UploadPolicy is when the service uploads (default UploadAfterRun).
	UploadPolicy Policy
	// Node names this daemon in the manifests it writes.
	Node string
	// Epoch, if set, gives an agent's ownership epoch on this node for its
	// manifests (cluster mode).
	Epoch func(agentID string) int64
	// Uploaded, if set, is told each whole upload of a sandbox's newest state the
	// service made (not manual snapshots'), off the run's path: cluster mode writes
	// it as the agent's durable snapshot key.
	Uploaded func(Manifest)
	Logger   *slog.Logger
}

// Policy is the store's upload policy, with its default.
func (s *Store) Policy() Policy {
	if s.UploadPolicy == "" {
		return UploadAfterRun
	}
	return s.UploadPolicy
}

// String says where the store is.
func (s *Store) String() string { return s.Blobs.String() }

// Upload streams image ref out of exp into the store under m.Key: the export,
// zstd-compressed and checksummed as it goes, then the manifest (m completed with the
// sizes, checksum, compatibility and time). It returns the manifest written.
func (s *Store) Upload(ctx context.Context, exp backend.ImageExporter, ref string, m Manifest) (Manifest, error) {
	if !ValidKey(m.Key) {
		return Manifest{}, fmt.Errorf("upload: key %q invalid", m.Key)
	}
	compat, err := exp.ImageCompat(ctx)
	if err != nil {
		return Manifest{}, fmt.Errorf("upload %s: %w", m.Key, err)
	}
	m.Format, m.Compat, m.Compression, m.Node = Format, compat, "zstd", s.Node
	if s.Epoch != nil && m.Epoch == 0 && m.AgentID != "" {
		m.Epoch = s.Epoch(m.AgentID)
	}
	pr, pw := io.Pipe()
	var image counter
	go func() {
		zw, err := zstd.NewWriter(pw, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		err = exp.ExportImage(ctx, ref, io.MultiWriter(zw, &image))
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err) // nil: EOF
	}()
	sum := sha256.New()
	n, err := s.Blobs.Put(ctx, archiveKey(m.Key), io.TeeReader(pr, sum))
	pr.CloseWithError(errors.New("upload ended")) // the exporter stops if Put gave up early
	if err != nil {
		return Manifest{}, fmt.Errorf("upload %s to %s: %w", m.Key, s, err)
	}
	m.ImageBytes, m.ArchiveBytes, m.SHA256, m.UploadedAt = image.n, n, hex.EncodeToString(sum.Sum(nil)), time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	if _, err := s.Blobs.Put(ctx, manifestKey(m.Key), bytes.NewReader(b)); err != nil {
		return Manifest{}, fmt.Errorf("upload %s's manifest to %s: %w", m.Key, s, err)
	}
	return m, nil
}

// Manifest reads key's manifest; ErrNotFound when there is no whole upload there.
func (s *Store) Manifest(ctx context.Context, key string) (Manifest, error) {
	rc, err := s.Blobs.Get(ctx, manifestKey(key))
	if err != nil {
		return Manifest{}, err
	}
	defer rc.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("manifest of %s: %w: %w", key, ErrCorrupt, err)
	}
	if m.Format > Format || m.Format < 1 {
		return Manifest{}, fmt.Errorf("manifest of %s: format %d, this vmexec reads %d: %w", key, m.Format, Format, ErrIncompatible)
	}
	return m, nil
}

// Host is what the restoring host has: its backend's ImageCompat and its template.
type Host struct {
	Compat       backend.ImageCompat
	TemplateHash string
}

// Check reports whether m's image can be restored on h: ErrIncompatible, naming the
// field, when not.
func (m Manifest) Check(h Host) error {
	if m.TemplateHash != h.TemplateHash {
		return fmt.Errorf("stored snapshot %s: the image needs template_hash %s (%s), this host has %s: %w",
			m.SnapshotID, m.TemplateHash, m.Template, h.TemplateHash, ErrIncompatible)
	}
	if err := m.Compat.Check(h.Compat); err != nil {
		return fmt.Errorf("stored snapshot %s: %w: %w", m.SnapshotID, ErrIncompatible, err)
	}
	return nil
}

// Fetch restores the stored snapshot key into imp as a new image, after checking its
// manifest against the host (nothing else is downloaded when it does not match).
// The archive's size and checksum are verified as it streams.
func (s *Store) Fetch(ctx context.Context, imp backend.ImageExporter, key string, h Host) (backend.Image, Manifest, error) {
	m, err := s.Manifest(ctx, key)
	if err != nil {
		return backend.Image{}, Manifest{}, fmt.Errorf("fetch %s from %s: %w", key, s, err)
	}
	if err := m.Check(h); err != nil {
		return backend.Image{}, m, err
	}
	rc, err := s.Blobs.Get(ctx, archiveKey(key))
	if err != nil {
		return backend.Image{}, m, fmt.Errorf("fetch %s from %s: %w", key, s, err)
	}
	defer rc.Close()
	vr := &verifier{r: rc, h: sha256.New(), want: m.SHA256, size: m.ArchiveBytes}
	zr, err := zstd.NewReader(vr, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return backend.Image{}, m, err
	}
	defer zr.Close()
	img, err := imp.ImportImage(ctx, &drainer{zr: zr, raw: vr})
	if err != nil {
		return backend.Image{}, m, fmt.Errorf("fetch %s from %s: %w", key, s, err)
	}
	return img, m, nil
}

// Delete removes a stored snapshot (manifest first, so a half-deleted one is not
// whole); a missing one is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.Blobs.Delete(ctx, manifestKey(key)); err != nil {
		return err
	}
	return s.Blobs.Delete(ctx, archiveKey(key))
}

// Exists reports whether key holds a whole upload.
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	_, err := s.Blobs.Stat(ctx, manifestKey(key))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// verifier checks, at EOF, that what was read has the manifest's size and checksum.
type verifier struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	want string
	size int64
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if errors.Is(err, io.EOF) {
		if v.n != v.size {
			return n, fmt.Errorf("archive is %d bytes, its manifest says %d: %w", v.n, v.size, ErrCorrupt)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			return n, fmt.Errorf("archive checksum %s, its manifest says %s: %w", got, v.want, ErrCorrupt)
		}
	}
	return n, err
}

// drainer reads the decompressed stream and, once it ends, the raw archive to its
// EOF, so that the verifier sees every byte (zstd may stop before the last frame's
// trailing bytes) and reports a mismatch as the import's error.
type drainer struct {
	zr   io.Reader
	raw  io.Reader
	done bool
}

func (d *drainer) Read(p []byte) (int, error) {
	n, err := d.zr.Read(p)
	if errors.Is(err, io.EOF) && !d.done {
		d.done = true
		if _, derr := io.Copy(io.Discard, d.raw); derr != nil {
			return n, derr
		}
	}
	return n, err
}
