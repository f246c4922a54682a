// A workflow written against the seed system's VmExecutionClient API, as its demo
// workflow used it: execute, fail with rollback, snapshot, roll back to it, history,
// and the code blocks of an LLM reply. Only the import line is vmexec's.
//
//   VMEXEC_URL=http://127.0.0.1:8080 node clients/js/examples/seed-workflow.mjs
//
// It checks what it sees and exits 1 on the first surprise (the test suite runs it).
import { ApiClient, VmExecutionClient } from '../vmexec.js';

const apiClient = new ApiClient(process.env.VMEXEC_URL || 'http://127.0.0.1:8080');
const vmClient = new VmExecutionClient(apiClient, {
  autoRollback: true,
  snapshotOnFailure: true,
});
const agentId = `seed-workflow-${process.pid}`;

function expect(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}`, detail === undefined ? '' : JSON.stringify(detail, null, 2));
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const statuses = [];
const onProgress = (progress) => {
  statuses.push(progress.status);
  if (progress.status === 'output') process.stdout.write(`  | ${progress.data}`);
};

// 1. Success path: the workflow continues.
const first = await vmClient.executeCode({
  language: 'python',
  code: 'import math\nprint(math.factorial(10))\nopen("state.txt", "w").write("1")',
  agentId,
  onProgress,
});
expect(first.success && first.stdout.trim() === '3628800', 'python factorial(10) prints 3628800', first);
expect(statuses[0] === 'validating' && statuses.includes('executing') && statuses.at(-1) === 'completed', 'progress: validating, executing, completed', statuses);
const vmId = first.vmId;

// 2. Failure + rollback path: the state the failed run left is undone.
const failed = await vmClient.executeCode({
  language: 'python',
  code: 'open("state.txt", "w").write("2")\nraise SystemExit(undefined_name)',
  agentId,
  vmId,
});
expect(!failed.success && failed.rolledBack, 'a failing run is rolled back', failed);
expect(failed.failureSnapshotId && failed.restoredSnapshot, 'the failed state is kept, the pre-run state restored', failed);
const afterFail = await vmClient.executeCode({ language: 'bash', code: 'cat state.txt', agentId, vmId });
expect(afterFail.stdout === '1', 'state after the rollback is the state before the failed run', afterFail);

// 3. A manual snapshot, a change, and a rollback to the snapshot.
const snapshotId = await vmClient.createSnapshot(vmId, 'checkpoint');
expect(typeof snapshotId === 'string' && snapshotId.length > 0, 'createSnapshot returns an id', snapshotId);
const changed = await vmClient.executeCode({ language: 'bash', code: 'echo -n 3 > state.txt', agentId, vmId });
expect(changed.success, 'a later run changes the state', changed);
const rb = await vmClient.rollbackToSnapshot(vmId, snapshotId);
expect(rb.success && rb.snapshotId === snapshotId, 'rollbackToSnapshot', rb);
const afterRb = await vmClient.executeCode({ language: 'bash', code: 'cat state.txt', agentId, vmId });
expect(afterRb.stdout === '1', 'state after rollbackToSnapshot is the snapshot\'s', afterRb);

// 4. History: the server's, with each run's snapshot id.
const history = await vmClient.getExecutionHistory(vmId);
expect(Array.isArray(history) && history.length >= 5, 'getExecutionHistory lists the runs', history.length);
expect(history.some((h) => !h.success && h.snapshot_id), 'the failed run is there with its snapshot', history.map((h) => [h.success, h.snapshot_id]));

// 5. A security block: dangerous code is refused with a reason.
const blocked = await vmClient.executeCode({ language: 'bash', code: 'rm -rf /home/user', agentId, vmId });
expect(!blocked.success && blocked.blocked && blocked.reason, 'rm -rf /home/user is blocked with a reason', blocked);

// 6. An LLM reply with several code blocks, run in order.
const llmResponse = `Here is the plan.

\`\`\`python
print("Parsed from LLM")
\`\`\`

Then check the file from before:

\`\`\`bash
cat state.txt
\`\`\`
`;
const parsed = await vmClient.parseAndExecute(llmResponse, { stopOnFailure: true, agentId, vmId });
expect(parsed.success && parsed.totalBlocks === 2 && parsed.successfulBlocks === 2, 'parseAndExecute runs both blocks', parsed);
expect(parsed.results[0].stdout.trim() === 'Parsed from LLM' && parsed.results[1].stdout === '1', 'in order, in the same VM', parsed.results);

// 7. Roll back to the last success: the server finds the state after the last good run.
const lastOk = await vmClient.rollbackToLastSuccess(vmId, agentId);
expect(lastOk.success, 'rollbackToLastSuccess', lastOk);

console.log(`workflow done: ${vmClient.executionHistory.length} executions in this client's history`);
