// The code interpreter through the official @e2b/code-interpreter SDK (2.8.0),
// unchanged, against the real daemon: runCode in python and javascript contexts,
// state kept between calls, errors with name and traceback, streamed output,
// contexts created, used, listed, restarted and removed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { daemon, sdk, missing, violations } from '../lib/sdk.mjs';

const why = missing();

describe('@e2b/code-interpreter against vmexec', { skip: why || false }, () => {
  let d;
  let CI;
  let E;
  let sb;
  let noInterp = '';
  before(async () => {
    d = await daemon();
    const m = await sdk();
    CI = m.ci;
    E = m.e2b;
    sb = await CI.Sandbox.create();
    // A daemon built without interpreter contexts answers 501; then the cells' tests
    // skip, saying so (a build with them must pass them).
    const probe = await fetch(`${d.url}/e2b/envd/contexts`, { headers: { 'E2b-Sandbox-Id': sb.sandboxId, 'E2b-Sandbox-Port': '49999', 'E2B-Traffic-Access-Token': sb.trafficAccessToken } });
    if (probe.status === 501) noInterp = `this daemon has no interpreter contexts: ${await probe.text()}`;
  });
  after(async () => {
    await sb?.kill().catch(() => {});
    await d?.stop();
    assert.deepEqual(violations(), []);
  });

  it('keeps state across runCode calls and returns the last expression', async (t) => {
    if (noInterp) return t.skip(noInterp);
    const first = await sb.runCode('x = 40\nprint("set")');
    assert.deepEqual(first.logs.stdout, ['set\n']);
    assert.equal(first.error, undefined);
    const second = await sb.runCode('x + 2');
    assert.equal(second.text, '42');
    assert.ok(second.results[0].isMainResult);
    assert.ok(second.executionCount >= 2);
  });

  it('streams stdout and stderr to callbacks while the cell runs', async (t) => {
    if (noInterp) return t.skip(noInterp);
    const out = [];
    const err = [];
    const ex = await sb.runCode('import sys\nprint("a")\nprint("b", file=sys.stderr)', { onStdout: (m) => out.push(m.line), onStderr: (m) => err.push(m.line) });
    assert.equal(out.join(''), 'a\n');
    assert.equal(err.join(''), 'b\n');
    assert.equal(ex.logs.stderr.join(''), 'b\n');
  });

  it('reports an error with its name, value and traceback, and does not roll back (E2B semantics)', async (t) => {
    if (noInterp) return t.skip(noInterp);
    await sb.runCode('y = 1');
    const seen = [];
    const ex = await sb.runCode('y = 2\nraise ValueError("bad value")', { onError: (e) => seen.push(e) });
    assert.equal(ex.error.name, 'ValueError');
    assert.equal(ex.error.value, 'bad value');
    assert.match(ex.error.traceback, /ValueError/);
    assert.equal(seen.length, 1);
    assert.equal((await sb.runCode('y')).text, '2');
  });

  it('passes env vars for one execution only', async (t) => {
    if (noInterp) return t.skip(noInterp);
    assert.equal((await sb.runCode('import os\nos.environ.get("ONLY_ONCE")', { envs: { ONLY_ONCE: 'here' } })).text, "'here'");
    assert.equal((await sb.runCode('os.environ.get("ONLY_ONCE", "gone")')).text, "'gone'");
  });

  it('runs javascript cells, keeping their state too', async (t) => {
    if (noInterp) return t.skip(noInterp);
    await sb.runCode('const base = 40; console.log("js")', { language: 'javascript' });
    const ex = await sb.runCode('base + 2', { language: 'js' });
    assert.equal(ex.text, '42');
    const err = await sb.runCode('undefinedThing.x', { language: 'javascript' });
    assert.equal(err.error.name, 'ReferenceError');
  });

  it('returns rich results: a figure as png, a DataFrame as html; javascript awaits at top level', async (t) => {
    if (noInterp) return t.skip(noInterp);
    const fig = await sb.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()');
    assert.equal(fig.error, undefined);
    const png = fig.results.find((r) => r.png);
    assert.ok(png, JSON.stringify(fig.results.map((r) => r.formats())));
    assert.equal(Buffer.from(png.png, 'base64').subarray(1, 4).toString(), 'PNG');
    const df = await sb.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2]})');
    assert.match(df.results[0].html, /<table/);
    assert.equal((await sb.runCode('await new Promise((r) => setTimeout(r, 10)); 6 * 7', { language: 'js' })).text, '42');
  });

  it('creates, uses, lists, restarts and removes contexts', async (t) => {
    if (noInterp) return t.skip(noInterp);
    await sb.files.makeDir('/home/user/ctxdir');
    const ctx = await sb.createCodeContext({ language: 'python', cwd: '/home/user/ctxdir' });
    assert.ok(ctx.id);
    assert.equal(ctx.language, 'python');
    assert.equal((await sb.runCode('import os\nos.getcwd()', { context: ctx })).text, "'/home/user/ctxdir'");
    await sb.runCode('z = 7', { context: ctx });
    assert.equal((await sb.runCode('z', { context: ctx })).text, '7');
    const other = await sb.runCode('"z" in globals()');
    assert.equal(other.text, 'False', 'the default context does not see another context\'s variables');
    assert.ok((await sb.listCodeContexts()).some((c) => c.id === ctx.id));
    await sb.restartCodeContext(ctx);
    assert.equal((await sb.runCode('z', { context: ctx })).error?.name, 'NameError', 'a restart forgets the state');
    await sb.removeCodeContext(ctx);
    assert.ok(!(await sb.listCodeContexts()).some((c) => c.id === ctx.id));
    await assert.rejects(sb.runCode('1', { context: ctx }), (e) => e instanceof E.NotFoundError || e instanceof E.SandboxError);
  });

  it('rolls a failing cell back, interpreter and all, when the agent\'s policy says so', async (t) => {
    if (noInterp) return t.skip(noInterp);
    const res = await fetch(`${d.url}/v1/agents/e2b-cells/policy`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ auto_rollback_on_failure: true }) });
    assert.equal(res.status, 200, await res.text());
    const tx = await CI.Sandbox.create({ metadata: { agent_id: 'e2b-cells' } });
    try {
      await tx.runCode('x = 1');
      const bad = await tx.runCode('x = 2\nraise ValueError("undo me")');
      assert.equal(bad.error.name, 'ValueError');
      assert.equal((await tx.runCode('x')).text, '1', 'the interpreter is as it was before the failed cell');
    } finally {
      await tx.kill();
    }
  });

  it('interrupts a cell when the SDK\'s timeoutMs passes, keeping the interpreter', async (t) => {
    if (noInterp) return t.skip(noInterp);
    await sb.runCode('kept = "still here"');
    await assert.rejects(sb.runCode('import time\ntime.sleep(120)', { timeoutMs: 1500 }), (e) => e instanceof E.TimeoutError);
    // The next cell does not wait out the sleep: the cell was interrupted, not left running.
    const next = await sb.runCode('kept', { timeoutMs: 60_000 });
    assert.equal(next.text, "'still here'");
  });

  it('refuses context and language together', async () => {
    await assert.rejects(sb.runCode('1', { language: 'python', context: { id: 'x', language: 'python', cwd: '/' } }), (e) => e instanceof E.InvalidArgumentError);
  });
});
