// The low-level Client against the real daemon (real gVisor sandboxes, real SQLite):
// every method, streaming order, a blocked run, failure → rollback → state check,
// paging through the history, files, policy, and the served module.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { Client, VmexecError } from '../vmexec.js';
import { startDaemon, missing, waitUntil } from './daemon.mjs';

const why = missing();

// networkImports says why Node cannot import over http here ('' when it can): the
// flag exists in Node 18 to 21.
function networkImports() {
  const r = spawnSync(process.execPath, ['--experimental-network-imports', '-e', '0']);
  return r.status === 0 ? false : `this Node (${process.version}) has no --experimental-network-imports`;
}
let d;
let vx;
let n = 0;
const agent = (name) => `js-${name}-${process.pid}-${++n}`;

describe('Client against the daemon', { skip: why || false }, () => {
  before(async () => {
    d = await startDaemon();
    vx = new Client({ baseUrl: d.url });
  });
  after(async () => {
    if (d) await d.stop();
  });

  it('health, languages and backends', async () => {
    const h = await vx.health();
    assert.equal(h.status, 'healthy');
    const langs = await vx.languages();
    assert.deepEqual([...langs.languages].sort(), ['bash', 'go', 'javascript', 'python', 'rust']);
    const bes = await vx.backends();
    assert.ok(bes.backends.some((b) => b.name === 'gvisor' && b.default));
  });

  it('exec runs code and a failing program is a result, not an error', async () => {
    const a = agent('exec');
    const ok = await vx.exec({ agent_id: a, language: 'python', code: 'import math; print(math.factorial(10))' });
    assert.equal(ok.verdict, 'ok');
    assert.equal(ok.stdout.trim(), '3628800');
    assert.match(ok.sandbox_id, /^sb-/);
    const bad = await vx.exec({ agent_id: a, language: 'python', code: 'print(undefined_name)' });
    assert.equal(bad.verdict, 'nonzero_exit');
    assert.notEqual(bad.exit_code, 0);
    assert.match(bad.stderr, /NameError/);
  });

  it('a failed run is rolled back by the server: the file it changed is as before', async () => {
    const a = agent('rollback');
    const w = await vx.exec({ agent_id: a, language: 'bash', code: 'echo one > state.txt' });
    assert.equal(w.verdict, 'ok');
    const f = await vx.exec({ agent_id: a, language: 'bash', code: 'echo two > state.txt; exit 3' });
    assert.equal(f.exit_code, 3);
    assert.equal(f.rolled_back, true);
    assert.ok(f.failure_snapshot_id, 'the failed state is kept as a snapshot');
    assert.ok(f.restored_snapshot_id);
    const r = await vx.exec({ agent_id: a, language: 'bash', code: 'cat state.txt' });
    assert.equal(r.stdout.trim(), 'one');
  });

  it('a blocked run says why and never reaches a sandbox', async () => {
    const res = await vx.exec({ agent_id: agent('blocked'), language: 'bash', code: 'rm -rf /home/user' });
    assert.equal(res.verdict, 'blocked');
    assert.equal(res.blocked, true);
    assert.equal(res.blocked_rule, 'destroy_root');
    assert.ok(res.blocked_reason.length > 10);
    assert.equal(res.exit_code, -1);
  });

  it('errors carry the server code and HTTP status', async () => {
    const cases = [
      ['unknown sandbox', () => vx.getSandbox('sb-000000000000'), 404, 'not_found'],
      ['unknown language', () => vx.exec({ agent_id: agent('err'), language: 'cobol', code: 'x' }), 400, 'bad_request'],
      ['unknown snapshot', () => vx.getSnapshot('snap-0000000000000000'), 404, 'not_found'],
      ['bad history limit', () => vx.history({ limit: -1 }), 400, 'bad_request'],
    ];
    for (const [name, f, status, code] of cases) {
      await assert.rejects(f, (err) => {
        assert.ok(err instanceof VmexecError, `${name}: ${err}`);
        assert.equal(err.status, status, name);
        assert.equal(err.code, code, name);
        assert.equal(err.retryable, false, name);
        return true;
      }, name);
    }
  });

  it('sandboxes: create, list, get, exec in, delete', async () => {
    const a = agent('sb');
    const sb = await vx.createSandbox({ agent_id: a, name: 'js-box' });
    assert.match(sb.id, /^sb-/);
    assert.equal(sb.name, 'js-box');
    assert.ok((await vx.listSandboxes()).some((s) => s.id === sb.id));
    assert.equal((await vx.getSandbox(sb.id)).id, sb.id);
    const r = await vx.exec({ agent_id: a, sandbox_id: sb.id, language: 'javascript', code: 'console.log(6*7)' });
    assert.equal(r.stdout.trim(), '42');
    assert.equal(r.sandbox_id, sb.id);
    await vx.deleteSandbox(sb.id);
    await assert.rejects(vx.getSandbox(sb.id), (e) => e.status === 404);
  });

  it('snapshots: create, list, get, roll back to one, fork one, delete', async () => {
    const a = agent('snap');
    const w1 = await vx.exec({ agent_id: a, language: 'bash', code: 'echo 1 > v.txt' });
    const sbid = w1.sandbox_id;
    const snap = await vx.createSnapshot(sbid, { agent_id: a, name: 'after-1', description: 'v is 1' });
    assert.match(snap.id, /^snap-/);
    assert.equal(snap.kind, 'manual');
    await vx.exec({ agent_id: a, language: 'bash', code: 'echo 2 > v.txt' });
    const list = await vx.listSnapshots(sbid, { agentId: a });
    assert.ok(list.snapshots.some((s) => s.id === snap.id && s.name === 'after-1'));
    assert.equal((await vx.getSnapshot(snap.id, { agentId: a })).sandbox_id, sbid);

    const rb = await vx.rollback(sbid, { agent_id: a, snapshot_id: snap.id });
    assert.equal(rb.snapshot_id, snap.id);
    assert.equal((await vx.exec({ agent_id: a, language: 'bash', code: 'cat v.txt' })).stdout.trim(), '1');

    const fork = await vx.fork(snap.id, { agent_id: a, name: 'forked' });
    assert.notEqual(fork.id, sbid);
    const fr = await vx.exec({ agent_id: a, sandbox_id: fork.id, language: 'bash', code: 'cat v.txt' });
    assert.equal(fr.stdout.trim(), '1');
    await vx.deleteSandbox(fork.id);

    await vx.deleteSnapshot(snap.id, { agentId: a });
    await assert.rejects(vx.getSnapshot(snap.id, { agentId: a }), (e) => e.status === 404);
  });

  it('rollback to the last success restores the state after the last good run', async () => {
    const a = agent('last');
    const w = await vx.exec({ agent_id: a, language: 'bash', code: 'echo good > s.txt' });
    assert.equal(w.verdict, 'ok');
    // A failed run whose transaction does not roll back leaves its state behind.
    const f = await vx.exec({ agent_id: a, language: 'bash', code: 'echo bad > s.txt; exit 1', history: { auto_rollback_on_failure: false } });
    assert.equal(f.rolled_back, false);
    const rb = await vx.rollback(w.sandbox_id, { agent_id: a, last_success: true });
    assert.match(rb.snapshot_id, /^snap-/);
    const r = await vx.exec({ agent_id: a, language: 'bash', code: 'cat s.txt' });
    assert.equal(r.stdout.trim(), 'good');
  });

  it('history: pages with a cursor, historyAll walks every page, getRun reads one', async () => {
    const a = agent('hist');
    const ids = [];
    for (let i = 0; i < 3; i++) {
      ids.push((await vx.exec({ agent_id: a, language: 'bash', code: `echo ${i}`, metadata: { turn: String(i) } })).execution_id);
    }
    await vx.exec({ agent_id: a, language: 'bash', code: 'exit 1' });
    const page = await vx.history({ agent_id: a, limit: 2 });
    assert.equal(page.runs.length, 2);
    assert.ok(page.next_cursor, 'a first page of 2 of 4 has a cursor');
    assert.equal(page.total, 4);
    const all = [];
    for await (const run of vx.historyAll({ agent_id: a, limit: 1 })) all.push(run);
    assert.equal(all.length, 4);
    assert.deepEqual(all.slice(1).map((r) => r.id).reverse(), ids, 'newest first, every run once');
    const fails = await vx.history({ agent_id: a, failures_only: true });
    assert.equal(fails.runs.length, 1);
    assert.equal(fails.runs[0].exit_code, 1);
    const run = await vx.getRun(ids[1]);
    assert.equal(run.stdout.trim(), '1');
    assert.equal(run.metadata.turn, '1');
  });

  it('policy: an agent narrows its languages and the server enforces it', async () => {
    const a = agent('pol');
    const set = await vx.setPolicy(a, { allowed_languages: ['python'] });
    assert.deepEqual(set.own.allowed_languages, ['python']);
    const got = await vx.getPolicy(a);
    assert.deepEqual(got.own.allowed_languages, ['python']);
    const res = await vx.exec({ agent_id: a, language: 'bash', code: 'echo hi' });
    assert.equal(res.verdict, 'blocked');
    assert.equal(res.blocked_rule, 'language_not_allowed');
  });

  it('parseExecute runs the blocks of a reply in document order', async () => {
    const text = 'First:\n```python\nprint("a")\n```\nthen\n~~~bash\necho b\n~~~\n';
    const res = await vx.parseExecute({ agent_id: agent('pe'), text });
    assert.equal(res.success, true);
    assert.deepEqual(res.blocks.map((b) => [b.block.language, b.result.stdout.trim()]), [['python', 'a'], ['bash', 'b']]);
  });

  it('execStream yields output while the program runs, in order, then the result', async () => {
    const code = 'for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done; echo end';
    const events = [];
    let out = '';
    let err = '';
    const stream = vx.execStream({ agent_id: agent('stream'), language: 'bash', code },
      { onStdout: (s) => { out += s; }, onStderr: (s) => { err += s; } });
    for await (const ev of stream) events.push(ev);
    const types = events.map((e) => e.type);
    assert.equal(types.at(-1), 'result', 'the result comes last');
    assert.equal(types.filter((t) => t === 'result').length, 1);
    assert.ok(types.indexOf('stdout') >= 0 && types.indexOf('stdout') < types.length - 1, `output before the result: ${types}`);
    const result = events.at(-1).result;
    const streamed = events.filter((e) => e.type === 'stdout').map((e) => e.data).join('');
    assert.equal(streamed, 'out1\nout2\nout3\nend\n');
    assert.equal(streamed, result.stdout);
    assert.equal(out, result.stdout, 'onStdout saw the same chunks');
    assert.equal(err, 'err1\nerr2\nerr3\n');
  });

  it('output arrives while the program runs: aborting at the first chunk cancels the run', async () => {
    // If output came only at the end, the first chunk would follow a completed run
    // (verdict ok); arriving live, the abort ends the run itself.
    const a = agent('live');
    const stream = vx.execStream({ agent_id: a, language: 'bash', code: 'echo tick; sleep 50; echo tock', limits: { timeout_ms: 120000 } });
    let first;
    await assert.rejects(async () => {
      for await (const ev of stream) {
        if (ev.type === 'result') assert.fail(`the run completed before its first output reached the client: ${JSON.stringify(ev.result)}`);
        if (ev.type === 'stdout') { first = ev.data; stream.abort(); }
      }
    });
    assert.equal(first, 'tick\n');
    const run = await waitUntil(async () => {
      const h = await vx.history({ agent_id: a });
      return h.runs.find((r) => r.status !== 'running');
    }, { what: 'the canceled run in the history' });
    assert.equal(run.verdict, 'canceled');
    assert.equal(run.rolled_back, true);
  });

  it('a streamed request the server refuses rejects with its code and status', async () => {
    await assert.rejects(vx.execStream({ agent_id: agent('serr'), sandbox_id: 'sb-000000000000', language: 'bash', code: 'true' }).result(),
      (e) => e instanceof VmexecError && e.status === 404 && e.code === 'not_found');
    await assert.rejects(vx.execStream({ agent_id: agent('serr'), language: 'cobol', code: 'x' }).result(),
      (e) => e instanceof VmexecError && e.status === 400 && e.code === 'bad_request');
  });

  it('exec with onStdout streams and resolves with the result', async () => {
    const chunks = [];
    const res = await vx.exec({ agent_id: agent('cb'), language: 'python', code: 'print("x"); print("y")' }, { onStdout: (s) => chunks.push(s) });
    assert.equal(res.verdict, 'ok');
    assert.equal(chunks.join(''), 'x\ny\n');
  });

  it('a streamed failing run ends with its rolled-back result', async () => {
    const res = await vx.execStream({ agent_id: agent('sfail'), language: 'bash', code: 'echo before; exit 4' }).result();
    assert.equal(res.exit_code, 4);
    assert.equal(res.rolled_back, true);
  });

  it('parseExecuteStream yields a block event per block, then the result', async () => {
    const text = '```bash\necho one\n```\n```python\nprint("two")\n```\n';
    const blocks = [];
    const events = [];
    const res = await vx.parseExecuteStream({ agent_id: agent('pes'), text }, { onBlock: (b) => blocks.push(b), onEvent: (e) => events.push(e.type) }).result();
    assert.equal(res.success, true);
    assert.equal(blocks.length, 2);
    assert.deepEqual(blocks.map((b) => b.status), ['executed', 'executed']);
    assert.equal(events.at(-1), 'result');
    assert.ok(events.indexOf('block') < events.lastIndexOf('result'));
  });

  it('files: write, read, list, delete', async () => {
    const a = agent('files');
    const sb = (await vx.exec({ agent_id: a, language: 'bash', code: 'true' })).sandbox_id;
    const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
    await vx.writeFile(sb, 'dir/sub/data.bin', bytes);
    await vx.writeFile(sb, 'note.txt', 'héllo\n');
    assert.deepEqual(await vx.readFile(sb, 'dir/sub/data.bin'), bytes);
    assert.equal(await vx.readText(sb, 'note.txt'), 'héllo\n');
    const seen = await vx.exec({ agent_id: a, language: 'bash', code: 'cat note.txt; stat -c %s dir/sub/data.bin' });
    assert.equal(seen.stdout, 'héllo\n300000\n', 'a program sees the files');
    const list = await vx.listFiles(sb, 'dir', { depth: 2 });
    const entries = list.entries;
    assert.ok(entries.some((e) => e.name === 'data.bin' && e.size === 300000), JSON.stringify(list));
    await vx.deleteFile(sb, 'note.txt');
    await assert.rejects(vx.readFile(sb, 'note.txt'), (e) => e instanceof VmexecError && e.status === 404);
  });

  it('the daemon serves this very module and its typings', async () => {
    for (const [path, file, type] of [['/js/vmexec.js', 'vmexec.js', 'javascript'], ['/js/index.d.ts', 'index.d.ts', 'typescript']]) {
      const res = await fetch(d.url + path);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), new RegExp(type));
      const body = await res.text();
      assert.equal(body, readFileSync(new URL(`../${file}`, import.meta.url), 'utf8'));
      const again = await fetch(d.url + path, { headers: { 'If-None-Match': res.headers.get('etag') } });
      assert.equal(again.status, 304);
    }
  });

  it('the served module works imported from the daemon\'s URL, as a page imports it', { skip: networkImports() }, async () => {
    // Node's network imports load an ES module over http the way a browser's
    // <script type="module"> does: no Node-only API may be needed at import time.
    const prog = `const m = await import(${JSON.stringify(`${d.url}/js/vmexec.js`)});
      const vx = new m.Client({ baseUrl: ${JSON.stringify(d.url)} });
      const r = await vx.exec({ agent_id: 'js-import-${process.pid}', language: 'python', code: 'print(6*7)' });
      console.log(r.stdout.trim());`;
    const out = execFileSync(process.execPath, ['--experimental-network-imports', '--no-warnings', '--input-type=module', '-e', prog], { encoding: 'utf8' });
    assert.equal(out.trim(), '42');
  });
});
