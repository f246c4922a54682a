// Package fsutil holds small file-system helpers shared by packages that manage trees
// on disk (templates, snapshot images).
package fsutil

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// DirSize is the total size of the regular files under dir; unreadable entries are
// skipped.
func DirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// CopyFile copies the regular file src to dst, created (or truncated) with perm.
func CopyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
