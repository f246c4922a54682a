// Interpreter contexts through the Client against the real daemon: create, run cells
// (state, results, errors, streaming callbacks), the rollback of a failing cell, list,
// restart, delete.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, VmexecError } from '../vmexec.js';
import { startDaemon, missing } from './daemon.mjs';

const why = missing();
let d;
let vx;

describe('interpreter contexts', { skip: why || false }, () => {
  before(async () => {
    d = await startDaemon();
    vx = new Client({ baseUrl: d.url });
  });
  after(async () => {
    if (d) await d.stop();
  });

  it('python cells keep state, return values, stream and roll back', async () => {
    const sb = await vx.createSandbox({ agent_id: `js-ctx-${process.pid}` });
    const ctx = await vx.createContext(sb.id, { language: 'python' });
    assert.match(ctx.id, /^ctx_/);
    assert.equal(ctx.language, 'python');

    const out = [];
    const shown = [];
    const r1 = await vx.runCell(sb.id, ctx.id, { code: "x = 1\nprint('hello')\ndisplay(5)\nx + 1" }, {
      onStdout: (s) => out.push(s), onDisplay: (o) => shown.push(o),
    });
    assert.equal(r1.verdict, 'ok');
    assert.equal(out.join(''), 'hello\n');
    assert.deepEqual(shown.map((o) => [o.text, o.is_main_result]), [['5', false], ['2', true]]);
    assert.equal(r1.execution_count, 1);

    const bad = await vx.runCell(sb.id, ctx.id, "x = 2\nraise ValueError('nope')");
    assert.equal(bad.verdict, 'error');
    assert.equal(bad.error.name, 'ValueError');
    assert.equal(bad.error.value, 'nope');
    assert.match(bad.error.traceback, /ValueError: nope/);
    assert.equal(bad.rolled_back, true);
    const x = await vx.runCell(sb.id, ctx.id, 'x');
    assert.equal(x.results[0].text, '1');

    const list = await vx.listContexts(sb.id);
    assert.deepEqual(list.map((c) => c.id), [ctx.id]);
    const again = await vx.restartContext(sb.id, ctx.id);
    assert.equal(again.id, ctx.id);
    const gone = await vx.runCell(sb.id, ctx.id, "'x' in dir()");
    assert.equal(gone.results[0].text, 'False');
    await vx.deleteContext(sb.id, ctx.id);
    assert.deepEqual(await vx.listContexts(sb.id), []);
    await assert.rejects(vx.runCell(sb.id, ctx.id, '1'), (e) => e instanceof VmexecError && e.status === 404 && e.code === 'not_found');
  });

  it('javascript cells await at the top level', async () => {
    const sb = await vx.createSandbox({ agent_id: `js-ctx-node-${process.pid}` });
    const ctx = await vx.createContext(sb.id, { language: 'javascript' });
    const r = await vx.runCell(sb.id, ctx.id, 'const v = await Promise.resolve(41)\nv + 1');
    assert.equal(r.verdict, 'ok');
    assert.equal(r.results[0].text, '42');
    const events = [];
    for await (const ev of vx.runCellStream(sb.id, ctx.id, "console.log('v', v)\nv")) events.push(ev.type);
    assert.deepEqual(events, ['stdout', 'display', 'result']);
    await assert.rejects(vx.createContext(sb.id, { language: 'cobol' }), (e) => e instanceof VmexecError && e.status === 400);
  });
});
