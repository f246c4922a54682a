package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// File operations act on the sandbox's own filesystem with the agent's privileges
// (root; the sandbox holds nothing of the host's, so there is nothing outside it to
// reach): paths are absolute or relative to the run user's home, cleaned, and followed
// through symlinks like any path in the sandbox. What they create (written files, new
// directories) is given to the run user.

// listBatch is how many entries one entries frame carries.
const listBatch = 256

// maxListDepth bounds a listing's recursion.
const maxListDepth = 64

// serveFile serves a read, write, stat, list, mkdir or remove request.
func (a *agent) serveFile(o *op, e *agentproto.Envelope) {
	if e.File == nil {
		a.reply(o, &agentproto.Envelope{Type: agentproto.TypeError, Error: e.Type + " without a file"})
		return
	}
	path, err := a.resolve(e.File.Path)
	if err == nil {
		switch e.Type {
		case agentproto.TypeRead:
			err = a.readFile(o, path)
		case agentproto.TypeWrite:
			err = a.writeFile(o, path, e.File.Mode)
		case agentproto.TypeStat:
			var fi fs.FileInfo
			if fi, err = os.Lstat(path); err == nil {
				info := fileInfo(path, fi)
				err = a.reply(o, &agentproto.Envelope{Type: agentproto.TypeInfo, Info: &info})
			}
		case agentproto.TypeList:
			err = a.listDir(o, path, e.File.Depth)
		case agentproto.TypeMkdir:
			err = a.mkdirAll(path)
		case agentproto.TypeRemove:
			err = a.remove(path, e.File.Recursive)
		}
	}
	if err != nil {
		if errors.Is(err, errNewSession) {
			return
		}
		a.replyErr(o, fileError(err))
		return
	}
	if e.Type != agentproto.TypeStat {
		a.reply(o, &agentproto.Envelope{Type: agentproto.TypeDone})
	}
}

// resolve makes a request's path absolute and clean.
func (a *agent) resolve(p string) (string, error) {
	switch {
	case p == "":
		return "", fmt.Errorf("empty path: %w", agentproto.ErrInvalidPath)
	case strings.ContainsRune(p, 0):
		return "", fmt.Errorf("path %q contains NUL: %w", p, agentproto.ErrInvalidPath)
	case !filepath.IsAbs(p):
		p = filepath.Join(a.opts.Home, p)
	}
	return filepath.Clean(p), nil
}

// fileError maps an error of the os package to the protocol's sentinel errors.
func fileError(err error) error {
	if agentproto.CodeOf(err) != "" {
		return err
	}
	var sentinel error
	switch {
	case errors.Is(err, fs.ErrNotExist):
		sentinel = agentproto.ErrNotExist
	case errors.Is(err, syscall.EISDIR):
		sentinel = agentproto.ErrIsDir
	case errors.Is(err, syscall.ENOTDIR):
		sentinel = agentproto.ErrNotDir
	case errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		sentinel = agentproto.ErrFileTooLarge
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.EINVAL):
		sentinel = agentproto.ErrInvalidPath
	default:
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}

// fileInfo describes path from its (lstat) info.
func fileInfo(path string, fi fs.FileInfo) agentproto.FileInfo {
	typ := agentproto.FileTypeOther
	switch m := fi.Mode(); {
	case m.IsRegular():
		typ = agentproto.FileTypeFile
	case m.IsDir():
		typ = agentproto.FileTypeDir
	case m&fs.ModeSymlink != 0:
		typ = agentproto.FileTypeSymlink
	}
	return agentproto.FileInfo{
		Name: filepath.Base(path), Path: path, Type: typ, Size: fi.Size(),
		Mode: uint32(fi.Mode().Perm()), MTime: fi.ModTime().UTC(),
	}
}

// readFile streams a regular file: its info, then its content. A cancel stops it.
func (a *agent) readFile(o *op, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		return fmt.Errorf("%s: %w", path, agentproto.ErrIsDir)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file: %w", path, agentproto.ErrInvalidPath)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info := fileInfo(path, fi)
	if err := a.reply(o, &agentproto.Envelope{Type: agentproto.TypeInfo, Info: &info}); err != nil {
		return err
	}
	buf := make([]byte, agentproto.ChunkSize)
	for {
		if err := o.ctx.Err(); err != nil {
			return fmt.Errorf("read %s: %w", path, opCause(o))
		}
		n, err := f.Read(buf)
		if n > 0 {
			if err := a.reply(o, &agentproto.Envelope{Type: agentproto.TypeData, Data: buf[:n]}); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// writeFile receives a file's body into a temporary file next to path, renamed over
// path when the body is complete: the file appears whole or not at all. A symlink at
// path is replaced by the file, not written through; the file is the run user's,
// whoever owned what it replaces.
func (a *agent) writeFile(o *op, path string, mode uint32) (err error) {
	if mode == 0 {
		mode = 0o644
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%s: %w", path, agentproto.ErrIsDir)
	}
	dir := filepath.Dir(path)
	if err := a.mkdirAll(dir); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".vmexec-upload-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	for eof := false; !eof; {
		var e *agentproto.Envelope
		select {
		case e = <-o.data:
		case <-o.ctx.Done():
			return fmt.Errorf("write %s: %w", path, opCause(o))
		}
		if _, err := tmp.Write(e.Data); err != nil {
			return err
		}
		eof = e.EOF
	}
	if err := tmp.Chmod(fs.FileMode(mode & 0o777)); err != nil {
		return err
	}
	if a.setuid {
		if err := tmp.Chown(int(a.opts.RunUser.UID), int(a.opts.RunUser.GID)); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func opCause(o *op) error {
	if err := context.Cause(o.ctx); err != nil {
		return err
	}
	return o.ctx.Err()
}

// mkdirAll makes dir and its missing parents, each given to the run user. One that
// exists is fine; anything else in the way is ErrNotDir.
func (a *agent) mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("%s exists and is not a directory: %w", dir, agentproto.ErrNotDir)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := a.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made meanwhile
		}
		return err
	}
	return a.chown(dir)
}

// remove removes path: a directory only when empty, or with recursive.
func (a *agent) remove(path string, recursive bool) error {
	if path == "/" {
		return fmt.Errorf("cannot remove /: %w", agentproto.ErrInvalidPath)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() && recursive {
		return os.RemoveAll(path)
	}
	err = os.Remove(path)
	if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("%s is a directory that is not empty (remove it recursively): %w", path, agentproto.ErrIsDir)
	}
	return err
}

// listDir streams the entries of dir, depth levels deep, in batches, sorted by path
// within each directory. Symlinks are listed, not followed.
func (a *agent) listDir(o *op, dir string, depth int) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w", dir, agentproto.ErrNotDir)
	}
	depth = min(max(depth, 1), maxListDepth)
	var batch []agentproto.FileInfo
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := a.reply(o, &agentproto.Envelope{Type: agentproto.TypeEntries, Entries: batch})
		batch = nil
		return err
	}
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if level > 1 {
				return nil // an unreadable subdirectory is listed, not entered
			}
			return err
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		for _, ent := range ents {
			if err := o.ctx.Err(); err != nil {
				return opCause(o)
			}
			p := filepath.Join(dir, ent.Name())
			fi, err := os.Lstat(p)
			if err != nil {
				continue // gone meanwhile
			}
			batch = append(batch, fileInfo(p, fi))
			if len(batch) >= listBatch {
				if err := flush(); err != nil {
					return err
				}
			}
			if fi.IsDir() && level < depth {
				if err := walk(p, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(dir, 1); err != nil {
		return err
	}
	return flush()
}
