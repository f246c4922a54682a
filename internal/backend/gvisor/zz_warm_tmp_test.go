package gvisor_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

func TestTmpWarmPython(t *testing.T) {
	b, rootfs := newBackend(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "warm", RootFS: rootfs, MemoryBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	for _, code := range []string{"print(1)", "import json, os\nprint(json.dumps({'a': os.getcwd()}))"} {
		var host, guest []time.Duration
		for i := 0; i < 33; i++ {
			start := time.Now()
			res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: code})
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != "ok" {
				t.Fatalf("%+v %s %s", res, res.Stdout, res.Stderr)
			}
			if i >= 3 {
				host = append(host, time.Since(start))
				guest = append(guest, time.Duration(res.DurationMS)*time.Millisecond)
			}
		}
		sort.Slice(host, func(i, j int) bool { return host[i] < host[j] })
		sort.Slice(guest, func(i, j int) bool { return guest[i] < guest[j] })
		t.Logf("%q: round trip p50 %v p90 %v min %v; guest p50 %v", code, host[len(host)/2], host[len(host)*9/10], host[0], guest[len(guest)/2])
	}
}
