package memtest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// TestBackend guards the test bed's own rules, which the HTTP layers' tests build
// on: the line language's output, exit codes and cancellation, and files with
// implicit directories (Home, and any directory a file is under).
func TestBackend(t *testing.T) {
	ctx := context.Background()
	sb, err := Backend{}.Create(ctx, backend.Spec{ID: "sb-1"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Code: "echo hi\nwarn oops\nraw \\x00\\xff\nexit 3\necho never"}, nil)
	if err != nil || string(res.Stdout) != "hi\n\x00\xff" || string(res.Stderr) != "oops\n" || res.ExitCode != 3 || res.Verdict != agentproto.VerdictNonzeroExit {
		t.Fatalf("exec: %+v %v", res, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if res, _ := sb.Exec(cctx, &agentproto.ExecRequest{Code: "wait"}, nil); res.Verdict != agentproto.VerdictCanceled {
		t.Errorf("wait, cancelled: %+v", res)
	}

	if err := sb.WriteFile(ctx, "d/a.txt", 0o644, strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	if err := sb.WriteFile(ctx, "/home/user/top.txt", 0o644, strings.NewReader("top")); err != nil {
		t.Fatal(err)
	}
	for p, typ := range map[string]string{"/home/user/d/a.txt": "file", "d": "dir", "/home/user": "dir"} {
		if fi, err := sb.StatFile(ctx, p); err != nil || fi.Type != typ {
			t.Errorf("stat %s: %+v %v, want a %s", p, fi, err, typ)
		}
	}
	if _, err := sb.StatFile(ctx, "nope"); !errors.Is(err, agentproto.ErrNotExist) {
		t.Errorf("stat of a missing path: %v", err)
	}
	if err := sb.WriteFile(ctx, "d", 0o644, strings.NewReader("x")); !errors.Is(err, agentproto.ErrIsDir) {
		t.Errorf("writing over a directory: %v", err)
	}
	if _, _, err := sb.OpenFile(ctx, Home); !errors.Is(err, agentproto.ErrIsDir) {
		t.Errorf("opening a directory: %v", err)
	}
	if l, err := sb.ListFiles(ctx, "d", 1); err != nil || len(l) != 1 || l[0].Path != "/home/user/d/a.txt" {
		t.Errorf("list d: %+v %v", l, err)
	}
	if l, err := sb.ListFiles(ctx, "", 1); err != nil || len(l) != 1 || l[0].Name != "top.txt" {
		t.Errorf("list home: %+v %v", l, err)
	}
	if _, err := sb.ListFiles(ctx, "nope", 1); !errors.Is(err, agentproto.ErrNotExist) {
		t.Errorf("list of a missing directory: %v", err)
	}
	if err := sb.RemoveFile(ctx, "d/a.txt", false); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.StatFile(ctx, "d"); !errors.Is(err, agentproto.ErrNotExist) {
		t.Errorf("a directory with no files left: %v", err)
	}
}
