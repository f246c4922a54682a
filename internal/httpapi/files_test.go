package httpapi

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Guards the files routes: an upload larger than the JSON body limit goes in whole and
// comes out identical with its Content-Length; missing is 404, a directory 400, over
// the file limit 413 (declared or not), another agent's sandbox 403.
func TestFileRoutes(t *testing.T) {
	const limit = MaxBodyBytes + 1<<20
	srv, svc := newTestServer(t, func(c *sandbox.Config) { c.Max.MaxFileBytes, c.Defaults.MaxFileBytes = limit, limit })
	c := client.New(srv.URL)
	ctx := context.Background()
	sb, err := svc.Create(ctx, api.CreateSandboxRequest{AgentID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), limit/16)
	info, err := c.PutFile(ctx, sb.ID, "big.bin", bytes.NewReader(data), client.FileOptions{AgentID: "a"})
	if err != nil || info.Size != int64(len(data)) || info.Path != "/home/user/big.bin" {
		t.Fatalf("put: %v %+v", err, info)
	}
	body, size, err := c.GetFile(ctx, sb.ID, "/home/user/big.bin", client.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("get: %d bytes (Content-Length %d); want the %d put", len(got), size, len(data))
	}
	entries, err := c.ListFiles(ctx, sb.ID, "", 1, client.FileOptions{})
	if err != nil || len(entries) != 1 || entries[0].Name != "big.bin" {
		t.Fatalf("list: %v %+v", err, entries)
	}

	status := func(err error) int {
		var ce *client.Error
		if errorsAs(err, &ce) {
			return ce.Status
		}
		return 0
	}
	over := append(data, 'x')
	_, undeclared := c.PutFile(ctx, sb.ID, "over", io.MultiReader(bytes.NewReader(over)), client.FileOptions{}) // chunked: no length
	_, declared := c.PutFile(ctx, sb.ID, "over", bytes.NewReader(over), client.FileOptions{})
	_, _, missingErr := c.GetFile(ctx, sb.ID, "nope", client.FileOptions{})
	_, _, dirErr := c.GetFile(ctx, sb.ID, "/home/user", client.FileOptions{})
	_, _, otherErr := c.GetFile(ctx, sb.ID, "big.bin", client.FileOptions{AgentID: "b"})
	_, _, noPathErr := c.GetFile(ctx, sb.ID, "", client.FileOptions{})
	for _, tt := range []struct {
		name string
		err  error
		want int
	}{
		{"over the limit, chunked", undeclared, 413},
		{"over the limit, Content-Length", declared, 413},
		{"missing", missingErr, 404},
		{"a directory", dirErr, 400},
		{"another agent", otherErr, 403},
		{"no path", noPathErr, 400},
		{"remove missing", c.RemoveFile(ctx, sb.ID, "nope", client.FileOptions{}), 404},
	} {
		if got := status(tt.err); got != tt.want {
			t.Errorf("%s: %v; want HTTP %d", tt.name, tt.err, tt.want)
		}
	}
	if err := c.RemoveFile(ctx, sb.ID, "big.bin", client.FileOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.GetFile(ctx, sb.ID, "big.bin", client.FileOptions{}); status(err) != 404 {
		t.Fatalf("after rm: %v", err)
	}
	// The JSON routes keep their own body limit.
	resp, err := http.Post(srv.URL+"/v1/exec", "application/json", strings.NewReader(`{"code":"`+strings.Repeat("x", MaxBodyBytes)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("a JSON body over MaxBodyBytes: %d", resp.StatusCode)
	}
}
