package backend

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strings"
)

// ImageExporter is the optional capability of moving a snapshot image out of the
// backend's scope and into another's (another daemon's, on this host or another), so
// that an image can be kept in a snapshot store (internal/snapstore) and restored
// where the local copy is gone.
//
// # Terms
//
// An export is a byte stream (a tar archive for the file-based backends) that holds
// the whole image and nothing of the host's. Its format is the backend's own: only
// ImportImage of the same backend reads it, and only where ImageCompat matches (the
// caller checks that, from what ImageCompat said where the image was taken).
//
// # Failure semantics
//
//   - ExportImage writes the image ref to w; ErrNotFound when ref names no image. It
//     reads the image without changing it; an image deleted meanwhile makes it fail
//     (never write a partial stream that ends cleanly). w's errors are returned.
//   - ImportImage reads a stream ExportImage wrote, until EOF, and makes it a new
//     image of this scope with a fresh reference, whole or not at all: on any error
//     (r's, a malformed stream, a full disk) no image is left. A stream that names a
//     path outside the image is refused. r's error at EOF (a checksum the caller
//     verifies as it reads) fails the import.
//   - ImageCompat describes what an image taken here needs of the host that restores
//     it; two hosts whose ImageCompat are Compatible can restore each other's images
//     (given the same template).
type ImageExporter interface {
	ExportImage(ctx context.Context, ref string, w io.Writer) error
	ImportImage(ctx context.Context, r io.Reader) (Image, error)
	ImageCompat(ctx context.Context) (ImageCompat, error)
}

// ImageCompat is what a snapshot image needs of the host that restores it.
type ImageCompat struct {
	// Backend is the backend's name ("gvisor").
	Backend string `json:"backend"`
	// Version is the backend's runtime version (runsc's, QEMU's).
	Version string `json:"version"`
	// Platform is the runtime's platform (runsc's systrap, ptrace or kvm).
	Platform string `json:"platform"`
	// CPUFeatures are the host CPU's instruction-set features that a restored
	// program may have chosen to use (HostCPUFeatures), sorted.
	CPUFeatures []string `json:"cpu_features"`
}

// IncompatibleError says which field of an image's ImageCompat this host does not
// meet.
type IncompatibleError struct {
	Field       string // backend, version, platform, cpu_features
	Image, Host string
}

func (e *IncompatibleError) Error() string {
	if e.Field == "cpu_features" {
		return "the image was taken on a CPU with features this host lacks (cpu_features): " + e.Image
	}
	return "the image needs " + e.Field + " " + quote(e.Image) + ", this host has " + quote(e.Host)
}

// ErrIncompatible is what every *IncompatibleError is (errors.Is).
var ErrIncompatible = errors.New("snapshot image incompatible with this host")

// Is makes errors.Is(err, ErrIncompatible) true.
func (e *IncompatibleError) Is(target error) bool { return target == ErrIncompatible }

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// Check reports whether an image taken where image was reported can be restored on
// a host that reports host: backend, version and platform equal, and every CPU
// feature of the image's host present here. It returns an *IncompatibleError naming
// the first field that differs.
func (image ImageCompat) Check(host ImageCompat) error {
	for _, f := range []struct{ name, a, b string }{
		{"backend", image.Backend, host.Backend}, {"version", image.Version, host.Version}, {"platform", image.Platform, host.Platform},
	} {
		if f.a != f.b {
			return &IncompatibleError{Field: f.name, Image: f.a, Host: f.b}
		}
	}
	have := map[string]bool{}
	for _, f := range host.CPUFeatures {
		have[f] = true
	}
	var missing []string
	for _, f := range image.CPUFeatures {
		if !have[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return &IncompatibleError{Field: "cpu_features", Image: strings.Join(missing, " "), Host: strings.Join(host.CPUFeatures, " ")}
	}
	return nil
}

// restoreFeatures are the CPU flags (as /proc/cpuinfo names them) of instruction-set
// extensions that user programs detect once (glibc's ifuncs, JITs) and then use
// without asking again: a program restored on a CPU without one of them may crash.
// gVisor's restore checks the same kind of set (its cpuid feature set).
var restoreFeatures = map[string]bool{
	"sse": true, "sse2": true, "pni": true, "ssse3": true, "sse4_1": true, "sse4_2": true, "popcnt": true,
	"avx": true, "avx2": true, "fma": true, "f16c": true, "bmi1": true, "bmi2": true, "adx": true,
	"aes": true, "pclmulqdq": true, "sha_ni": true, "movbe": true, "rdrand": true, "rdseed": true, "erms": true,
	"fsrm": true, "lzcnt": true, "abm": true, "xsave": true, "xsaveopt": true, "xsavec": true, "xsaves": true,
	"fsgsbase": true, "clflushopt": true, "clwb": true, "avx512f": true, "avx512dq": true, "avx512cd": true,
	"avx512bw": true, "avx512vl": true, "avx512ifma": true, "avx512vbmi": true, "avx512_vbmi2": true,
	"avx512_vnni": true, "avx512_bitalg": true, "avx512_vpopcntdq": true, "avx512_bf16": true, "avx512_fp16": true,
	"vaes": true, "vpclmulqdq": true, "gfni": true, "amx_tile": true, "amx_int8": true, "amx_bf16": true,
	"pku": true, "ospke": true, "rtm": true, "hle": true, "cx16": true, "cx8": true, "mmx": true, "fxsr": true,
	"cmov": true, "rdpid": true, "avx_vnni": true, "serialize": true, "waitpkg": true, "movdiri": true, "movdir64b": true,
}

// HostCPUFeatures returns the CPU features of this host that matter to a restore
// (see restoreFeatures), read from /proc/cpuinfo, sorted; nil when it cannot be read.
func HostCPUFeatures() []string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	return cpuFeatures(f)
}

func cpuFeatures(r io.Reader) []string {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		var out []string
		for _, fl := range strings.Fields(v) {
			if restoreFeatures[fl] {
				out = append(out, fl)
			}
		}
		sort.Strings(out)
		return out // every CPU of a host has the same flags
	}
	return nil
}
