// The E2B surface behind the daemon's keys, through the real SDK: once a key exists,
// the control plane needs it (X-API-KEY, in its e2b_ form as `vmexec keys create
// --e2b` prints it), a sandbox's traffic needs its access token, and a key scoped to
// agents reaches only its agents' sandboxes.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { daemon, sdk, missing, waitUntil, violations, anyKey } from '../lib/sdk.mjs';

const why = missing();

describe('E2B surface with keys in force', { skip: why || false }, () => {
  let d;
  let E;
  let admin;
  let scoped;
  const keys = (...args) => execFileSync(d.bin, ['keys', 'create', '--data-dir', d.dataDir, ...args]).toString().trim();
  before(async () => {
    d = await daemon();
    admin = keys('--name', 'e2b-admin', '--admin', '--e2b');
    scoped = keys('--name', 'e2b-team', '--agents', 'team-*', '--e2b');
    await waitUntil(async () => (await fetch(`${d.url}/v1/sandboxes`)).status === 401, { what: 'keys in force' });
    E = (await sdk()).e2b;
  });
  after(async () => {
    await d?.stop();
    assert.deepEqual(violations(), []);
  });

  it('prints keys in the e2b_ form', () => {
    assert.match(admin, /^e2b_[0-9a-f]{40}$/);
  });

  it('refuses a wrong key with AuthenticationError', async () => {
    await assert.rejects(E.Sandbox.create({ apiKey: anyKey }), (e) => e instanceof E.AuthenticationError);
  });

  it('serves the SDK with the key; the sandbox\'s traffic carries its token', async () => {
    const sb = await E.Sandbox.create({ apiKey: admin });
    try {
      assert.equal((await sb.commands.run('echo with key')).stdout, 'with key\n');
      await sb.files.write('/home/user/k.txt', 'k');
      assert.equal(await sb.files.read('/home/user/k.txt'), 'k');
      const bare = await fetch(`${d.url}/e2b/envd/health`, { headers: { 'E2b-Sandbox-Id': sb.sandboxId } });
      assert.equal(bare.status, 401, 'envd without the token');
      const forged = await fetch(`${d.url}/e2b/envd/health`, { headers: { 'E2b-Sandbox-Id': sb.sandboxId, 'X-Access-Token': 'f'.repeat(40) } });
      assert.equal(forged.status, 401, 'envd with a wrong token');
    } finally {
      await sb.kill();
    }
  });

  it('keeps a scoped key to its agents\' sandboxes', async () => {
    await assert.rejects(E.Sandbox.create({ apiKey: scoped }), (e) => /agent/.test(e.message), 'a scoped key must name its agent');
    const mine = await E.Sandbox.create({ apiKey: scoped, metadata: { agent_id: 'team-1' } });
    const theirs = await E.Sandbox.create({ apiKey: admin });
    try {
      assert.equal((await mine.commands.run('echo mine')).stdout, 'mine\n');
      await assert.rejects(E.Sandbox.connect(theirs.sandboxId, { apiKey: scoped }), (e) => e instanceof E.SandboxNotFoundError);
      await assert.rejects(E.Sandbox.getInfo(theirs.sandboxId, { apiKey: scoped }), (e) => e instanceof E.SandboxNotFoundError);
      const listed = await E.Sandbox.list({ apiKey: scoped }).nextItems();
      assert.deepEqual(listed.map((s) => s.sandboxId), [mine.sandboxId]);
      const res = await fetch(`${d.url}/v1/history?agent_id=team-1`, { headers: { Authorization: `Bearer ${scoped}` } });
      assert.equal(res.status, 200);
      assert.ok((await res.json()).runs.some((r) => r.code === 'echo mine'), 'the run is the agent\'s, in the history');
    } finally {
      await mine.kill();
      await theirs.kill();
    }
  });
});
