package e2b

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Files: the filesystem.Filesystem RPCs that map onto the service's file calls, and
// envd's REST /files (upload, download). Paths are absolute or relative to
// /home/user, resolved in the guest as for /v1's files.

// entryInfo is envd's EntryInfo in proto3 JSON.
type entryInfo struct {
	Name         string `json:"name"`
	Type         string `json:"type"`
	Path         string `json:"path"`
	Size         int64  `json:"size,string"`
	Mode         uint32 `json:"mode"`
	Permissions  string `json:"permissions"`
	Owner        string `json:"owner"`
	Group        string `json:"group"`
	ModifiedTime string `json:"modifiedTime,omitempty"`
}

func entryOf(fi api.FileInfo) entryInfo {
	t, mode := "FILE_TYPE_UNSPECIFIED", fs.FileMode(fi.Mode)&fs.ModePerm
	switch fi.Type {
	case api.FileTypeFile:
		t = "FILE_TYPE_FILE"
	case api.FileTypeDir:
		t, mode = "FILE_TYPE_DIRECTORY", mode|fs.ModeDir
	case api.FileTypeSymlink:
		t, mode = "FILE_TYPE_SYMLINK", mode|fs.ModeSymlink
	}
	e := entryInfo{Name: fi.Name, Type: t, Path: fi.Path, Size: fi.Size, Mode: uint32(mode), Permissions: mode.String(), Owner: "user", Group: "user"}
	if !fi.MTime.IsZero() {
		e.ModifiedTime = fi.MTime.UTC().Format(time.RFC3339Nano)
	}
	return e
}

func (h *Handler) listDir(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Path  string `json:"path"`
		Depth int    `json:"depth"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	rec := recOf(r)
	list, err := h.svc.ListFiles(r.Context(), rec.ID, rec.AgentID, in.Path, in.Depth)
	if err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	out := struct {
		Entries []entryInfo `json:"entries"`
	}{Entries: []entryInfo{}}
	for _, fi := range list.Entries {
		out.Entries = append(out.Entries, entryOf(fi))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) stat(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Path string `json:"path"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	rec := recOf(r)
	fi, err := h.svc.StatFile(r.Context(), rec.ID, rec.AgentID, in.Path)
	if err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entry": entryOf(fi)})
}

// makeDir creates a directory and its parents; one that exists is already_exists
// (the SDK's makeDir then answers false).
func (h *Handler) makeDir(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Path string `json:"path"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	rec := recOf(r)
	if fi, err := h.svc.StatFile(r.Context(), rec.ID, rec.AgentID, in.Path); err == nil {
		h.writeRPCError(w, r, fmt.Errorf("%s exists (a %s): %w", fi.Path, fi.Type, errExists))
		return
	} else if !errors.Is(err, sandbox.ErrNotFound) {
		h.writeRPCError(w, r, err)
		return
	}
	if err := h.svc.MakeDir(r.Context(), rec.ID, rec.AgentID, in.Path); err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	fi, err := h.svc.StatFile(r.Context(), rec.ID, rec.AgentID, in.Path)
	if err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entry": entryOf(fi)})
}

// remove removes a file, or a directory with everything in it.
func (h *Handler) remove(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Path string `json:"path"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	rec := recOf(r)
	if err := h.svc.RemoveFile(r.Context(), rec.ID, rec.AgentID, in.Path, true); err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// move renames a file or directory. The service has no rename, so it is a run of
// `mv` (recorded in the history like any command).
func (h *Handler) move(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
	}
	if !h.decodeRPC(w, r, &in) {
		return
	}
	if in.Source == "" || in.Destination == "" {
		h.writeRPCError(w, r, fmt.Errorf("source and destination are required: %w", errBadRequest))
		return
	}
	rec := recOf(r)
	if _, err := h.svc.StatFile(r.Context(), rec.ID, rec.AgentID, in.Source); err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	no := false
	res, err := h.svc.Exec(r.Context(), api.ExecRequest{AgentID: rec.AgentID, SandboxID: rec.ID, Language: "bash",
		Code: "mv -T -- " + shellQuote(in.Source) + " " + shellQuote(in.Destination), History: &api.ExecPolicy{AutoRollbackOnFailure: &no},
		Changes: &api.ChangesOptions{Enabled: &no}})
	if err == nil && res.Verdict != api.VerdictOK {
		err = fmt.Errorf("mv: %s%s: %w", res.Stderr, res.Error, sandbox.ErrInvalid)
	}
	if err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	fi, err := h.svc.StatFile(r.Context(), rec.ID, rec.AgentID, in.Destination)
	if err != nil {
		h.writeRPCError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entry": entryOf(fi)})
}

// writeInfo is one element of the upload's answer.
type writeInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// upload writes files: the body as one file (application/octet-stream, maybe
// gzip-encoded) at ?path, or each part named "file" of a multipart/form-data body,
// at ?path or, without it, at the part's file name (the SDK's multi-file write).
// Parent directories are created.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	rec := recOf(r)
	target := r.URL.Query().Get("path")
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			h.writeAPIError(w, r, fmt.Errorf("gzip body: %v: %w", err, errBadRequest))
			return
		}
		defer zr.Close()
		body = zr
	}
	// Uploads are exempt from the daemon's body timeout; this bounds a stalled one.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(10 * time.Minute))
	out := []writeInfo{}
	put := func(p string, content io.Reader) error {
		fi, err := h.svc.PutFile(r.Context(), rec.ID, rec.AgentID, p, 0, content)
		if err != nil {
			return err
		}
		out = append(out, writeInfo{Name: fi.Name, Type: "file", Path: fi.Path})
		return nil
	}
	var err error
	switch mt {
	case "application/octet-stream", "":
		if target == "" {
			err = fmt.Errorf("?path= names the file: %w", errBadRequest)
			break
		}
		err = put(target, body)
	case "multipart/form-data":
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, perr := mr.NextPart()
			if perr == io.EOF {
				break
			}
			if perr != nil {
				err = fmt.Errorf("multipart body: %v: %w", perr, errBadRequest)
				break
			}
			if part.FormName() != "file" {
				continue
			}
			p := target
			if p == "" {
				p = rawFileName(part) // the SDK puts each file's path there
			}
			if p == "" {
				err = fmt.Errorf("no ?path= and no file name in the part: %w", errBadRequest)
				break
			}
			if err = put(p, part); err != nil {
				break
			}
		}
		if err == nil && len(out) == 0 {
			err = fmt.Errorf("the multipart body has no part named \"file\": %w", errBadRequest)
		}
	default:
		err = fmt.Errorf("uploads are multipart/form-data or application/octet-stream, not %s: %w", mt, errBadRequest)
	}
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// download answers the file's bytes; a missing file is 404 (the SDK's
// FileNotFoundError), a directory 400.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	rec := recOf(r)
	p := r.URL.Query().Get("path")
	err := h.svc.OpenFile(r.Context(), rec.ID, rec.AgentID, p, func(fi api.FileInfo, content io.Reader) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
		w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(fi.Path)}))
		w.WriteHeader(http.StatusOK)
		_, err := io.Copy(w, content)
		if err != nil {
			h.log.Warn("download cut short", "sandbox", rec.ID, "path", fi.Path, "err", err)
		}
		return nil // the status is sent: a failure now can only cut the body short
	})
	if err != nil {
		h.writeAPIError(w, r, err)
	}
}

// rawFileName is a part's file name as sent: the SDK's multi-file write puts each
// file's whole path there, which multipart.Part.FileName would cut to its base.
func rawFileName(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}
