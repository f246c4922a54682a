// vmexec's MCP server through the official TypeScript SDK client
// (@modelcontextprotocol/sdk, pinned in package-lock.json), over stdio (`vmexec mcp`
// started by the SDK's StdioClientTransport) and streamable HTTP (the daemon's /mcp),
// against the real daemon built from this tree. Each transport acts as its own agent.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { startDaemon, missing, repoRoot, waitUntil } from '../../js/test/daemon.mjs';

const TOOLS = ['create_sandbox', 'delete_sandbox', 'fork', 'history', 'list_files', 'list_sandboxes',
  'list_snapshots', 'read_file', 'rollback', 'run_code', 'run_reply', 'snapshot', 'write_file'];

const why = missing();

// vmexecBin is the binary `vmexec mcp` runs from: $VMEXEC_BIN (scripts/test builds it),
// else built here, and handed to the daemon harness the same way.
function vmexecBin() {
  if (process.env.VMEXEC_BIN && process.env.VMEXEC_AGENT_BIN) return process.env.VMEXEC_BIN;
  const dir = mkdtempSync(join(tmpdir(), 'vmexec-mcp-bin-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const env = { ...process.env, PATH: `/usr/local/go/bin:${process.env.PATH}` };
  execFileSync('go', ['build', '-o', join(dir, 'vmexec'), './cmd/vmexec'], { cwd: repoRoot, env, stdio: 'inherit' });
  execFileSync('go', ['build', '-o', join(dir, 'vmexec-agent'), './cmd/vmexec-agent'], { cwd: repoRoot, env: { ...env, CGO_ENABLED: '0' }, stdio: 'inherit' });
  process.env.VMEXEC_BIN = join(dir, 'vmexec');
  process.env.VMEXEC_AGENT_BIN = join(dir, 'vmexec-agent');
  return process.env.VMEXEC_BIN;
}

const text = (res) => res.content.filter((c) => c.type === 'text').map((c) => c.text).join('');

const transports = {
  stdio: (daemon, agent) => new StdioClientTransport({
    command: vmexecBin(), args: ['mcp', '--url', daemon.url, '--agent', agent], stderr: 'inherit',
  }),
  http: (daemon, agent) => new StreamableHTTPClientTransport(new URL(`${daemon.url}/mcp?agent=${agent}`)),
};

describe('MCP through the TypeScript SDK', { skip: why || false }, () => {
  let daemon;
  before(async () => {
    vmexecBin();
    daemon = await startDaemon();
  });
  after(async () => { await daemon?.stop(); });

  for (const [name, makeTransport] of Object.entries(transports)) {
    describe(name, () => {
      const agent = `mcp-js-${name}`;
      let mcp;
      let own;
      const call = async (tool, args, opts) => mcp.callTool({ name: tool, arguments: args }, undefined, opts);
      const run = async (language, code, extra = {}) => {
        const res = await call('run_code', { language, code, ...extra });
        assert.equal(res.isError, undefined, `run_code failed as a tool: ${text(res)}`);
        return res.structuredContent;
      };

      before(async () => {
        mcp = new Client({ name: 'vmexec-mcp-test', version: '1.0.0' });
        await mcp.connect(makeTransport(daemon, agent));
      });
      after(async () => { await mcp?.close(); });

      it('lists the tools with schemas and annotations', async () => {
        const { tools } = await mcp.listTools();
        assert.deepEqual(tools.map((t) => t.name).sort(), TOOLS);
        for (const t of tools) {
          assert.ok(t.inputSchema && t.outputSchema && t.annotations && t.description, `${t.name} lacks a part`);
        }
        const by = Object.fromEntries(tools.map((t) => [t.name, t]));
        assert.equal(by.list_files.annotations.readOnlyHint, true);
        assert.equal(by.history.annotations.readOnlyHint, true);
        assert.equal(by.rollback.annotations.destructiveHint, true);
        assert.equal(by.fork.annotations.destructiveHint, false);
        assert.deepEqual(by.run_code.inputSchema.required.sort(), ['code', 'language']);
      });

      it('runs code, and state persists across calls', async () => {
        const r = await run('python', "open('state.txt','w').write('one\\n'); print('hello')");
        assert.equal(r.verdict, 'ok');
        assert.equal(r.stdout, 'hello\n');
        assert.equal(r.agent_id, agent);
        own = r.sandbox_id;
        const r2 = await run('bash', 'cat state.txt');
        assert.equal(r2.stdout, 'one\n');
        assert.equal(r2.sandbox_id, own);
      });

      it('returns a failed run as a result, rolled back', async () => {
        const res = await call('run_code', { language: 'bash', code: 'echo two > state.txt; exit 4' });
        assert.equal(res.isError, undefined, 'a program that fails is not a tool error');
        assert.equal(res.structuredContent.verdict, 'nonzero_exit');
        assert.equal(res.structuredContent.exit_code, 4);
        assert.equal(res.structuredContent.rolled_back, true);
        assert.match(text(res), /rolled back/);
        assert.equal((await run('bash', 'cat state.txt')).stdout, 'one\n');
      });

      it('answers a blocked run with isError, its rule and reason', async () => {
        const res = await call('run_code', { language: 'bash', code: 'rm -rf /home/user' });
        assert.equal(res.isError, true);
        assert.equal(res.structuredContent.verdict, 'blocked');
        assert.ok(res.structuredContent.blocked_rule && res.structuredContent.blocked_reason);
        assert.match(text(res), new RegExp(res.structuredContent.blocked_rule));
        assert.match(text(res), /Hint:/);
      });

      it('answers bad arguments with isError and a hint', async () => {
        const res = await call('rollback', { snapshot_id: 'snap-x', last_success: true });
        assert.equal(res.isError, true);
        assert.match(text(res), /Hint:/);
      });

      it('snapshots, rolls back and forks', async () => {
        const sn = await call('snapshot', { name: 'clean' });
        assert.equal(sn.isError, undefined, text(sn));
        const snap = sn.structuredContent.id;
        assert.equal(sn.structuredContent.sandbox_id, own);
        await run('bash', 'echo three > state.txt');
        const rb = await call('rollback', { snapshot_id: snap });
        assert.equal(rb.isError, undefined, text(rb));
        assert.equal(rb.structuredContent.snapshot_id, snap);
        assert.equal((await run('bash', 'cat state.txt')).stdout, 'one\n');

        await run('bash', 'echo four > last.txt');
        const ls = await call('rollback', { last_success: true });
        assert.equal(ls.isError, undefined, text(ls));
        assert.equal((await run('bash', 'cat last.txt')).stdout, 'four\n');

        const fk = await call('fork', { snapshot_id: snap });
        assert.equal(fk.isError, undefined, text(fk));
        const fork = fk.structuredContent.id;
        assert.notEqual(fork, own);
        const inFork = await run('bash', 'cat state.txt; rm state.txt', { sandbox_id: fork });
        assert.equal(inFork.stdout, 'one\n');
        assert.equal((await run('bash', 'cat state.txt')).stdout, 'one\n', 'the fork is a copy');
        const del = await call('delete_sandbox', { sandbox_id: fork });
        assert.equal(del.isError, undefined, text(del));
      });

      it('shows the failures in the history', async () => {
        const h = await call('history', { failures_only: true, limit: 10 });
        assert.equal(h.isError, undefined, text(h));
        const runs = h.structuredContent.runs;
        assert.ok(runs.some((r) => r.exit_code === 4 && r.rolled_back), 'the failed run');
        assert.ok(runs.some((r) => r.status === 'blocked'), 'the blocked run');
      });

      it('moves files in and out', async () => {
        const w = await call('write_file', { path: 'notes/a.txt', content: 'héllo\n' });
        assert.equal(w.isError, undefined, text(w));
        const r = await call('read_file', { path: 'notes/a.txt' });
        assert.equal(r.structuredContent.content, 'héllo\n');
        const l = await call('list_files', { path: 'notes' });
        assert.deepEqual(l.structuredContent.entries.map((e) => e.name), ['a.txt']);
      });

      it('sends output lines as progress during a long run, within a request timeout above its length', async () => {
        // Each line carries the time it was printed (the sandbox shares the host's
        // clock): the first notification must arrive before the last line is printed.
        const lines = 8;
        const got = [];
        const res = await call('run_code', {
          language: 'bash', code: `for i in $(seq ${lines}); do echo line $i $(date +%s%3N); sleep 1; done`, timeout_seconds: 120,
        }, {
          timeout: 120_000,
          onprogress: (p) => got.push({ message: p.message, at: Date.now() }),
        });
        assert.equal(res.isError, undefined, text(res));
        assert.equal(res.structuredContent.verdict, 'ok');
        assert.deepEqual(got.map((g) => g.message.split(' ').slice(0, 2).join(' ')),
          Array.from({ length: lines }, (_, i) => `line ${i + 1}`));
        const lastPrinted = Number(got[lines - 1].message.split(' ')[2]);
        assert.ok(got[0].at < lastPrinted, `the first line arrived at ${got[0].at}, after the last was printed at ${lastPrinted}`);
      });

      it('cancels and rolls back a run whose request timed out', async () => {
        await assert.rejects(
          call('run_code', { language: 'bash', code: 'touch timed-out.txt; sleep 120', timeout_seconds: 300 }, { timeout: 1500 }),
          (err) => err.code === ErrorCode.RequestTimeout,
        );
        // The SDK sends notifications/cancelled with the timeout; the server cancels the run.
        const rec = await waitUntil(async () => {
          const h = await call('history', { limit: 1 });
          const r = h.structuredContent.runs[0];
          return r && r.code.includes('timed-out.txt') && r.status !== 'running' ? r : null;
        }, { what: 'the timed-out run to end' });
        assert.equal(rec.verdict, 'canceled');
        assert.equal(rec.rolled_back, true);
        assert.equal((await run('bash', 'test -e timed-out.txt && echo there || echo gone')).stdout, 'gone\n');
      });

      it('keeps the sandbox for a new session of the same agent', async () => {
        const again = new Client({ name: 'vmexec-mcp-test-2', version: '1.0.0' });
        await again.connect(makeTransport(daemon, agent));
        try {
          const r = await again.callTool({ name: 'run_code', arguments: { language: 'bash', code: 'cat state.txt' } });
          assert.equal(r.structuredContent.stdout, 'one\n');
          assert.equal(r.structuredContent.sandbox_id, own);
        } finally {
          await again.close();
        }
      });
    });
  }
});
