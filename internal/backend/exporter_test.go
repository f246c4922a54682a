package backend

import (
	"errors"
	"strings"
	"testing"
)

// Guards what a restore is checked against: only instruction-set flags count (not
// the kernel's bookkeeping flags), and a host is compatible when it has the same
// runtime and at least the image's CPU features.
func TestImageCompat(t *testing.T) {
	got := cpuFeatures(strings.NewReader("processor\t: 0\nflags\t\t: fpu sse2 avx2 constant_tsc hypervisor sse avx512f\nbugs\t: spectre\n"))
	if strings.Join(got, " ") != "avx2 avx512f sse sse2" {
		t.Fatalf("cpu features %v", got)
	}
	img := ImageCompat{Backend: "gvisor", Version: "v1", Platform: "systrap", CPUFeatures: []string{"avx2", "sse2"}}
	for _, tc := range []struct {
		name  string
		host  ImageCompat
		field string // "" when compatible
	}{
		{"same", img, ""},
		{"more features", ImageCompat{Backend: "gvisor", Version: "v1", Platform: "systrap", CPUFeatures: []string{"avx2", "avx512f", "sse2"}}, ""},
		{"fewer features", ImageCompat{Backend: "gvisor", Version: "v1", Platform: "systrap", CPUFeatures: []string{"sse2"}}, "cpu_features"},
		{"other version", ImageCompat{Backend: "gvisor", Version: "v2", Platform: "systrap", CPUFeatures: img.CPUFeatures}, "version"},
		{"other platform", ImageCompat{Backend: "gvisor", Version: "v1", Platform: "kvm", CPUFeatures: img.CPUFeatures}, "platform"},
		{"other backend", ImageCompat{Backend: "microvm", Version: "v1", Platform: "systrap", CPUFeatures: img.CPUFeatures}, "backend"},
	} {
		err := img.Check(tc.host)
		var ie *IncompatibleError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v, want compatible", tc.name, err)
		case tc.field != "" && (!errors.As(err, &ie) || ie.Field != tc.field || !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), tc.field)):
			t.Errorf("%s: %v, want an incompatibility naming %s", tc.name, err, tc.field)
		}
	}
}
