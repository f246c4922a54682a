package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/vmexec/vmexec/api"
)

// RunChangeDiff returns what run id did to one file of its change set (path absolute,
// or relative to /home/user): a unified diff for text, sizes only for binary files.
// It fails with a 409 *Error when the snapshots it needs are no longer held.
func (c *Client) RunChangeDiff(ctx context.Context, id, path string) (api.ChangeDiff, error) {
	var d api.ChangeDiff
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id)+"/changes?path="+url.QueryEscape(path), nil, &d)
	return d, err
}

// ChangeSummary is a one-line summary of a change set, in path order:
// "+ report.csv (12 KB)  ~ data.json  - old.log", at most max entries (then "… N
// more"); "" for none. Directories end in "/".
func ChangeSummary(changes []api.FileChange, truncated bool, max int) string {
	var parts []string
	for i, ch := range changes {
		if max > 0 && i == max {
			parts = append(parts, fmt.Sprintf("… %d more", len(changes)-max))
			break
		}
		name := ch.Path
		if rest, ok := strings.CutPrefix(name, "/home/user/"); ok {
			name = rest
		}
		if ch.Type == "dir" {
			name += "/"
		}
		switch ch.Kind {
		case api.ChangeCreated:
			if ch.Type == "file" {
				name += " (" + humanSize(ch.Size) + ")"
			}
			parts = append(parts, "+ "+name)
		case api.ChangeModified:
			parts = append(parts, "~ "+name)
		default:
			parts = append(parts, "- "+name)
		}
	}
	if truncated {
		parts = append(parts, "(list truncated)")
	}
	return strings.Join(parts, "  ")
}

func humanSize(n int64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%d B", n)
	case n < 1000*1000:
		return fmt.Sprintf("%d KB", (n+500)/1000)
	case n < 1000*1000*1000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1f GB", float64(n)/1e9)
}
