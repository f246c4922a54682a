package mcpserver

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vmexec/vmexec/api"
)

// The text content of each result: short, first line the outcome, then the output.
// The structured content has every field; the text is what a model reads first.

// maxTextOutput bounds each output stream in a summary (the structured content has it
// whole, up to the run's own output limit).
const maxTextOutput = 16 << 10

func summarizeRun(r *api.ExecResult) string {
	var b strings.Builder
	switch r.Verdict {
	case api.VerdictBlocked:
		fmt.Fprintf(&b, "blocked by policy rule %s before it ran: %s\n", r.BlockedRule, r.BlockedReason)
		b.WriteString("Hint: change the code so it does not need what the rule refuses, then call run_code again; nothing ran and the sandbox is unchanged.\n")
		return b.String()
	case api.VerdictOK:
		fmt.Fprintf(&b, "ok: exit 0 in %d ms (sandbox %s)\n", r.DurationMS, r.SandboxID)
	default:
		fmt.Fprintf(&b, "failed: %s, exit %d", r.Verdict, r.ExitCode)
		if r.Signal != "" {
			fmt.Fprintf(&b, " (%s)", r.Signal)
		}
		fmt.Fprintf(&b, " in %d ms (sandbox %s)\n", r.DurationMS, r.SandboxID)
		switch {
		case r.RolledBack:
			fmt.Fprintf(&b, "rolled back to %s: the sandbox is as it was before this run", r.RestoredSnapshotID)
			if r.FailureSnapshotID != "" {
				fmt.Fprintf(&b, "; the failed state is kept as snapshot %s", r.FailureSnapshotID)
			}
			b.WriteString("\n")
		default:
			b.WriteString("not rolled back: the sandbox keeps what the run changed\n")
		}
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "error: %s\n", r.Error)
	}
	if r.SandboxRecreated {
		b.WriteString("note: the sandbox was found dead and recreated before this run; earlier files are gone\n")
	}
	if r.SandboxLost {
		b.WriteString("note: this run ended its sandbox; the next run starts in a fresh one\n")
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	stream(&b, "stdout", r.Stdout, r.StdoutTruncated)
	stream(&b, "stderr", r.Stderr, r.StderrTruncated)
	return b.String()
}

func stream(b *strings.Builder, name, s string, truncated bool) {
	if s == "" && !truncated {
		return
	}
	cut := false
	if len(s) > maxTextOutput {
		s, cut = cutUTF8(s, maxTextOutput), true
	}
	fmt.Fprintf(b, "--- %s ---\n%s", name, s)
	if !strings.HasSuffix(s, "\n") {
		b.WriteString("\n")
	}
	if cut {
		fmt.Fprintf(b, "[%s shortened here; structuredContent.%s has all of it]\n", name, name)
	}
	if truncated {
		fmt.Fprintf(b, "[%s truncated at the run's output limit (limits.max_output_bytes)]\n", name)
	}
}

func summarizeReply(res api.ParseExecuteResult) string {
	var b strings.Builder
	if len(res.Blocks) == 0 {
		return "no code blocks found in the reply (fence code with ```python etc.)\n"
	}
	verdict := "all blocks that ran succeeded"
	if !res.Success {
		verdict = "not all succeeded"
	}
	fmt.Fprintf(&b, "%d blocks: %d ran, %d failed, %d skipped; %s\n", len(res.Blocks), res.Executed, res.Failed, res.Skipped, verdict)
	for _, bl := range res.Blocks {
		fmt.Fprintf(&b, "\n## block %d (%s): %s", bl.Block.Index, bl.Block.Language, bl.Status)
		if bl.Reason != "" {
			fmt.Fprintf(&b, ": %s", bl.Reason)
		}
		b.WriteString("\n")
		if bl.Result != nil {
			b.WriteString(summarizeRun(bl.Result))
		}
	}
	return b.String()
}

func summarizeSandboxes(agent string, all bool, sbs []api.Sandbox) string {
	var b strings.Builder
	who := "agent " + agent
	if all {
		who = "all agents"
	}
	if len(sbs) == 0 {
		return fmt.Sprintf("no sandboxes for %s yet (run_code creates one on its first run)\n", who)
	}
	fmt.Fprintf(&b, "%d sandboxes for %s (oldest first; without sandbox_id your tools use your oldest):\n", len(sbs), who)
	for _, sb := range sbs {
		fmt.Fprintf(&b, "- %s", sb.ID)
		if sb.Name != "" && sb.Name != sb.ID {
			fmt.Fprintf(&b, " %q", sb.Name)
		}
		if all {
			fmt.Fprintf(&b, " agent=%s", sb.AgentID)
		}
		fmt.Fprintf(&b, " %s, %s, %d runs, %d snapshots\n", sb.Status, sb.Backend, sb.Runs, sb.Snapshots)
	}
	return b.String()
}

func summarizeSnapshots(id string, l api.SnapshotList) string {
	var b strings.Builder
	if len(l.Snapshots) == 0 {
		return fmt.Sprintf("sandbox %s has no snapshots\n", id)
	}
	fmt.Fprintf(&b, "%d snapshots of sandbox %s, oldest first (%s on disk):\n", len(l.Snapshots), id, humanBytes(l.DiskBytes))
	for _, s := range l.Snapshots {
		fmt.Fprintf(&b, "- %s %s %s", s.ID, s.Kind, s.CreatedAt.UTC().Format("2006-01-02 15:04:05"))
		if s.Name != "" {
			fmt.Fprintf(&b, " %q", s.Name)
		}
		if s.RunID != "" {
			fmt.Fprintf(&b, " run=%s", s.RunID)
		}
		if s.Pinned {
			b.WriteString(" pinned")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func summarizeHistory(agent string, failures bool, h *HistoryOut) string {
	var b strings.Builder
	what := "runs"
	if failures {
		what = "failed or blocked runs"
	}
	if len(h.Runs) == 0 {
		return fmt.Sprintf("no %s recorded for agent %s\n", what, agent)
	}
	fmt.Fprintf(&b, "%d of %d %s of agent %s, newest first:\n", len(h.Runs), h.Total, what, agent)
	for _, r := range h.Runs {
		fmt.Fprintf(&b, "- %s %s %s %s exit=%d", r.ID, r.StartedAt.UTC().Format("15:04:05"), r.Language, orStatus(r), r.ExitCode)
		if r.RolledBack {
			b.WriteString(" rolled back")
		}
		if r.BlockedRule != "" {
			fmt.Fprintf(&b, " rule=%s", r.BlockedRule)
		}
		fmt.Fprintf(&b, " sandbox=%s code: %s\n", r.SandboxID, oneLine(r.Code, 80))
		if r.Verdict != api.VerdictOK && r.Stderr != "" {
			fmt.Fprintf(&b, "  stderr: %s\n", oneLine(r.Stderr, 160))
		}
	}
	return b.String()
}

func orStatus(r api.Run) string {
	if r.Verdict != "" {
		return r.Verdict
	}
	return r.Status
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = cutUTF8(s, n) + "…"
	}
	return s
}

func summarizeFile(id string, f *FileContent) string {
	head := fmt.Sprintf("%s (%s) in sandbox %s", f.Path, humanBytes(f.Size), id)
	if f.Truncated {
		head += fmt.Sprintf("; only the first %s read (max_bytes)", humanBytes(int64(len(f.Content))))
	}
	if f.Encoding == "base64" {
		return head + "; binary, the content is base64 in structuredContent.content\n"
	}
	c := f.Content
	if len(c) > maxTextOutput {
		return head + "\n" + cutUTF8(c, maxTextOutput) + "\n[shortened here; structuredContent.content has what was read]\n"
	}
	return head + "\n" + c
}

// cutUTF8 is s's first n bytes or fewer, not ending inside a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func summarizeFiles(id, dir string, entries []api.FileInfo) string {
	if dir == "" {
		dir = "/home/user"
	}
	if len(entries) == 0 {
		return fmt.Sprintf("%s in sandbox %s is empty\n", dir, id)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d entries of %s in sandbox %s:\n", len(entries), dir, id)
	for i, e := range entries {
		if i == 500 {
			fmt.Fprintf(&b, "… and %d more (structuredContent.entries has all)\n", len(entries)-i)
			break
		}
		switch e.Type {
		case api.FileTypeDir:
			fmt.Fprintf(&b, "- %s/\n", e.Path)
		default:
			fmt.Fprintf(&b, "- %s %s\n", e.Path, humanBytes(e.Size))
		}
	}
	return b.String()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
