package api

import "time"

// FileInfo describes one file in a sandbox.
type FileInfo struct {
	Name string `json:"name"`
	// Path is absolute, inside the sandbox.
	Path string `json:"path"`
	// Type: file, dir, symlink, other.
	Type  string    `json:"type"`
	Size  int64     `json:"size"`
	Mode  uint32    `json:"mode"` // permission bits
	MTime time.Time `json:"mtime"`
}

// File types.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// FileList is GET /v1/sandboxes/{id}/files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"`
}
