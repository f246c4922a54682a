package backend

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ImageDir is a directory of snapshot images, one subdirectory per reference, for a
// backend that keeps its images as files (both of today's do). An image is written
// under its path plus ImageTmpSuffix and renamed into place once whole, so a crash
// leaves at worst a half-written directory with that suffix, which List removes.
type ImageDir string

// ImageTmpSuffix marks an image being written.
const ImageTmpSuffix = ".tmp"

// SharedPrefix begins the reference of every shared image (see SharedImager):
// Delete leaves such an image alone, List marks it Shared, DeleteShared removes it.
const SharedPrefix = "shared-"

// IsShared reports whether ref names a shared image.
func IsShared(ref string) bool { return strings.HasPrefix(ref, SharedPrefix) }

// NewImageRef returns a fresh image reference.
func NewImageRef() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "img-" + hex.EncodeToString(b)
}

// Path is where the image ref lives (or will, once written).
func (d ImageDir) Path(ref string) string { return filepath.Join(string(d), ref) }

// Open returns the directory of an existing image, or ErrNotFound.
func (d ImageDir) Open(ref string) (string, error) {
	if !ValidRef(ref) {
		return "", fmt.Errorf("snapshot image %q: %w", ref, ErrNotFound)
	}
	dir := d.Path(ref)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("snapshot image %s: %w", ref, ErrNotFound)
	}
	return dir, nil
}

// Delete removes an image; a reference that names nothing is not an error. A shared
// image is left in place (see SharedImager; DeleteShared removes it).
func (d ImageDir) Delete(ref string) error {
	if IsShared(ref) {
		return nil
	}
	return d.DeleteShared(ref)
}

// DeleteShared removes an image, shared or not; a reference that names nothing is not
// an error.
func (d ImageDir) DeleteShared(ref string) error {
	if !ValidRef(ref) {
		return nil // names nothing a backend could have made
	}
	if err := os.RemoveAll(d.Path(ref)); err != nil {
		return fmt.Errorf("delete image %s: %w", ref, err)
	}
	return nil
}

// List describes every whole image with info, and removes half-written ones.
func (d ImageDir) List(info func(ref string) (Image, error)) ([]Image, error) {
	ents, err := os.ReadDir(string(d))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ImageTmpSuffix) {
			os.RemoveAll(d.Path(e.Name()))
			continue
		}
		if !e.IsDir() || !ValidRef(e.Name()) {
			continue
		}
		if img, err := info(e.Name()); err == nil {
			img.Shared = IsShared(img.Ref)
			out = append(out, img)
		}
	}
	return out, nil
}
