package template

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Guards "rebuild only when the recipe changes": the hash ignores package order and
// changes with any field.
func TestRecipeHash(t *testing.T) {
	a := Default
	b := Default
	b.Packages = append([]string(nil), Default.Packages...)
	b.Packages[0], b.Packages[1] = b.Packages[1], b.Packages[0]
	if a.Hash() != b.Hash() {
		t.Fatal("package order changed the hash")
	}
	c := Default
	c.Packages = append(append([]string(nil), Default.Packages...), "curl")
	if a.Hash() == c.Hash() {
		t.Fatal("a new package did not change the hash")
	}
	d := Default
	d.Setup += "\ntrue"
	if a.Hash() == d.Hash() {
		t.Fatal("a setup change did not change the hash")
	}
}

// Guards that a half-built template (no meta.json) is never used, and a complete one is
// found without rebuilding.
func TestGetAndList(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	r := Recipe{Name: "x", Suite: "bookworm", Variant: "minbase"}
	if _, err := s.Get(r); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("err = %v, want ErrNotBuilt", err)
	}
	dir := s.dirFor(r)
	os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755)
	if _, err := s.Get(r); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("half-built template: err = %v, want ErrNotBuilt", err)
	}
	os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"name":"x","hash":"`+r.Hash()+`"}`), 0o644)
	got, err := s.Ensure(context.Background(), r, nil) // must not try to build
	if err != nil {
		t.Fatal(err)
	}
	if got.RootFS != filepath.Join(dir, "rootfs") {
		t.Fatalf("rootfs = %s", got.RootFS)
	}
	l, err := s.List()
	if err != nil || len(l) != 1 || l[0].Name != "x" {
		t.Fatalf("list = %v, %v", l, err)
	}
}
