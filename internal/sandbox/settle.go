package sandbox

import (
	"os"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/history"
)

// Runs that change nothing take no snapshot.
//
// A transaction snapshots the state a successful run left (in the background, or
// before the answer with durable), so that the next run can be rolled back to it. A
// run that changed nothing — print(1), a failed import, reading a file — leaves the
// state its pre-run snapshot already holds, and the snapshot after it would be a copy
// of that image at the price of a checkpoint (tens of milliseconds of CPU). So when
// the state before the run was equal to an image, and the run provably left it as it
// found it, that image stays the state's snapshot: the next run's pre-run snapshot,
// the durable state, the rollback target, the image a crash resumes from; and such a
// run that failed has nothing to restore for an automatic rollback, nor a state to
// checkpoint for snapshot_on_failure: its failure_snapshot_id is the pre-run one.
//
// "Provably" is the guest's Settled (agentproto.ExecResult) plus an empty, whole
// change set: after the run nothing runs in the sandbox but the agent's own
// processes, no System V IPC object exists, and no writable area changed. That alone
// is not enough: the image must have been taken while the sandbox was quiet too —
// an image holding a process a run left behind (a `sleep 1; echo x > f &`) is not
// equal to the state after that process has exited, even if no file changed since.
// So each image taken is marked with whether the sandbox was quiet then (known from
// the last run's Settled; unknown, so false, for a new sandbox and after a restart),
// and a restore carries the mark of its image to the live sandbox.
//
// The mark lives in memory only: after a restart every image counts as not quiet, and
// the first run of each sandbox snapshots as before. VMEXEC_SKIP_UNCHANGED_SNAPSHOTS=off
// turns the skipping off (bench measures both).

// skipUnchanged enables keeping the pre-run image for runs that changed nothing.
var skipUnchanged = os.Getenv("VMEXEC_SKIP_UNCHANGED_SNAPSHOTS") != "off"

// settleState is what an entry knows about its state's quietness; guarded by the
// entry's turn.
type settleState struct {
	quiet     bool            // the live sandbox is known quiet (see above)
	unchanged bool            // the latest run left the state as it found it
	quietImgs map[string]bool // snapshots taken while the sandbox was quiet
}

// newSandbox forgets what was known of the previous sandbox's state; turn held.
func (st *settleState) newSandbox() { st.quiet, st.unchanged = false, false }

// running records that a run starts: what was known no longer holds; turn held.
func (st *settleState) running() { st.quiet, st.unchanged = false, false }

// ranWith records what the guest reported of a run; asked says the request asked
// for a change set; turn held.
func (st *settleState) ranWith(res *agentproto.ExecResult, asked bool) {
	st.quiet = asked && res.Settled
	st.unchanged = st.quiet && len(res.Changes) == 0 && !res.ChangesTruncated
}

// taken records that snapshot id holds the live state; turn held.
func (st *settleState) taken(id string) {
	if st.quietImgs == nil {
		st.quietImgs = map[string]bool{}
	}
	st.quietImgs[id] = st.quiet
}

// restored records that the live sandbox was restored from snapshot id; turn held.
func (st *settleState) restored(id string) {
	st.quiet, st.unchanged = st.quietImgs[id], false
}

// forget drops snapshot id, deleted; turn held.
func (st *settleState) forget(id string) { delete(st.quietImgs, id) }

// unchangedSince reports whether the live state is provably the one pre holds: the
// latest run left the state as it found it, and pre was taken while the sandbox was
// quiet (see above); turn held.
func (e *entry) unchangedSince(pre history.Snapshot) bool {
	return skipUnchanged && pre.ID != "" && e.sb != nil && e.settle.unchanged && e.settle.quietImgs[pre.ID]
}

// keepPre makes pre, the run's pre-run snapshot, the snapshot of the live state again
// when the run left the state as pre holds it (see above); turn held. It reports
// whether it did. The run's effects are none, so the newest run whose effects the
// state holds stays pre's.
func (e *entry) keepPre(pre history.Snapshot) bool {
	if !e.unchangedSince(pre) {
		return false
	}
	e.cleanSnap, e.current, e.headRun, e.cleanRec = pre.ID, pre.ID, pre.StateRunID, pre
	return true
}
