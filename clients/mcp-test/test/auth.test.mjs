// /mcp behind the daemon's keys, through the official TypeScript SDK client: once a key
// exists (`vmexec keys create` on the daemon's data dir), connecting without one is
// refused 401, and the same client with the key as a bearer token lists the tools and
// runs code; `vmexec mcp` (stdio) sends $VMEXEC_API_KEY on its calls to the daemon.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { startDaemon, missing, waitUntil } from '../../js/test/daemon.mjs';

const why = missing();
const text = (res) => res.content.filter((c) => c.type === 'text').map((c) => c.text).join('');

describe('/mcp with keys in force', { skip: why || false }, () => {
  let d;
  let key;
  before(async () => {
    d = await startDaemon();
    key = execFileSync(d.bin, ['keys', 'create', '--data-dir', d.dataDir, '--name', 'mcp', '--agents', 'mcp-auth-*']).toString().trim();
    // The running daemon picks the key up within a second or two.
    await waitUntil(async () => (await fetch(`${d.url}/v1/sandboxes`)).status === 401, { what: 'keys in force' });
  });
  after(async () => { await d?.stop(); });

  it('refuses a client without a key (401)', async () => {
    const mcp = new Client({ name: 'vmexec-auth-test', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`${d.url}/mcp?agent=mcp-auth-http`));
    await assert.rejects(mcp.connect(transport), (e) => /401/.test(String(e?.code ?? '') + ' ' + String(e?.message ?? e)));
    await mcp.close().catch(() => {});
  });

  it('serves the same client with the key, over HTTP', async () => {
    const mcp = new Client({ name: 'vmexec-auth-test', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`${d.url}/mcp?agent=mcp-auth-http`),
      { requestInit: { headers: { Authorization: `Bearer ${key}` } } });
    await mcp.connect(transport);
    try {
      const { tools } = await mcp.listTools();
      assert.ok(tools.some((t) => t.name === 'run_code'));
      const res = await mcp.callTool({ name: 'run_code', arguments: { language: 'python', code: 'print(6*7)' } });
      assert.ok(!res.isError, text(res));
      assert.equal(res.structuredContent.stdout, '42\n');
    } finally {
      await mcp.close();
    }
  });

  it('vmexec mcp (stdio) calls the daemon with $VMEXEC_API_KEY', async () => {
    const mcp = new Client({ name: 'vmexec-auth-test', version: '1.0.0' });
    const transport = new StdioClientTransport({
      command: d.bin, args: ['mcp', '--url', d.url, '--agent', 'mcp-auth-stdio'],
      env: { ...process.env, VMEXEC_API_KEY: key }, stderr: 'inherit',
    });
    await mcp.connect(transport);
    try {
      const res = await mcp.callTool({ name: 'run_code', arguments: { language: 'bash', code: 'echo ok' } });
      assert.ok(!res.isError, text(res));
      assert.equal(res.structuredContent.stdout, 'ok\n');
    } finally {
      await mcp.close();
    }
  });
});
