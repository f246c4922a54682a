// vmexec's E2B surface through the official `e2b` SDK (2.51.0, and 2.50.0 for the
// older create/connect routes), unchanged, against the real daemon: sandboxes'
// lifecycle, commands, files. No traffic may leave loopback (guard.mjs).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { daemon, sdk, missing, waitUntil, violations } from '../lib/sdk.mjs';

const why = missing();

describe('e2b SDK against vmexec', { skip: why || false }, () => {
  let d;
  let Sandbox;
  let Old;
  let E;
  let sb;
  before(async () => {
    d = await daemon();
    const m = await sdk();
    ({ Sandbox } = m.e2b);
    Old = m.old.Sandbox;
    E = m.e2b;
    sb = await Sandbox.create({ envs: { SANDBOX_WIDE: 'everywhere' }, metadata: { suite: 'sandbox' } });
  });
  after(async () => {
    await sb?.kill().catch(() => {});
    await d?.stop();
    assert.deepEqual(violations(), [], 'something tried to reach a host that is not loopback');
  });

  it('runs a command with stdout and stderr callbacks', async () => {
    const out = [];
    const err = [];
    const r = await sb.commands.run('echo one; echo two >&2; echo three', { onStdout: (s) => out.push(s), onStderr: (s) => err.push(s) });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'one\nthree\n');
    assert.equal(r.stderr, 'two\n');
    assert.equal(out.join(''), 'one\nthree\n');
    assert.equal(err.join(''), 'two\n');
  });

  it('throws CommandExitError with the exit code and output of a failing command', async () => {
    await assert.rejects(sb.commands.run('echo partial; echo bad >&2; exit 3'), (e) => {
      assert.ok(e instanceof E.CommandExitError, `${e?.name}: ${e?.message}`);
      assert.equal(e.exitCode, 3);
      assert.equal(e.stdout, 'partial\n');
      assert.equal(e.stderr, 'bad\n');
      return true;
    });
  });

  it('passes env vars (the command\'s and the sandbox\'s) and the working directory', async () => {
    await sb.files.makeDir('/home/user/work/deep');
    const r = await sb.commands.run('echo "$GREETING $SANDBOX_WIDE"; pwd', { envs: { GREETING: 'hello' }, cwd: '/home/user/work/deep' });
    assert.equal(r.stdout, 'hello everywhere\n/home/user/work/deep\n');
    const home = await sb.commands.run('pwd; whoami');
    assert.equal(home.stdout, '/home/user\nuser\n');
  });

  it('streams output that arrives before a command ends, and kills it', async () => {
    const seen = [];
    const h = await sb.commands.run('echo first; sleep 60; echo never', { background: true, onStdout: (s) => seen.push(s) });
    await waitUntil(() => seen.join('').includes('first'), { what: 'the first line of a running command' });
    assert.equal(h.exitCode, undefined, 'the command is still running');
    assert.equal(h.stdout, 'first\n');
    assert.equal(await h.kill(), true);
    await assert.rejects(h.wait(), (e) => e instanceof E.CommandExitError && !e.stdout.includes('never'));
    assert.equal((await sb.commands.run('echo after')).stdout, 'after\n', 'the sandbox works after the kill');
  });

  it('lists a running command and kills it by pid', async () => {
    const h = await sb.commands.run('sleep 60', { background: true });
    const procs = await sb.commands.list();
    assert.ok(procs.some((p) => p.pid === h.pid && p.args.includes('sleep 60')), JSON.stringify(procs));
    assert.equal(await sb.commands.kill(h.pid), true);
    await assert.rejects(h.wait(), E.CommandExitError);
    assert.equal(await sb.commands.kill(h.pid), false, 'no such command any more');
  });

  it('refuses what it does not support, saying so', async () => {
    await assert.rejects(sb.pty.create({ cols: 80, rows: 24, onData: () => {} }), (e) => /not supported|unimplemented/i.test(e.message));
    await assert.rejects(sb.commands.run('whoami', { user: 'root' }), (e) => /not supported|unimplemented/i.test(e.message));
    await assert.rejects(sb.files.watchDir('/home/user', () => {}), (e) => /not supported|unimplemented/i.test(e.message));
    assert.equal((await sb.commands.run('whoami', { user: 'user' })).stdout, 'user\n');
  });

  it('stops a command at its timeout with a TimeoutError', async () => {
    await assert.rejects(sb.commands.run('sleep 30', { timeoutMs: 1500 }), (e) => e instanceof E.TimeoutError || /timed out|deadline/i.test(String(e?.message)));
  });

  it('does not roll back a failing command (E2B semantics)', async () => {
    await assert.rejects(sb.commands.run('echo kept > /home/user/kept.txt; exit 1'), E.CommandExitError);
    assert.equal(await sb.files.read('/home/user/kept.txt'), 'kept\n');
  });

  it('writes files as text and as bytes, reads them back, lists them', async () => {
    const bytes = new Uint8Array(256).map((_, i) => i);
    const w1 = await sb.files.write('/home/user/files/a.txt', 'hello text\n');
    assert.equal(w1.path, '/home/user/files/a.txt');
    await sb.files.write('files/b.bin', bytes.buffer); // relative to /home/user
    await sb.files.write('/home/user/files/c.bin', new Blob([bytes]), { useOctetStream: true });
    await sb.files.write([{ path: '/home/user/files/m1.txt', data: 'm1' }, { path: '/home/user/files/m2.txt', data: 'm2' }]);
    assert.equal(await sb.files.read('/home/user/files/a.txt'), 'hello text\n');
    assert.deepEqual(await sb.files.read('/home/user/files/b.bin', { format: 'bytes' }), bytes);
    assert.deepEqual(await sb.files.read('/home/user/files/c.bin', { format: 'bytes' }), bytes);
    assert.equal(await sb.files.read('/home/user/files/m2.txt'), 'm2');
    const list = await sb.files.list('/home/user/files');
    assert.deepEqual(list.map((e) => e.name).sort(), ['a.txt', 'b.bin', 'c.bin', 'm1.txt', 'm2.txt']);
    const b = list.find((e) => e.name === 'b.bin');
    assert.equal(b.type, 'file');
    assert.equal(b.size, 256);
    assert.equal(b.path, '/home/user/files/b.bin');
    // A file written through the SDK is the command's file, and the reverse.
    assert.equal((await sb.commands.run('cat /home/user/files/a.txt')).stdout, 'hello text\n');
  });

  it('writes gzip-encoded and streamed uploads, reads as a stream', async () => {
    await sb.files.write('/home/user/z/g.txt', 'gzipped body', { gzip: true });
    assert.equal(await sb.files.read('/home/user/z/g.txt'), 'gzipped body');
    const src = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('streamed ')); c.enqueue(new TextEncoder().encode('upload')); c.close(); } });
    await sb.files.write('/home/user/z/s.txt', src);
    const stream = await sb.files.read('/home/user/z/s.txt', { format: 'stream' });
    assert.equal(await new Response(stream).text(), 'streamed upload');
  });

  it('answers a missing file with FileNotFoundError, and exists() false', async () => {
    await assert.rejects(sb.files.read('/home/user/no/such/file'), (e) => e instanceof E.FileNotFoundError);
    assert.equal(await sb.files.exists('/home/user/no/such/file'), false);
    assert.equal(await sb.files.exists('/home/user/files/a.txt'), true);
    await assert.rejects(sb.files.list('/home/user/no/such/dir'), (e) => e instanceof E.FileNotFoundError || e instanceof E.NotFoundError);
  });

  it('makes directories, stats, renames and removes', async () => {
    assert.equal(await sb.files.makeDir('/home/user/d1/d2'), true);
    assert.equal(await sb.files.makeDir('/home/user/d1/d2'), false, 'an existing directory');
    const info = await sb.files.getInfo('/home/user/d1');
    assert.equal(info.type, 'dir');
    await sb.files.write('/home/user/d1/d2/x.txt', 'x');
    const moved = await sb.files.rename('/home/user/d1/d2/x.txt', '/home/user/d1/y.txt');
    assert.equal(moved.path, '/home/user/d1/y.txt');
    assert.equal(await sb.files.read('/home/user/d1/y.txt'), 'x');
    await sb.files.remove('/home/user/d1');
    assert.equal(await sb.files.exists('/home/user/d1'), false);
  });

  it('gets info and lists the sandbox, with its metadata', async () => {
    const info = await sb.getInfo();
    assert.equal(info.sandboxId, sb.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'sandbox' });
    assert.ok(info.endAt > info.startedAt);
    const page = await Sandbox.list({ query: { metadata: { suite: 'sandbox' } } }).nextItems();
    assert.deepEqual(page.map((s) => s.sandboxId), [sb.sandboxId]);
    assert.equal((await Sandbox.list({ query: { metadata: { suite: 'none' } } }).nextItems()).length, 0);
  });

  it('is a vmexec sandbox: its commands are in the history', async () => {
    await sb.commands.run('echo recorded');
    const res = await fetch(`${d.url}/v1/history?sandbox_id=${sb.sandboxId}&limit=100`);
    assert.equal(res.status, 200);
    const { runs } = await res.json();
    assert.ok(runs.some((r) => r.code === 'echo recorded' && r.stdout === 'recorded\n'), JSON.stringify(runs.slice(0, 3)));
  });

  it('connects to a running sandbox by id', async () => {
    const again = await Sandbox.connect(sb.sandboxId);
    assert.equal((await again.commands.run('cat /home/user/files/a.txt')).stdout, 'hello text\n');
    await assert.rejects(Sandbox.connect('sb-000000000000'), (e) => e instanceof E.SandboxNotFoundError || e instanceof E.NotFoundError);
  });

  it('creates and connects with the older SDK (e2b 2.50: /sandboxes routes)', async () => {
    const o = await Old.create();
    try {
      assert.equal((await o.commands.run('echo old')).stdout, 'old\n');
      const c = await Old.connect(o.sandboxId);
      await c.files.write('/home/user/o.txt', 'from 2.50');
      assert.equal(await o.files.read('/home/user/o.txt'), 'from 2.50');
    } finally {
      await o.kill();
    }
  });

  it('forks a sandbox from its snapshot (createSnapshot, then create from it)', async () => {
    await sb.files.write('/home/user/before-snap.txt', 'in the snapshot');
    const snap = await sb.createSnapshot();
    assert.ok(snap.snapshotId);
    const fork = await Sandbox.create(snap.snapshotId);
    try {
      assert.notEqual(fork.sandboxId, sb.sandboxId);
      assert.equal(await fork.files.read('/home/user/before-snap.txt'), 'in the snapshot');
      await fork.files.write('/home/user/before-snap.txt', 'changed in the fork');
      assert.equal(await sb.files.read('/home/user/before-snap.txt'), 'in the snapshot', 'the source is untouched');
    } finally {
      await fork.kill();
    }
  });

  it('kills a sandbox when its timeout passes (setTimeout)', async () => {
    const t = await Sandbox.create();
    await t.setTimeout(2_000);
    const info = await t.getInfo();
    assert.ok(info.endAt.getTime() - Date.now() < 5_000, `endAt ${info.endAt.toISOString()}`);
    await waitUntil(async () => {
      try { await Sandbox.getInfo(t.sandboxId); return false; } catch (e) { return e instanceof E.SandboxNotFoundError; }
    }, { what: 'the expired sandbox to be gone' });
    const r = await fetch(`${d.url}/v1/sandboxes/${t.sandboxId}`);
    assert.equal(r.status, 404, 'killed in vmexec too');
  });

  it('kills a sandbox; getInfo then fails as not found', async () => {
    const k = await Sandbox.create();
    assert.equal(await k.isRunning(), true);
    await k.kill();
    assert.equal(await k.isRunning(), false);
    await assert.rejects(k.getInfo(), (e) => e instanceof E.SandboxNotFoundError);
    assert.equal(await Sandbox.kill(k.sandboxId), false, 'a second kill finds nothing');
  });
});

describe('auto-rollback when the agent\'s policy turns it on', { skip: why || false }, () => {
  let d;
  let E;
  before(async () => {
    d = await daemon();
    E = (await sdk()).e2b;
  });
  after(async () => { await d?.stop(); });

  it('rolls a failing command back for an agent whose policy says so', async () => {
    const res = await fetch(`${d.url}/v1/agents/e2b-rb/policy`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ auto_rollback_on_failure: true }) });
    assert.equal(res.status, 200, await res.text());
    const sb = await E.Sandbox.create({ metadata: { agent_id: 'e2b-rb' } });
    try {
      await sb.commands.run('echo 1 > /home/user/x');
      await assert.rejects(sb.commands.run('echo 2 > /home/user/x; exit 1'), E.CommandExitError);
      assert.equal(await sb.files.read('/home/user/x'), '1\n', 'the failed command was rolled back');
    } finally {
      await sb.kill();
    }
  });
});
