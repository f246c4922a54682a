// The seed-compatible surfaces against the real daemon: VmExecutionClient (every
// method, result fields, onProgress statuses, live output), the seed's api-client
// methods, and the seed workflow example, run unchanged.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ApiClient, Client, VmExecutionClient, withVmMethods, PROGRESS_STATUSES } from '../vmexec.js';
import { startDaemon, missing, repoRoot } from './daemon.mjs';

const why = missing();
let d;
let n = 0;
const agent = (name) => `jsvm-${name}-${process.pid}-${++n}`;
before(async () => { if (!why) d = await startDaemon(); });
after(async () => { if (d) await d.stop(); });

const RESULT_FIELDS = ['success', 'executionId', 'vmId', 'exitCode', 'stdout', 'stderr', 'duration', 'attempts', 'snapshotId', 'timestamp'];

describe('VmExecutionClient against the daemon', { skip: why || false }, () => {

  it('executeCode: the seed result fields and progress statuses; live output through onProgress and onStdout', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url });
    const progress = [];
    const out = [];
    const r = await vm.executeCode({
      language: 'python', code: 'print("a")\nprint("b")', agentId: agent('ok'),
      onProgress: (p) => progress.push(p), onStdout: (s) => out.push(s),
    });
    for (const f of RESULT_FIELDS) assert.ok(f in r, `result has ${f}`);
    assert.equal(r.success, true);
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'a\nb\n');
    assert.equal(r.attempts, 1);
    assert.match(r.vmId, /^sb-/);
    assert.match(r.executionId, /^exec-/);
    assert.ok(!Number.isNaN(Date.parse(r.timestamp)));
    const statuses = progress.map((p) => p.status);
    assert.deepEqual(statuses.filter((s) => s !== 'output'), ['validating', 'executing', 'completed']);
    assert.equal(progress.filter((p) => p.status === 'output').map((p) => p.data).join(''), 'a\nb\n');
    assert.ok(statuses.indexOf('output') < statuses.indexOf('completed'));
    assert.equal(out.join(''), 'a\nb\n');
    for (const s of statuses) assert.ok(PROGRESS_STATUSES.includes(s));
    assert.ok(progress.every((p) => p.executionId === r.executionId));
  });

  it('executeCode: a failure is rolled back by the server, with its snapshot ids; the state is as before', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url }, { autoRollback: true, snapshotOnFailure: true });
    const a = agent('fail');
    const w = await vm.executeCode({ language: 'bash', code: 'echo -n before > f.txt', agentId: a });
    assert.equal(w.success, true);
    const statuses = [];
    const f = await vm.executeCode({ language: 'bash', code: 'echo -n after > f.txt; exit 2', agentId: a, onProgress: (p) => statuses.push(p.status) });
    assert.equal(f.success, false);
    assert.equal(f.exitCode, 2);
    assert.equal(f.attempts, 1, 'a program that failed is not retried');
    assert.equal(f.rolledBack, true);
    assert.match(f.restoredSnapshot, /^snap-/);
    assert.match(f.failureSnapshotId, /^snap-/);
    assert.equal(f.snapshotId, f.restoredSnapshot, 'snapshotId is the server\'s pre-run snapshot');
    assert.deepEqual(statuses.filter((s) => s !== 'output'), ['validating', 'executing', 'rolling_back', 'failed']);
    const r = await vm.executeCode({ language: 'bash', code: 'cat f.txt', agentId: a });
    assert.equal(r.stdout, 'before');
  });

  it('executeCode with autoRollback false leaves the failed state', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url }, { autoRollback: false });
    const a = agent('norb');
    await vm.executeCode({ language: 'bash', code: 'echo -n 1 > g.txt', agentId: a });
    const f = await vm.executeCode({ language: 'bash', code: 'echo -n 2 > g.txt; exit 1', agentId: a });
    assert.equal(f.rolledBack, false);
    assert.equal((await vm.executeCode({ language: 'bash', code: 'cat g.txt', agentId: a })).stdout, '2');
  });

  it('executeCode: blocked by the server policy, and by local validation', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url });
    const b = await vm.executeCode({ language: 'bash', code: 'rm -rf /home/user', agentId: agent('blk') });
    assert.equal(b.success, false);
    assert.equal(b.blocked, true);
    assert.equal(b.rule, 'destroy_root');
    assert.ok(b.reason && b.error);
    const v = await vm.executeCode({ language: 'cobol', code: 'DISPLAY 1', agentId: agent('blk') });
    assert.deepEqual([v.success, v.blocked], [false, true]);
    assert.match(v.error, /Unsupported language/);
    assert.match(v.reason, /python, javascript, bash, rust, go/);
  });

  it('the seed\'s acceptance cases: a 45 s sleep cut by the timeout, 3 agents at once, four languages in one message', async () => {
    const slow = await new VmExecutionClient({ baseUrl: d.url }, { timeout: 2000 })
      .executeCode({ language: 'python', code: 'import time; time.sleep(45)', agentId: agent('slow') });
    assert.deepEqual([slow.success, slow.verdict, slow.attempts], [false, 'timeout', 1]);
    assert.equal(slow.rolledBack, true);

    const vm = new VmExecutionClient({ baseUrl: d.url });
    const three = await Promise.all([1, 2, 3].map((i) => vm.executeCode({ language: 'python', code: `print(${i}*${i})`, agentId: agent(`par${i}`) })));
    assert.deepEqual(three.map((r) => r.stdout.trim()), ['1', '4', '9']);
    assert.equal(new Set(three.map((r) => r.vmId)).size, 3, 'each agent has its own VM');

    const reply = 'Four languages:\n```python\nprint("py")\n```\n```javascript\nconsole.log("js")\n```\n'
      + '```bash\necho sh\n```\n```rust\nfn main() { let p: Vec<u32> = (2..50).filter(|n| (2..*n).all(|d| n % d != 0)).collect(); println!("{:?}", p); }\n```\n';
    const all = await vm.parseAndExecute(reply, { agentId: agent('four') });
    assert.equal(all.success, true, JSON.stringify(all.results.map((r) => [r.exitCode, r.stderr])));
    assert.deepEqual(all.results.map((r) => r.stdout.trim()), ['py', 'js', 'sh', '[2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]']);
  });

  it('validateCode and extractCodeBlocks', () => {
    const vm = new VmExecutionClient({ baseUrl: d.url });
    assert.deepEqual(vm.validateCode('python', 'print(1)'), { valid: true });
    assert.equal(vm.validateCode('js', 'console.log(1)').valid, true, 'aliases are languages');
    assert.equal(vm.validateCode('python', '   ').valid, false);
    assert.equal(vm.validateCode('fortran', 'x').valid, false);
    assert.deepEqual(vm.extractCodeBlocks('```bash\necho 1\n```\n```python\nprint(2)\n```').map((b) => b.language), ['bash', 'python']);
  });

  it('createSnapshot, rollbackToSnapshot, getActiveSnapshots with snapshotOnExecution, clearHistory', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url }, { snapshotOnExecution: true });
    const a = agent('snap');
    const first = await vm.executeCode({ language: 'bash', code: 'echo -n 1 > s.txt', agentId: a });
    const vmId = first.vmId;
    const statuses = [];
    const second = await vm.executeCode({ language: 'bash', code: 'echo -n 2 > s.txt', agentId: a, vmId, onProgress: (p) => statuses.push(p.status) });
    assert.ok(statuses.includes('creating_snapshot'), statuses.join());
    const active = vm.getActiveSnapshots();
    assert.equal(active.length, 1);
    assert.equal(active[0].vmId, vmId);
    assert.equal(active[0].snapshotId, second.snapshotId);
    const rb = await vm.rollbackToSnapshot(vmId, active[0].snapshotId);
    assert.deepEqual([rb.success, rb.vmId, rb.snapshotId], [true, vmId, active[0].snapshotId]);
    assert.equal((await vm.executeCode({ language: 'bash', code: 'cat s.txt', agentId: a, vmId })).stdout, '1');
    const id = await vm.createSnapshot(vmId, 'manual-one');
    assert.match(id, /^snap-/);
    assert.ok(vm.executionHistory.length >= 3);
    vm.clearHistory();
    assert.deepEqual([vm.executionHistory.length, vm.getActiveSnapshots().length], [0, 0]);
  });

  it('rollbackToLastSuccess is the server\'s: back to the state after the last good run', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url }, { autoRollback: false });
    const a = agent('last');
    const ok = await vm.executeCode({ language: 'bash', code: 'echo -n good > t.txt', agentId: a });
    await vm.executeCode({ language: 'bash', code: 'echo -n bad > t.txt; exit 1', agentId: a });
    const rb = await vm.rollbackToLastSuccess(ok.vmId, a);
    assert.equal(rb.success, true);
    assert.match(rb.snapshotId, /^snap-/);
    assert.equal((await vm.executeCode({ language: 'bash', code: 'cat t.txt', agentId: a })).stdout, 'good');
  });

  it('getExecutionHistory: the server\'s history with snapshot_id (and snapshotId), or the local one', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url });
    const a = agent('hist');
    const r1 = await vm.executeCode({ language: 'python', code: 'print(1)', agentId: a });
    await vm.executeCode({ language: 'python', code: 'print(x)', agentId: a });
    await vm.executeCode({ language: 'python', code: 'print(3)', agentId: a });
    const h = await vm.getExecutionHistory(r1.vmId);
    assert.equal(h.length, 3);
    assert.deepEqual(h.map((e) => e.success), [true, false, true], 'newest first');
    for (const e of h) {
      assert.ok('snapshot_id' in e);
      assert.equal(e.snapshotId, e.snapshot_id);
      assert.equal(typeof e.exit_code, 'number');
    }
    assert.equal((await vm.getExecutionHistory()).length, 3, 'without a vmId: this client\'s results');
    await assert.rejects(vm.getExecutionHistory('sb-000000000000'), (e) => e.status === 404);
  });

  it('parseAndExecute: blocks in order with stopOnFailure, and no blocks', async () => {
    const vm = new VmExecutionClient({ baseUrl: d.url });
    const a = agent('parse');
    const text = '```python\nprint("one")\n```\n```bash\nexit 5\n```\n```bash\necho three\n```\n';
    const stop = await vm.parseAndExecute(text, { agentId: a });
    assert.equal(stop.success, false);
    assert.equal(stop.totalBlocks, 3);
    assert.equal(stop.results.length, 2, 'stopped at the failure');
    assert.equal(stop.successfulBlocks, 1);
    const all = await vm.parseAndExecute(text, { agentId: a, stopOnFailure: false });
    assert.equal(all.results.length, 3);
    assert.equal(all.results[2].stdout, 'three\n');
    const none = await vm.parseAndExecute('no code here');
    assert.deepEqual(none, { success: false, error: 'No code blocks found in text', noCodeFound: true });
  });

  it('a seed-style api-client (only request()) drives it over the compatible routes', async () => {
    const seen = [];
    const apiClient = {
      async request(path, opts = {}) { // what the seed's api-client did: fetch and parse
        seen.push(path);
        const res = await fetch(d.url + path, { method: opts.method || 'GET', body: opts.body, headers: { 'Content-Type': 'application/json' } });
        const body = await res.json();
        if (!res.ok) throw Object.assign(new Error(body.error), { status: res.status });
        return body;
      },
    };
    const vm = new VmExecutionClient(apiClient);
    const a = agent('foreign');
    const r = await vm.executeCode({ language: 'javascript', code: 'console.log(6*7)', agentId: a, metadata: { n: 1, nested: { ok: true } } });
    assert.equal(r.success, true);
    assert.equal(r.stdout.trim(), '42');
    const f = await vm.executeCode({ language: 'bash', code: 'exit 1', agentId: a, vmId: r.vmId });
    assert.equal(f.rolledBack, true);
    const snap = await vm.createSnapshot(r.vmId, 'x');
    await vm.rollbackToSnapshot(r.vmId, snap);
    assert.equal((await vm.getExecutionHistory(r.vmId)).length, 2);
    assert.deepEqual([...new Set(seen.map((p) => p.replace(/sb-[0-9a-f]+|snap-[0-9a-f]+/g, ':id')))],
      ['/api/llm/execute', '/api/vms/:id/snapshots', '/api/vms/:id/rollback/:id', '/api/vms/:id/history']);
  });
});

describe('the seed api-client methods against the daemon', { skip: why || false }, () => {

  it('executeCode, parseAndExecuteCode, extractCodeBlocks, createVmSnapshot, rollbackVm, getVmHistory', async () => {
    const api = new ApiClient(d.url);
    const a = agent('api');
    const r = await api.executeCode('python', 'open("v","w").write("1"); print(2+2)', { agentId: a });
    assert.equal(r.exit_code, 0);
    assert.equal(r.stdout.trim(), '4');
    const vmId = r.vm_id;
    const snap = await api.createVmSnapshot(vmId, 'cp');
    assert.match(snap.snapshot_id, /^snap-/);
    await api.executeCode('bash', 'echo -n 2 > v', { agentId: a, vmId });
    const rb = await api.rollbackVm(vmId, snap.snapshot_id);
    assert.equal(rb.snapshot_id, snap.snapshot_id);
    assert.equal((await api.executeCode('bash', 'cat v', { agentId: a, vmId })).stdout, '1');
    const h = await api.getVmHistory(vmId);
    assert.equal(h.total, 3);
    assert.ok(h.history.every((e) => 'snapshot_id' in e));
    const pe = await api.parseAndExecuteCode('```python\nprint("p")\n```\n```bash\necho q\n```', { agentId: a });
    assert.deepEqual(pe.execution_results.map((x) => x.stdout), ['p\n', 'q\n']);
    assert.equal(pe.code_blocks.length, 2);
    assert.deepEqual(api.extractCodeBlocks('```go\npackage main\n```').map((b) => b.language), ['go']);
  });

  it('withVmMethods adds them to any object with request()', async () => {
    const c = withVmMethods(new Client({ baseUrl: d.url }));
    const r = await c.executeCode('bash', 'echo mixin', { agentId: agent('mix') });
    assert.equal(r.stdout, 'mixin\n');
  });

  it('the README example works when pasted', async () => {
    const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('### JavaScript client'));
    const code = /```js\n([\s\S]*?)```/.exec(section)[1];
    const file = join(repoRoot, `.readme-example-${process.pid}.mjs`); // the example imports ./clients/js/vmexec.js
    writeFileSync(file, code);
    try {
      const stdout = await new Promise((resolve, reject) => {
        execFile(process.execPath, [file], { env: { ...process.env, VMEXEC_URL: d.url }, timeout: 120_000 }, (err, so, se) => {
          if (err) reject(new Error(`README example failed: ${err.message}\n${so}\n${se}`)); else resolve(so);
        });
      });
      assert.match(stdout, /^ok 42\n/);
      assert.match(stdout, /1\n2\n3\n/);
      assert.match(stdout, /false true snap-[0-9a-f]+\n$/);
    } finally {
      rmSync(file, { force: true });
    }
  });

  it('the seed workflow example runs unchanged', async () => {
    const script = fileURLToPath(new URL('../examples/seed-workflow.mjs', import.meta.url));
    const { stdout } = await new Promise((resolve, reject) => {
      execFile(process.execPath, [script], { env: { ...process.env, VMEXEC_URL: d.url }, timeout: 300_000 }, (err, so, se) => {
        if (err) reject(new Error(`seed-workflow.mjs failed: ${err.message}\n${so}\n${se}`)); else resolve({ stdout: so });
      });
    });
    assert.match(stdout, /workflow done/);
    assert.doesNotMatch(stdout, /FAIL/);
  });
});
