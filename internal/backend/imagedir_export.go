package backend

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Export writes image ref as a tar archive of its files (regular files and
// directories only, paths relative to the image) to w, streaming: nothing is held in
// memory but a copy buffer. An image that is missing is ErrNotFound; one deleted
// while being read fails the export.
func (d ImageDir) Export(ref string, w io.Writer) error {
	dir, err := d.Open(ref)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: filepath.ToSlash(rel) + "/", Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime()})
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: filepath.ToSlash(rel), Size: fi.Size(), Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime()}); err != nil {
				return err
			}
			if _, err := io.Copy(tw, f); err != nil {
				return err // a file that shrank or vanished mid-read
			}
			return nil
		default:
			return fmt.Errorf("%s: not a regular file or directory", rel)
		}
	})
	if err != nil {
		return fmt.Errorf("export image %s: %w", ref, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("export image %s: %w", ref, err)
	}
	return nil
}

// Import reads a tar archive Export wrote, until EOF, into a new image and returns
// its reference. The image is written under its .tmp path and renamed into place
// once whole; on any error (r's included) nothing is left. Entries that are not
// regular files or directories, or whose path leaves the image, are refused.
func (d ImageDir) Import(r io.Reader) (ref string, err error) {
	ref = NewImageRef()
	final := d.Path(ref)
	tmp := final + ImageTmpSuffix
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", fmt.Errorf("import image: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	tr := tar.NewReader(r)
	files := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("import image: %w", err)
		}
		name := path.Clean(h.Name)
		if name == "." || path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return "", fmt.Errorf("import image: entry %q leaves the image", h.Name)
		}
		p := filepath.Join(tmp, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				return "", fmt.Errorf("import image: %w", err)
			}
		case tar.TypeReg:
			if err := writeFile(p, tr); err != nil {
				return "", fmt.Errorf("import image: %s: %w", name, err)
			}
			files++
		default:
			return "", fmt.Errorf("import image: entry %q is not a regular file or directory", h.Name)
		}
	}
	// Drain what follows the archive's end, so that the caller's reader reaches
	// EOF (and reports a checksum mismatch, if it checks one there).
	if _, err := io.Copy(io.Discard, r); err != nil {
		return "", fmt.Errorf("import image: %w", err)
	}
	if files == 0 {
		return "", errors.New("import image: the archive holds no file")
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("import image: %w", err)
	}
	return ref, nil
}

func writeFile(p string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
