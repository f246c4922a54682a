package e2e

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// changeSet is a result's changes as "+ path", "~ path", "- path".
func changeSet(cs []api.FileChange) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, map[string]string{api.ChangeCreated: "+", api.ChangeModified: "~", api.ChangeDeleted: "-"}[c.Kind]+" "+c.Path)
	}
	return out
}

// A run's result and its history row list exactly what it created, modified and
// deleted (the agent's own files and the sandbox's other noise are not in it), and the
// diff of a modified text file shows the edit; a binary file reports sizes only.
func TestChangesInResultAndHistory(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "changes"
	wantOK(t, d.exec(t, a, "bash", "echo '{}' > ~/data.json; echo x > ~/old.log; head -c 300 /dev/zero > ~/blob.bin; echo ok"), "ok")
	r := d.exec(t, a, "bash", `head -c 12000 /dev/zero | tr '\0' a > ~/report.csv; echo '{"a":2}' > ~/data.json; rm ~/old.log
printf '\x00\x01' >> ~/blob.bin; echo t > /tmp/scratch; echo ok`)
	wantOK(t, r, "ok")
	want := []string{"~ /home/user/blob.bin", "~ /home/user/data.json", "- /home/user/old.log", "+ /home/user/report.csv", "+ /tmp/scratch"}
	if diff := cmp.Diff(want, changeSet(r.Changes)); diff != "" {
		t.Fatalf("result's changes (-want +got):\n%s", diff)
	}
	if r.ChangesTruncated || r.ChangesUndone {
		t.Errorf("truncated %v, undone %v on a small successful run", r.ChangesTruncated, r.ChangesUndone)
	}
	for _, c := range r.Changes {
		if c.Path == "/home/user/report.csv" && (c.Size != 12000 || c.Type != "file" || c.Mode != 0o644) {
			t.Errorf("report.csv: %+v, want a 12000-byte file of mode 0644", c)
		}
	}
	run, err := d.client.GetRun(ctx, r.ExecutionID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r.Changes, run.Changes); diff != "" {
		t.Errorf("history row's changes differ from the result's (-result +history):\n%s", diff)
	}

	df, err := d.client.RunChangeDiff(ctx, r.ExecutionID, "data.json")
	if err != nil {
		t.Fatal(err)
	}
	if df.Binary || !strings.Contains(df.Diff, "-{}\n") || !strings.Contains(df.Diff, `+{"a":2}`) || df.NewFrom != "sandbox" {
		t.Errorf("diff of data.json: %+v", df)
	}
	bin, err := d.client.RunChangeDiff(ctx, r.ExecutionID, "/home/user/blob.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bin.Binary || bin.Diff != "" || bin.OldSize != 300 || bin.NewSize != 302 {
		t.Errorf("diff of a binary file: %+v, want sizes 300 → 302 only", bin)
	}
	// The bare diff, for tools that apply patches.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.url+"/v1/runs/"+r.ExecutionID+"/changes?path=data.json", nil)
	req.Header.Set("Accept", "text/x-diff")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/x-diff") || string(raw) != df.Diff {
		t.Errorf("text/x-diff: %d %s %q, want the JSON's diff %q", resp.StatusCode, resp.Header.Get("Content-Type"), raw, df.Diff)
	}
	// A path the run did not change is 404, with a reason.
	_, err = d.client.RunChangeDiff(ctx, r.ExecutionID, "nothing-here")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusNotFound {
		t.Errorf("diff of an unchanged path: %v, want 404", err)
	}

	// A later run moves the sandbox on; the diff of the earlier run's modified file
	// then has no "after" to read (no failure snapshot for a successful run): 409.
	wantOK(t, d.exec(t, a, "bash", "echo later > ~/data.json; echo ok"), "ok")
	_, err = d.client.RunChangeDiff(ctx, r.ExecutionID, "data.json")
	if !errors.As(err, &ce) || ce.Status != http.StatusConflict {
		t.Errorf("diff after a later run: %v, want 409", err)
	}

	// Change sets can be turned off per request.
	off := false
	r = d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: "echo y > ~/y; echo ok", Changes: &api.ChangesOptions{Enabled: &off}})
	wantOK(t, r, "ok")
	if r.Changes != nil || r.ChangesScanUS != 0 {
		t.Errorf("changes off: got %v (scan %d us)", changeSet(r.Changes), r.ChangesScanUS)
	}
}

// A failed run that was rolled back reports what it had changed, that the changes
// were undone (in the result and in the history), and the sandbox indeed has none of
// them; its diffs read the old file from the pre-run snapshot and the new one from
// the failure snapshot.
func TestChangesOfRolledBackRun(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "changes-rollback"
	wantOK(t, d.exec(t, a, "bash", "printf 'one\\ntwo\\n' > ~/notes.txt; echo ok"), "ok")
	r := d.exec(t, a, "bash", "printf 'one\\nTWO\\n' > ~/notes.txt; echo x > ~/junk; exit 3")
	if r.Verdict != api.VerdictNonzeroExit || !r.RolledBack {
		t.Fatalf("result: %s", describe(r))
	}
	if diff := cmp.Diff([]string{"+ /home/user/junk", "~ /home/user/notes.txt"}, changeSet(r.Changes)); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if !r.ChangesUndone {
		t.Error("a rolled-back run's changes are not marked undone")
	}
	run, err := d.client.GetRun(ctx, r.ExecutionID)
	if err != nil {
		t.Fatal(err)
	}
	if !run.ChangesUndone || len(run.Changes) != 2 {
		t.Errorf("history row: undone %v, changes %v", run.ChangesUndone, changeSet(run.Changes))
	}
	after := d.exec(t, a, "bash", "cat ~/notes.txt; ls ~/junk 2>/dev/null || echo gone")
	wantOK(t, after, "one\ntwo\ngone")
	// The restored sandbox's change sets are still right: a run that only reads changed
	// nothing; a file written through the files API between runs is not the next run's.
	if len(after.Changes) != 0 {
		t.Errorf("a read-only run after the rollback reports %v", changeSet(after.Changes))
	}
	if _, err := d.client.PutFile(ctx, r.SandboxID, "uploaded.txt", strings.NewReader("up"), client.FileOptions{AgentID: a}); err != nil {
		t.Fatal(err)
	}
	next := d.exec(t, a, "bash", "echo three >> ~/notes.txt; echo ok")
	wantOK(t, next, "ok")
	if diff := cmp.Diff([]string{"~ /home/user/notes.txt"}, changeSet(next.Changes)); diff != "" {
		t.Errorf("changes of the run after the rollback (-want +got):\n%s", diff)
	}

	df, err := d.client.RunChangeDiff(ctx, r.ExecutionID, "notes.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(df.Diff, "-two\n") || !strings.Contains(df.Diff, "+TWO\n") || df.NewFrom != "failure_snapshot" {
		t.Errorf("diff of the rolled-back edit: %+v", df)
	}
	created, err := d.client.RunChangeDiff(ctx, r.ExecutionID, "junk")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(created.Diff, "+x\n") || created.OldSize != 0 {
		t.Errorf("diff of a created file: %+v", created)
	}
}

// The CLI says after a run, on stderr, what it did to the files; stdout stays the
// program's own.
func TestCLIChangeSummary(t *testing.T) {
	d := shared(t)
	out, errOut, code := vmexec(t, nil, "--url", d.url, "exec", "--agent", "cli-changes", "--lang", "bash", "-c",
		"head -c 12000 /dev/zero > ~/report.csv; echo '{}' > ~/data.json; echo done")
	if code != 0 || out != "done\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if !strings.Contains(errOut, "vmexec: changes: + data.json (3 B)  + report.csv (12 KB)\n") {
		t.Errorf("stderr lacks the change summary: %q", errOut)
	}
	_, errOut, _ = vmexec(t, nil, "--url", d.url, "exec", "--agent", "cli-changes", "--lang", "bash", "--no-changes", "-c", "echo x > ~/y")
	if strings.Contains(errOut, "changes:") {
		t.Errorf("--no-changes still prints a summary: %q", errOut)
	}
}
