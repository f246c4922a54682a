package guest

// Change sets: what a run created, modified and deleted.
//
// Around a run that asks for it (ExecRequest.Changes), the agent scans the metadata of
// the writable areas — for every entry: its type, size, permission bits, mtime, ctime
// and inode, read with one fstatat per entry relative to its directory's descriptor,
// never the file's content — once before the program starts and once after it ends,
// and compares the two. An entry in the second scan only is created, in the first only
// deleted, in both with different metadata modified. A rename is therefore a delete of
// the old path and a create of the new one. A directory is reported when created or
// deleted, never as modified (its mtime moves whenever an entry is added or removed,
// which the entry's own change already says).
//
// # Scanning, and the fast path
//
// The previous run's post-run scan cannot simply stand in for the next pre-run scan:
// between runs a background process a run left behind (nohup, a server: the agent
// kills only fork bombs) and the files API may change the tree. And inside gVisor one
// stat costs tens of microseconds, so scanning a home of 1,000 files twice costs ~60
// ms. So the agent normally keeps a baseline and inotify watches across runs
// (watch.go), which learn of the changes made between runs too; it scans before and
// after each run only where inotify cannot serve (Options.DisableChangeWatch, no
// inotify, areas past the scan bound).
//
// # Bounds
//
// A scan stops after maxScan entries, or when it has taken scanBudget; the changes
// reported stop at maxEntries. Either way the result says changes_truncated. When a
// scan stopped early, a path it did not reach is not claimed created or deleted: a
// path counts as created (or deleted) only if the other scan listed its directory
// completely.
//
// The agent's own directories (RunBase: the runs' source files and the zygote's) are
// not scanned.

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Bounds of change sets, for each zero field of a ChangeScan.
const (
	DefaultMaxChanges = 1000
	DefaultMaxScan    = 20000
	// scanBudget bounds the time of one scan.
	scanBudget = 50 * time.Millisecond
)

// meta is what a scan keeps of one entry.
type meta struct {
	typ          string
	size         int64
	mode         uint32
	mtime, ctime int64
	ino          uint64
}

// treeScan is the metadata of the entries under some roots.
type treeScan struct {
	entries map[string]meta
	// complete holds the directories whose every entry is in entries.
	complete map[string]bool
	// stopped: the scan ended early (entries or time); paths it did not reach are
	// absent from entries.
	stopped bool
}

// scanner walks roots, skipping the paths in exclude (and everything under them).
type scanner struct {
	exclude  []string
	maxScan  int
	deadline time.Time
	out      *treeScan
}

// scanTree scans roots (absolute, cleaned) within the bounds.
func scanTree(roots, exclude []string, maxScan int, budget time.Duration) *treeScan {
	sc := &scanner{exclude: exclude, maxScan: maxScan, deadline: time.Now().Add(budget),
		out: &treeScan{entries: make(map[string]meta, 256), complete: make(map[string]bool, 64)}}
	for _, r := range roots {
		if sc.out.stopped {
			break
		}
		if sc.excluded(r) {
			continue
		}
		if _, seen := sc.out.entries[r]; seen {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(r, &st); err != nil {
			continue // a missing root is an empty area
		}
		m := metaOf(&st)
		sc.out.entries[r] = m
		if m.typ == agentproto.FileTypeDir {
			sc.walk(r)
		}
	}
	return sc.out
}

func (sc *scanner) excluded(p string) bool {
	for _, x := range sc.exclude {
		if p == x || strings.HasPrefix(p, x+"/") {
			return true
		}
	}
	return false
}

// walk records the entries of dir and recurses into its subdirectories.
func (sc *scanner) walk(dir string) {
	if len(sc.out.entries) >= sc.maxScan || time.Now().After(sc.deadline) {
		sc.out.stopped = true
		return
	}
	f, err := os.Open(dir)
	if err != nil {
		return // unreadable: its entries are unknown, and not claimed
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return
	}
	fd := int(f.Fd())
	var subdirs []string
	for _, name := range names {
		if len(sc.out.entries) >= sc.maxScan {
			sc.out.stopped = true
			return
		}
		p := dir + "/" + name
		if dir == "/" {
			p = "/" + name
		}
		if sc.excluded(p) {
			continue
		}
		var st unix.Stat_t
		if err := fstatat(fd, name, &st); err != nil {
			continue // gone meanwhile
		}
		m := metaOf(&st)
		sc.out.entries[p] = m
		if m.typ == agentproto.FileTypeDir {
			subdirs = append(subdirs, p)
		}
	}
	sc.out.complete[dir] = true
	for _, d := range subdirs {
		if sc.out.stopped {
			return
		}
		sc.walk(d)
	}
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func metaOf(st *unix.Stat_t) meta {
	typ := agentproto.FileTypeOther
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		typ = agentproto.FileTypeFile
	case unix.S_IFDIR:
		typ = agentproto.FileTypeDir
	case unix.S_IFLNK:
		typ = agentproto.FileTypeSymlink
	}
	return meta{typ: typ, size: st.Size, mode: st.Mode & 0o7777,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino}
}

// compareScans returns what changed from before to after, sorted by path, at most
// max changes; truncated says some were left out or could not be known.
func compareScans(before, after *treeScan, max int) (changes []agentproto.Change, truncated bool) {
	truncated = before.stopped || after.stopped
	known := func(s *treeScan, p string) bool { return !s.stopped || s.complete[filepath.Dir(p)] }
	add := func(p, kind string, m meta) {
		changes = append(changes, agentproto.Change{Path: p, Kind: kind, Type: m.typ, Size: m.size, Mode: m.mode & 0o777})
	}
	for p, am := range after.entries {
		bm, ok := before.entries[p]
		switch {
		case !ok:
			if known(before, p) {
				add(p, agentproto.ChangeCreated, am)
			}
		case bm.typ != am.typ || bm.ino != am.ino && am.typ != agentproto.FileTypeDir:
			// Replaced by another file (written elsewhere and renamed over it, say).
			add(p, agentproto.ChangeModified, am)
		case am.typ == agentproto.FileTypeDir:
			// Not reported: its entries' changes say it.
		case bm != am:
			add(p, agentproto.ChangeModified, am)
		}
	}
	for p, bm := range before.entries {
		if _, ok := after.entries[p]; !ok && known(after, p) {
			add(p, agentproto.ChangeDeleted, bm)
		}
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Path < changes[j].Path })
	if len(changes) > max {
		changes, truncated = changes[:max], true
	}
	return changes, truncated
}

// changeTracker holds a run's pre-run scan until the run has ended.
type changeTracker struct {
	roots, exclude []string
	maxEntries     int
	maxScan        int
	before         *treeScan    // the pre-run scan (scanning mode)
	watch          *changeWatch // the agent's watch (inotify mode; see watch.go)
	cost           time.Duration
}

// trackChanges scans the areas of req before its run; nil when req asks for none.
func (a *agent) trackChanges(req *agentproto.ExecRequest, workDir string) *changeTracker {
	cs := req.Changes
	if cs == nil {
		return nil
	}
	t := &changeTracker{maxEntries: cs.MaxEntries, maxScan: cs.MaxScan, exclude: []string{filepath.Clean(a.opts.RunBase)}}
	if t.maxEntries <= 0 {
		t.maxEntries = DefaultMaxChanges
	}
	if t.maxScan <= 0 {
		t.maxScan = DefaultMaxScan
	}
	paths := cs.Paths
	if len(paths) == 0 {
		paths = []string{a.opts.Home, "/tmp", workDir}
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(a.opts.Home, p)
		}
		t.roots = append(t.roots, filepath.Clean(p))
	}
	t.roots = outermost(t.roots)
	start := time.Now()
	if w, fresh := a.changeWatchFor(t.roots, t.exclude, t.maxScan); w != nil {
		if !fresh {
			w.drain()
			w.apply(t.maxEntries) // what changed between runs is not this run's
		}
		if w.fd >= 0 {
			t.watch = w
		} // else the apply's rescan found the watch unusable (watch.go): scan
	}
	if t.watch == nil {
		t.before = scanTree(t.roots, t.exclude, t.maxScan, scanBudget)
	}
	t.cost = time.Since(start)
	return t
}

// finish scans again and puts the change set in res.
func (t *changeTracker) finish(res *agentproto.ExecResult) {
	if t == nil || res == nil {
		return
	}
	start := time.Now()
	if t.watch != nil {
		t.watch.drain()
		res.Changes, res.ChangesTruncated = t.watch.apply(t.maxEntries)
	} else {
		after := scanTree(t.roots, t.exclude, t.maxScan, scanBudget)
		res.Changes, res.ChangesTruncated = compareScans(t.before, after, t.maxEntries)
	}
	if res.Changes == nil {
		res.Changes = []agentproto.Change{}
	}
	res.ChangesScanUS = (t.cost + time.Since(start)).Microseconds()
}

// outermost drops duplicates and the roots inside another root.
func outermost(roots []string) []string {
	sort.Strings(roots)
	var out []string
	for _, r := range roots {
		if n := len(out); n > 0 && underAny(r, out[n-1:]) {
			continue
		}
		out = append(out, r)
	}
	return out
}
