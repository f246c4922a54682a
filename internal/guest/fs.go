package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// prepare makes the directories every run needs: the run user's home (created and
// given to the run user if missing) and the run base, a root-owned directory (mode 0711)
// in which each run gets its own subdirectory. It is called at startup and before each
// run, since a run may have deleted the home directory.
func (a *agent) prepare() error {
	if _, err := os.Stat(a.opts.Home); errors.Is(err, fs.ErrNotExist) {
		if err := a.mkdirOwned(a.opts.Home, 0o755); err != nil {
			return fmt.Errorf("home: %w", err)
		}
	}
	// A run dir base that is not a plain directory of ours (say, a symlink planted by
	// a run when the base was missing) is replaced.
	fi, err := os.Lstat(a.opts.RunBase)
	if err == nil && (!fi.IsDir() || fileUID(fi) != uint32(os.Geteuid())) {
		a.log.Warn("replacing run base", "dir", a.opts.RunBase)
		if err := os.RemoveAll(a.opts.RunBase); err != nil {
			return fmt.Errorf("run base: %w", err)
		}
		err = fs.ErrNotExist
	}
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(a.opts.RunBase), 0o755); err != nil {
			return fmt.Errorf("run base: %w", err)
		}
		if err := os.Mkdir(a.opts.RunBase, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("run base: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("run base: %w", err)
	}
	return os.Chmod(a.opts.RunBase, 0o711)
}

// makeRunDir makes a fresh run-N directory owned by the run user holding the code.
func (a *agent) makeRunDir(file, code string) (string, error) {
	if err := a.prepare(); err != nil {
		return "", err
	}
	for {
		dir := filepath.Join(a.opts.RunBase, "run-"+strconv.FormatUint(a.runSeq.Add(1), 10))
		err := os.Mkdir(dir, 0o700)
		if errors.Is(err, fs.ErrExist) {
			continue // left over from an earlier agent (a restored sandbox)
		}
		if err != nil {
			return "", fmt.Errorf("run dir: %w", err)
		}
		// Write the code before the directory is the run user's: nothing of theirs
		// can be in it yet.
		src := filepath.Join(dir, file)
		if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("write code: %w", err)
		}
		if err := errors.Join(a.chown(src), a.chown(dir)); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("run dir: %w", err)
		}
		return dir, nil
	}
}

// workDir resolves the request's working directory (default: home; relative paths
// are relative to home). It must exist and be a directory: anything else is an invalid
// request.
func (a *agent) workDir(dir string) (string, error) {
	if dir == "" {
		return a.opts.Home, nil
	}
	if strings.ContainsRune(dir, 0) {
		return "", invalid("working directory %q contains NUL", dir)
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(a.opts.Home, dir)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir():
		return dir, nil
	case err == nil:
		return "", invalid("working directory %s is not a directory", dir)
	case errors.Is(err, fs.ErrNotExist):
		return "", invalid("working directory %s does not exist", dir)
	default:
		return "", invalid("working directory %s: %v", dir, err)
	}
}

// mkdirOwned makes dir for the run user; missing parents are made as the agent's.
func (a *agent) mkdirOwned(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, perm); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return a.chown(dir)
}

// chown gives p to the run user when runs drop privileges.
func (a *agent) chown(p string) error {
	if !a.setuid {
		return nil
	}
	return os.Lchown(p, int(a.opts.RunUser.UID), int(a.opts.RunUser.GID))
}

func fileUID(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return 0
}
