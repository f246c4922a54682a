package storetest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// testRunMetadataAnyJSON guards the caller's metadata: any JSON object (nested
// values, nulls, booleans, integers past float64's exact range) comes back as it was
// written, through BeginRun and through the FinishRun that adds an error to it.
func testRunMetadataAnyJSON(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, _ := openTest(t, newDB)
	const written = `{"execution_id":"exec-1796160161448-4c710fkkq","snapshot_id":null,` +
		`"workflow_timestamp":1796160161448,"big":12345678901234567890,"ratio":0.25,` +
		`"ok":true,"tags":["a",1,null],"nested":{"deep":{"x":[{}]}}}`
	var meta map[string]any
	dec := json.NewDecoder(strings.NewReader(written))
	dec.UseNumber()
	if err := dec.Decode(&meta); err != nil {
		t.Fatal(err)
	}
	run := finishedRun("m1", "a", "sb-1", 1, history.VerdictOK)
	run.Metadata = meta
	if err := s.BeginRun(ctx, run); err != nil {
		t.Fatalf("BeginRun: %v", err)
	}
	got, err := s.GetRun(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(got.Metadata); !jsonEqual(t, string(b), written) {
		t.Errorf("metadata read back as %s, want %s", b, written)
	}

	run.Status, run.Verdict = history.StatusError, history.VerdictError
	run.Metadata = history.WithMetadata(meta, "error", "backend died")
	if err := s.FinishRun(ctx, run); err != nil {
		t.Fatalf("FinishRun: %v", err)
	}
	got, _ = s.GetRun(ctx, "m1")
	if got.Metadata["error"] != "backend died" || got.Metadata["workflow_timestamp"] != json.Number("1796160161448") {
		t.Errorf("after FinishRun: %v", got.Metadata)
	}
	if _, ok := meta["error"]; ok {
		t.Error("WithMetadata changed the map it was given")
	}
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	for _, p := range []struct {
		s string
		v *any
	}{{a, &x}, {b, &y}} {
		dec := json.NewDecoder(strings.NewReader(p.s))
		dec.UseNumber()
		if err := dec.Decode(p.v); err != nil {
			t.Fatalf("%s: %v", p.s, err)
		}
	}
	return cmp.Equal(x, y)
}
