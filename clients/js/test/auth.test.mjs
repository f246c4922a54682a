// API keys: the client sends apiKey as a bearer token; an authed daemon (a key made
// with `vmexec keys create` on its data dir) serves it, and refuses a client without
// one with a VmexecError 401 `unauthorized`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { Client, VmexecError } from '../vmexec.js';
import { startDaemon, missing, waitUntil } from './daemon.mjs';

const why = missing();
let d;
let key;

describe('Client against a daemon with keys', { skip: why || false }, () => {
  before(async () => {
    d = await startDaemon();
    key = execFileSync(d.bin, ['keys', 'create', '--data-dir', d.dataDir, '--name', 'js', '--agents', 'js-*']).toString().trim();
    // The running daemon picks the key up within a second or two.
    await waitUntil(async () => (await fetch(`${d.url}/v1/sandboxes`)).status === 401, { what: 'keys in force' });
  });
  after(async () => {
    if (d) await d.stop();
  });

  it('runs code with the key', async () => {
    const r = await new Client({ baseUrl: d.url, apiKey: key }).exec({ agent_id: 'js-1', language: 'python', code: 'print(6*7)' });
    assert.equal(r.verdict, 'ok');
    assert.equal(r.stdout, '42\n');
  });

  it('is refused 401 without a key, and with a wrong one', async () => {
    for (const apiKey of [undefined, 'vmx_' + '0'.repeat(40)]) {
      await assert.rejects(new Client({ baseUrl: d.url, apiKey }).exec({ agent_id: 'js-1', language: 'python', code: 'print(1)' }),
        (e) => e instanceof VmexecError && e.status === 401 && e.code === 'unauthorized');
    }
  });
});
