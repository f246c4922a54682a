package sqlstore

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Migration is one schema migration file. A migration's file name starts with its
// version, a positive integer, then '_': "0002_snapshots.sql". Each store embeds its
// own files (version N of the postgres store is the twin of SQLite's version N) and
// runs them its own way; an applied migration is never edited, only followed by a
// new one.
type Migration struct {
	Version int
	Name    string // file name
	SQL     string
}

// MustLoadMigrations is LoadMigrations for embedded files, which cannot be wrong at
// run time: it panics on an error.
func MustLoadMigrations(fsys fs.FS) []Migration {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		panic(err)
	}
	return ms
}

// LoadMigrations reads migrations/*.sql from fsys, ordered by version. Versions
// must be unique and run 1, 2, 3, ... without gaps, so that a missing file is
// caught at build time rather than skipped.
func LoadMigrations(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []Migration
	for _, name := range names {
		base := path.Base(name)
		prefix, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive version and '_'", base)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", base, err)
		}
		ms = append(ms, Migration{Version: v, Name: base, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions must be 1, 2, 3, ... with no gaps or duplicates)", m.Name, m.Version, i+1)
		}
	}
	return ms, nil
}

// NeedsApply reports whether a migration m must run, given the name recorded for
// its version (recorded false: none). A recorded placeholder, a
// "NNNN_reserved.sql" holding nothing but a comment that only reserved its version,
// is replaced by the real migration.
func NeedsApply(m Migration, recordedName string, recorded bool) bool {
	if !recorded {
		return true
	}
	return recordedName != m.Name && strings.HasSuffix(recordedName, "_reserved.sql")
}
