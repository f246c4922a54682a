// Package fsutil holds small file-system helpers shared by packages that manage trees
// on disk (templates, snapshot images).
package fsutil

import (
	"io/fs"
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
