package policy

import (
	"path"
	"regexp"
	"strings"
)

// systemDirs are top-level directories whose recursive removal or chmod
// wrecks the machine.
var systemDirs = map[string]bool{
	"bin": true, "boot": true, "dev": true, "etc": true, "home": true, "lib": true,
	"lib32": true, "lib64": true, "libx32": true, "media": true, "mnt": true, "opt": true,
	"proc": true, "root": true, "run": true, "sbin": true, "snap": true, "srv": true,
	"sys": true, "usr": true, "var": true, "Users": true,
}

var homeUser = regexp.MustCompile(`^~[a-z_][a-z0-9_-]*$`)

// dangerousPath reports whether p, a shell word after quote removal, names
// the root, a top-level system directory, a home directory, or everything in
// one of those ("/*", "~/*"). Paths below them, such as /tmp/work, ./build,
// ~/project or /home/user/project, are fine.
func dangerousPath(p string) bool {
	p = strings.TrimSpace(p)
	if p == "" {
		return false
	}
	for _, glob := range []string{"/*", "/.*", "/{*,.*}", "/{.*,*}"} {
		if strings.HasSuffix(p, glob) {
			p = strings.TrimSuffix(p, glob)
			if p == "" {
				return true // "/*"
			}
			break
		}
	}
	for _, home := range []string{"${HOME}", "$HOME", "~"} {
		if p == home || strings.HasPrefix(p, home+"/") {
			p = "/home/user" + strings.TrimPrefix(p, home)
			break
		}
	}
	if homeUser.MatchString(p) {
		return true
	}
	if !strings.HasPrefix(p, "/") {
		return false
	}
	p = path.Clean(p)
	if p == "/" {
		return true
	}
	parts := strings.Split(p[1:], "/")
	switch {
	case len(parts) == 1:
		return systemDirs[parts[0]]
	case len(parts) == 2:
		// A user's home directory.
		return parts[0] == "home" || parts[0] == "Users"
	}
	return false
}

// blockDevice matches disk, partition and memory devices.
var blockDevice = regexp.MustCompile(`^/dev/(?:` +
	`(?:sd|hd|vd|xvd)[a-z]+\d*|nvme\d+(?:n\d+(?:p\d+)?)?|mmcblk\d+(?:p\d+)?|` +
	`loop\d+|dm-\d+|md\d+|sr\d+|mapper/.+|disk/.+|root|mem|kmem|port)$`)

func isBlockDevice(p string) bool {
	return blockDevice.MatchString(path.Clean(strings.TrimSpace(p)))
}

// harmlessDevice reports devices that are fine to write to: sinks, streams,
// terminals, shared memory and bash's network pseudo-files.
func harmlessDevice(p string) bool {
	switch p {
	case "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
		"/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/console", "/dev/kmsg":
		return true
	}
	for _, dir := range []string{"/dev/fd/", "/dev/pts/", "/dev/shm/", "/dev/tcp/", "/dev/udp/", "/dev/tty"} {
		if strings.HasPrefix(p, dir) {
			return true
		}
	}
	return false
}
