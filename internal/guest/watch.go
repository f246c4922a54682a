package guest

// The fast path of change sets: inotify.
//
// Scanning costs one stat per entry, and inside gVisor a stat costs tens of
// microseconds: a home of 1,000 files takes ~30 ms per scan on a 2-core host (see
// bench/). So the agent keeps, across runs, the baseline of the scanned areas (the
// metadata of every entry) and an inotify watch on each of their directories. A run's
// change set is then the set of paths the kernel said were touched during it, each
// stat-ed once and compared with the baseline — a cost that follows what the run
// changed, not the size of the tree.
//
// # Lifecycle
//
// The first run that asks for changes of a set of areas scans them in full (the
// baseline) and adds the watches; so does a run asking for other areas (the old watch
// is closed). Before each run the agent reads the events queued since the last run —
// a background process or the files API may have changed the tree in between — and
// brings the baseline up to date without reporting them. After the run it reads the
// events again: those paths, stat-ed now, are the run's change set.
//
// A directory that appears (mkdir, or moved in) is watched and walked at once: what
// was created inside it before the watch existed is found by the walk. A directory
// that disappears takes its baseline subtree with it (each path deleted). A rename is,
// as everywhere, a delete and a create.
//
// # Falling back
//
// Whenever the events cannot be trusted — the kernel's queue overflowed, a run
// touched more paths than a scan's bound, a root itself was moved, a new directory's
// walk stopped at the bound — the next computation rescans in full and compares (the
// slow path of changes.go), then starts over with a fresh baseline. If inotify is
// unavailable, a watch cannot be added, an area is missing or is not a directory, or
// the areas do not fit a scan's bound, the agent simply scans before and after the run
// (and tries the watch again at the next one).
//
// Writes through a shared mapping (mmap) and through a hard link outside the areas
// raise no event on the watched name; such a change is missed, as it would be by a
// scan that compares metadata only when mtime did not move.
//
// A checkpoint saves the agent's memory (the baseline) together with the kernel's
// inotify state and the filesystem, so a restored or forked sandbox carries on
// consistently.

import (
	"errors"
	"slices"
	"sort"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmexec/vmexec/internal/agentproto"
)

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW

// changeWatch is the baseline and the watches of one set of areas.
type changeWatch struct {
	fd        int
	roots     []string
	exclude   []string
	maxScan   int
	base      map[string]meta
	wds       map[int]string // watch → directory
	dirty     map[string]struct{}
	unwatched map[string]bool // directories whose watch the kernel dropped (deleted)
	broken    bool            // the events missed something: rescan at the next apply
	buf       []byte
	excluder  scanner
}

// newChangeWatch scans roots and watches their directories; nil when inotify cannot
// serve them (then the caller scans).
func newChangeWatch(roots, exclude []string, maxScan int) *changeWatch {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil
	}
	w := &changeWatch{fd: fd, roots: roots, exclude: exclude, maxScan: maxScan,
		wds: map[int]string{}, dirty: map[string]struct{}{}, unwatched: map[string]bool{}, buf: make([]byte, 64<<10),
		excluder: scanner{exclude: exclude}}
	// Watches first, then the scan: an event between the two is only a path checked
	// once more.
	sc := scanTree(roots, exclude, maxScan, scanBudget)
	if sc.stopped || !hasRoots(sc, roots) || !w.watchDirs(sc.entries) {
		w.close()
		return nil
	}
	w.base = sc.entries
	return w
}

func (w *changeWatch) close() {
	if w != nil && w.fd >= 0 {
		unix.Close(w.fd)
		w.fd = -1
	}
}

// watchDirs watches every directory in entries.
func (w *changeWatch) watchDirs(entries map[string]meta) bool {
	for p, m := range entries {
		if m.typ == agentproto.FileTypeDir && !w.watch(p) {
			return false
		}
	}
	return true
}

func (w *changeWatch) watch(dir string) bool {
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		// Gone meanwhile is fine (its events are moot); out of watches is not.
		return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
	}
	w.wds[wd] = dir
	return true
}

// drain reads the queued events into w.dirty.
func (w *changeWatch) drain() {
	for {
		n, err := unix.Read(w.fd, w.buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return // EAGAIN: nothing more
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
			name := strings.TrimRight(string(w.buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			w.event(int(ev.Wd), ev.Mask, name)
		}
	}
}

func (w *changeWatch) event(wd int, mask uint32, name string) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.broken = true
		return
	}
	dir, ok := w.wds[wd]
	if !ok {
		return
	}
	if mask&unix.IN_IGNORED != 0 {
		// The directory was deleted (a directory of that name now is another one,
		// perhaps with the same inode number).
		delete(w.wds, wd)
		w.unwatched[dir] = true
		w.dirty[dir] = struct{}{}
		return
	}
	if mask&unix.IN_MOVE_SELF != 0 && slices.Contains(w.roots, dir) {
		w.broken = true
	}
	p := dir
	if name != "" {
		p = dir + "/" + name
	}
	if !w.excluder.excluded(p) {
		w.dirty[p] = struct{}{}
	}
}

// apply brings the baseline up to date with the dirty paths and returns what changed
// (sorted, at most max).
func (w *changeWatch) apply(max int) (changes []agentproto.Change, truncated bool) {
	if len(w.dirty) > w.maxScan {
		w.broken = true
	}
	if w.broken {
		return w.rescan(max)
	}
	add := func(p, kind string, m meta) {
		changes = append(changes, agentproto.Change{Path: p, Kind: kind, Type: m.typ, Size: m.size, Mode: m.mode & 0o777})
	}
	paths := make([]string, 0, len(w.dirty))
	for p := range w.dirty {
		paths = append(paths, p)
	}
	clear(w.dirty)
	unwatched := w.unwatched
	w.unwatched = map[string]bool{}
	sort.Strings(paths) // a directory before what is inside it
	for _, p := range paths {
		old, had := w.base[p]
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if had {
				w.forget(p, old, add)
			}
			continue
		}
		m := metaOf(&st)
		switch {
		case !had:
			w.base[p] = m
			add(p, agentproto.ChangeCreated, m)
		case old.typ != m.typ:
			if old.typ == agentproto.FileTypeDir {
				w.forgetTree(p, add)
			}
			w.base[p] = m
			add(p, agentproto.ChangeModified, m)
		case m.typ == agentproto.FileTypeDir && old.ino == m.ino && !unwatched[p]:
			w.base[p] = m // not reported: its entries say it
			continue
		case m.typ == agentproto.FileTypeDir:
			// Another directory in its place (removed and made again, or renamed over
			// it): the old one's entries are gone, the new one's are created.
			w.forgetTree(p, add)
			w.base[p] = m
		case old != m:
			w.base[p] = m
			add(p, agentproto.ChangeModified, m)
		}
		if m.typ == agentproto.FileTypeDir {
			w.adopt(p, add)
		}
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Path < changes[j].Path })
	if len(changes) > max {
		changes, truncated = changes[:max], true
	}
	return changes, truncated
}

// forget removes p (and, for a directory, everything under it) from the baseline,
// reporting each as deleted.
func (w *changeWatch) forget(p string, old meta, add func(string, string, meta)) {
	if slices.Contains(w.roots, p) {
		w.broken = true // a root made again would not be watched: rescan next time
	}
	delete(w.base, p)
	add(p, agentproto.ChangeDeleted, old)
	if old.typ == agentproto.FileTypeDir {
		w.forgetTree(p, add)
	}
}

// forgetTree removes what is under directory p from the baseline, reporting each as
// deleted, and drops the watches of p and its subdirectories.
func (w *changeWatch) forgetTree(p string, add func(string, string, meta)) {
	prefix := p + "/"
	for q, m := range w.base {
		if strings.HasPrefix(q, prefix) {
			delete(w.base, q)
			add(q, agentproto.ChangeDeleted, m)
		}
	}
	for wd, dir := range w.wds {
		if dir == p || strings.HasPrefix(dir, prefix) {
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.wds, wd)
		}
	}
}

// adopt watches a directory that appeared and walks it: what it holds is created.
func (w *changeWatch) adopt(dir string, add func(string, string, meta)) {
	if !w.watch(dir) {
		w.broken = true
		return
	}
	sc := scanTree([]string{dir}, w.exclude, w.maxScan, scanBudget)
	if sc.stopped {
		w.broken = true
	}
	for p, m := range sc.entries {
		if _, ok := w.base[p]; ok || p == dir {
			continue
		}
		w.base[p] = m
		add(p, agentproto.ChangeCreated, m)
		if m.typ == agentproto.FileTypeDir && !w.watch(p) {
			w.broken = true
		}
	}
}

// rescan is the slow path: a full scan compared with the baseline, which it replaces.
// Afterwards the watch is usable again only if the scan was complete.
func (w *changeWatch) rescan(max int) ([]agentproto.Change, bool) {
	clear(w.dirty)
	for wd := range w.wds {
		unix.InotifyRmWatch(w.fd, uint32(wd))
	}
	clear(w.wds)
	w.drain() // the IN_IGNORED of the removed watches
	clear(w.dirty)
	clear(w.unwatched)
	after := scanTree(w.roots, w.exclude, w.maxScan, scanBudget)
	changes, truncated := compareScans(&treeScan{entries: w.base}, after, max)
	w.base = after.entries
	w.broken = false
	if after.stopped || !hasRoots(after, w.roots) || !w.watchDirs(after.entries) {
		w.close() // the areas outgrew the bound: scan from now on
	}
	return changes, truncated
}

// hasRoots reports whether every root is a directory in sc: a missing root could
// appear unseen, since its parent is not watched.
func hasRoots(sc *treeScan, roots []string) bool {
	for _, r := range roots {
		if m, ok := sc.entries[r]; !ok || m.typ != agentproto.FileTypeDir {
			return false
		}
	}
	return true
}

// changeWatchFor returns the agent's watch of roots, making it (or replacing one of
// other areas) if need be; nil when change sets must be computed by scanning.
func (a *agent) changeWatchFor(roots, exclude []string, maxScan int) (w *changeWatch, fresh bool) {
	if a.opts.DisableChangeWatch {
		return nil, false
	}
	// A broken watch is kept: its next apply rescans against its baseline.
	if w := a.watch; w != nil && w.fd >= 0 && slices.Equal(w.roots, roots) && w.maxScan == maxScan {
		return w, false
	}
	a.watch.close()
	a.watch = nil
	// Areas that could not be watched are tried again only every watchRetry runs: a
	// failed try costs a full scan.
	if m := &a.watchMiss; slices.Equal(m.roots, roots) && m.maxScan == maxScan {
		if m.runs++; m.runs%watchRetry != 0 {
			return nil, false
		}
	}
	a.watch = newChangeWatch(roots, exclude, maxScan)
	if a.watch == nil {
		a.watchMiss = watchMiss{roots: roots, maxScan: maxScan}
		return nil, false
	}
	a.watchMiss = watchMiss{}
	return a.watch, true
}

// watchRetry: see changeWatchFor.
const watchRetry = 10

// watchMiss remembers the areas whose watch could not be made.
type watchMiss struct {
	roots   []string
	maxScan int
	runs    int
}
