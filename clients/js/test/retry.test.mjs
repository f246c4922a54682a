// The retry rule and the wire details against a local stub server (node:http on
// loopback): 503/429 then 200 are retried, Retry-After is honoured, a reset before a
// response is retried, a failed program or any other status is not; the API key is
// sent as a bearer token; SSE from the stub is parsed as a browser would.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { ApiClient, Client, VmExecutionClient, VmexecError, ConnectionError, backoffDelay, isRetryable } from '../vmexec.js';
import { freePort } from './daemon.mjs';

// stub starts a server answering each request with the next of responses (a function
// (req, res, body) or {status, body, headers}); it records the requests.
async function stub(responses) {
  const seen = [];
  let i = 0;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      const r = responses[Math.min(i++, responses.length - 1)];
      if (typeof r === 'function') return r(req, res, body);
      res.writeHead(r.status, { 'Content-Type': 'application/json', ...(r.headers || {}) });
      res.end(r.body === undefined ? '' : JSON.stringify(r.body));
    });
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  servers.push(server);
  return { url: `http://127.0.0.1:${server.address().port}`, seen };
}
const servers = [];
after(() => { for (const s of servers) { s.closeAllConnections?.(); s.close(); } });

const result = (over = {}) => ({ execution_id: 'ex-1', sandbox_id: 'sb-1', exit_code: 0, verdict: 'ok', stdout: 'ok\n', stderr: '', rolled_back: false, ...over });
const busy = { status: 503, body: { error: 'too many sandboxes', code: 'limit' }, headers: { 'Retry-After': '0' } };
const fast = { retryBaseMs: 1, retryMaxMs: 2 };

describe('retries only where nothing ran', () => {
  it('503 then 200: retried, honouring Retry-After', async () => {
    const s = await stub([busy, { status: 200, body: result() }]);
    // A huge backoff base: only Retry-After: 0 lets this finish.
    const vx = new Client({ baseUrl: s.url, retryBaseMs: 3_600_000, retryMaxMs: 3_600_000 });
    const r = await vx.exec({ agent_id: 'a', language: 'python', code: 'print(1)' });
    assert.equal(r.stdout, 'ok\n');
    assert.equal(s.seen.length, 2);
    assert.equal(s.seen[0].body, s.seen[1].body, 'the same request again');
  });

  it('429 then 200: retried', async () => {
    const s = await stub([{ status: 429, body: { error: 'queue full', code: 'busy' } }, { status: 200, body: result() }]);
    const r = await new Client({ baseUrl: s.url, ...fast }).exec({ agent_id: 'a', language: 'bash', code: 'true' });
    assert.equal(r.verdict, 'ok');
    assert.equal(s.seen.length, 2);
  });

  it('a program that ran and failed is returned, never retried', async () => {
    const s = await stub([{ status: 200, body: result({ exit_code: 1, verdict: 'nonzero_exit', rolled_back: true }) }, { status: 200, body: result() }]);
    const r = await new Client({ baseUrl: s.url, ...fast }).exec({ agent_id: 'a', language: 'bash', code: 'exit 1' });
    assert.equal(r.exit_code, 1);
    assert.equal(s.seen.length, 1);
  });

  it('other statuses are not retried and carry the server code', async () => {
    for (const [status, code] of [[500, 'internal'], [504, 'timeout'], [400, 'bad_request'], [409, 'conflict']]) {
      const s = await stub([{ status, body: { error: 'no', code } }, { status: 200, body: result() }]);
      await assert.rejects(new Client({ baseUrl: s.url, ...fast }).exec({ agent_id: 'a', language: 'bash', code: 'x' }), (e) => {
        assert.ok(e instanceof VmexecError);
        assert.equal(e.status, status);
        assert.equal(e.code, code);
        return true;
      });
      assert.equal(s.seen.length, 1, `${status} must not be retried`);
    }
  });

  it('gives up after maxRetries and reports the last refusal', async () => {
    const s = await stub([busy]);
    await assert.rejects(new Client({ baseUrl: s.url, maxRetries: 2, ...fast }).health(), (e) => e.status === 503 && e.code === 'limit' && e.retryable);
    assert.equal(s.seen.length, 3);
  });

  it('a connection reset before any response is retried', async () => {
    const s = await stub([(req) => req.socket.destroy(), { status: 200, body: result() }]);
    const r = await new Client({ baseUrl: s.url, ...fast }).exec({ agent_id: 'a', language: 'bash', code: 'true' });
    assert.equal(r.verdict, 'ok');
    assert.equal(s.seen.length, 2);
  });

  it('a refused connection is retried, then a ConnectionError', async () => {
    const port = await freePort(); // nothing listens there
    await assert.rejects(new Client({ baseUrl: `http://127.0.0.1:${port}`, maxRetries: 2, ...fast }).health(), (e) => {
      assert.ok(e instanceof ConnectionError, String(e));
      assert.equal(e.code, 'connection_error');
      assert.equal(e.status, 0);
      assert.equal(e.retryable, true);
      return true;
    });
  });

  it('the client timeout is not retried', async () => {
    const s = await stub([() => { /* never answers */ }, { status: 200, body: result() }]);
    await assert.rejects(new Client({ baseUrl: s.url, timeoutMs: 200, ...fast }).health(), (e) => e.code === 'timeout');
    assert.equal(s.seen.length, 1);
  });

  it('backoff is exponential with full jitter, capped; Retry-After wins', () => {
    const hi = () => 0.999999;
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, { baseMs: 100, maxMs: 1000, random: hi })), [100, 200, 400, 800, 1000, 1000]);
    assert.equal(backoffDelay(3, { baseMs: 100, random: () => 0 }), 0);
    assert.equal(backoffDelay(1, { baseMs: 100, retryAfter: 2500 }), 2500);
    assert.equal(isRetryable(new VmexecError('x', { status: 500 })), false);
    assert.equal(isRetryable({ status: 503 }), true, 'a foreign api-client error with a status');
  });
});

describe('the wire', () => {
  it('sends the API key as a bearer token and JSON bodies', async () => {
    const s = await stub([{ status: 200, body: result() }]);
    await new Client({ baseUrl: s.url, apiKey: 'sk-test' }).exec({ agent_id: 'a', language: 'python', code: 'print(1)', metadata: { n: 1, x: null } });
    assert.equal(s.seen[0].headers.authorization, 'Bearer sk-test');
    assert.equal(s.seen[0].headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(s.seen[0].body), { agent_id: 'a', language: 'python', code: 'print(1)', metadata: { n: 1, x: null } });
    assert.equal(s.seen[0].url, '/v1/exec');
  });

  it('baseUrl defaults to $VMEXEC_URL', async () => {
    const old = process.env.VMEXEC_URL;
    process.env.VMEXEC_URL = 'http://127.0.0.1:9/';
    try {
      assert.equal(new Client().baseUrl, 'http://127.0.0.1:9');
      delete process.env.VMEXEC_URL;
      assert.equal(new Client().baseUrl, 'http://127.0.0.1:8080');
    } finally {
      if (old === undefined) delete process.env.VMEXEC_URL; else process.env.VMEXEC_URL = old;
    }
  });

  it('parses an event stream split anywhere: comments, multi-line data, retry, CRLF', async () => {
    const wire = ': stream open\r\n\r\nretry: 3000\r\nevent: stdout\r\ndata: {"data":"h\\u00e9\\n"}\r\n\r\n'
      + ':keep-alive\n\nevent: stderr\ndata: {"data":\ndata: "e"}\n\nevent: custom\ndata: a\ndata: b\n\n'
      + `event: result\ndata: ${JSON.stringify(result({ stdout: 'hé\n' }))}\n\n`;
    const bytes = Buffer.from(wire);
    const s = await stub([(req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      let i = 0;
      const step = () => { // 3-byte writes: edges inside lines, CRLFs and UTF-8 characters
        if (i >= bytes.length) return res.end();
        res.write(bytes.subarray(i, i + 3));
        i += 3;
        setImmediate(step);
      };
      step();
    }]);
    const out = [];
    const events = [];
    const st = new Client({ baseUrl: s.url }).execStream({ agent_id: 'a', language: 'bash', code: 'x' }, { onStdout: (d) => out.push(d) });
    for await (const ev of st) events.push(ev);
    assert.equal(s.seen[0].headers.accept, 'text/event-stream');
    assert.deepEqual(events.map((e) => e.type), ['stdout', 'stderr', 'custom', 'result']);
    assert.equal(events[0].data, 'hé\n');
    assert.equal(events[1].data, 'e', 'two data lines are one JSON value');
    assert.equal(events[2].data, 'a\nb');
    assert.deepEqual(out, ['hé\n']);
    assert.equal(events[3].result.stdout, 'hé\n');
  });

  it('an error event rejects with the code and the status of the plain call', async () => {
    const s = await stub([(req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.end('event: error\ndata: {"error":"no sandbox sb-x","code":"not_found"}\n\n');
    }]);
    await assert.rejects(new Client({ baseUrl: s.url, ...fast }).execStream({ sandbox_id: 'sb-x', language: 'bash', code: 'x' }).result(),
      (e) => e instanceof VmexecError && e.code === 'not_found' && e.status === 404 && !e.retryable);
    assert.equal(s.seen.length, 1);
    assert.equal(s.seen[0].url, '/v1/sandboxes/sb-x/exec');
  });

  it('a stream refused before anything ran (error event busy) is retried', async () => {
    const sse = (text) => (req, res) => { res.writeHead(200, { 'Content-Type': 'text/event-stream' }); res.end(text); };
    const s = await stub([
      sse(': stream open\n\nevent: error\ndata: {"error":"queue full","code":"busy"}\n\n'),
      sse(`event: stdout\ndata: {"data":"1\\n"}\n\nevent: result\ndata: ${JSON.stringify(result({ stdout: '1\n' }))}\n\n`),
    ]);
    const r = await new Client({ baseUrl: s.url, ...fast }).execStream({ agent_id: 'a', language: 'bash', code: 'echo 1' }).result();
    assert.equal(r.stdout, '1\n');
    assert.equal(s.seen.length, 2);
  });

  it('a stream that ends without its result is an error, not a silent success', async () => {
    const s = await stub([(req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.end('event: stdout\ndata: {"data":"partial"}\n\n');
    }]);
    await assert.rejects(new Client({ baseUrl: s.url, ...fast }).execStream({ agent_id: 'a', language: 'bash', code: 'x' }).result(), ConnectionError);
    assert.equal(s.seen.length, 1, 'output had arrived: never retried');
  });
});

describe('VmExecutionClient retries', () => {
  const compat = (over = {}) => ({ ...result(over), vm_id: 'sb-1' });

  it('503, 503, 200: three attempts with retrying progress, then completed', async () => {
    const s = await stub([busy, busy, { status: 200, body: compat() }]);
    const statuses = [];
    const vm = new VmExecutionClient({ baseUrl: s.url }, { retryDelay: 1 });
    const r = await vm.executeCode({ language: 'python', code: 'print(1)', agentId: 'wf', onProgress: (p) => statuses.push(p.status) });
    assert.equal(r.success, true);
    assert.equal(r.attempts, 3);
    assert.equal(s.seen.length, 3);
    assert.deepEqual(statuses.filter((x) => x !== 'output'), ['validating', 'executing', 'retrying', 'retrying', 'completed']);
  });

  it('over a vmexec Client with its own retries, the attempts are counted once', async () => {
    const s = await stub([busy, busy, { status: 200, body: compat() }]);
    const vm = new VmExecutionClient(new ApiClient(s.url, { maxRetries: 3, ...fast }), { retryDelay: 1 });
    const r = await vm.executeCode({ language: 'python', code: 'print(1)' });
    assert.equal(r.attempts, 3);
    assert.equal(s.seen.length, 3);
  });

  it('a program that ran and failed: one attempt, failed, never retried', async () => {
    const s = await stub([{ status: 200, body: compat({ exit_code: 1, verdict: 'nonzero_exit', rolled_back: true, restored_snapshot_id: 'snap-a', failure_snapshot_id: 'snap-b', pre_snapshot_id: 'snap-a' }) }]);
    const statuses = [];
    const vm = new VmExecutionClient({ request: async (path, opts) => { // a seed-style api-client
      const res = await fetch(s.url + path, { method: opts?.method || 'GET', body: opts?.body, headers: { 'Content-Type': 'application/json' } });
      return res.json();
    } }, { retryDelay: 1, maxRetries: 5 });
    const r = await vm.executeCode({ language: 'bash', code: 'exit 1', onProgress: (p) => statuses.push(p.status) });
    assert.equal(r.success, false);
    assert.equal(r.attempts, 1);
    assert.equal(r.rolledBack, true);
    assert.equal(r.restoredSnapshot, 'snap-a');
    assert.equal(r.failureSnapshotId, 'snap-b');
    assert.equal(r.snapshotId, 'snap-a');
    assert.equal(s.seen.length, 1);
    assert.deepEqual(statuses, ['validating', 'executing', 'rolling_back', 'failed']);
  });

  it('retries exhausted: an error result with the code, status and error progress', async () => {
    const s = await stub([busy]);
    const statuses = [];
    const r = await new VmExecutionClient({ baseUrl: s.url }, { retryDelay: 1, maxRetries: 2 })
      .executeCode({ language: 'bash', code: 'true', onProgress: (p) => statuses.push(p.status) });
    assert.equal(r.success, false);
    assert.equal(r.attempts, 2);
    assert.equal(r.httpStatus, 503);
    assert.equal(r.code, 'limit');
    assert.equal(statuses.at(-1), 'error');
    assert.equal(s.seen.length, 2);
  });

  it('sends the seed body shape to /api/llm/execute without live callbacks', async () => {
    const s = await stub([{ status: 200, body: compat() }]);
    await new VmExecutionClient({ baseUrl: s.url }).executeCode({ language: 'python', code: 'print(6*7)', agentId: 'workflow-agent', metadata: { mine: [1] } });
    assert.equal(s.seen[0].url, '/api/llm/execute');
    const body = JSON.parse(s.seen[0].body);
    assert.deepEqual(Object.keys(body), ['agent_id', 'language', 'code', 'vm_id', 'requirements', 'timeout_seconds', 'working_dir', 'metadata']);
    assert.equal(body.vm_id, null);
    assert.equal(body.working_dir, null);
    assert.deepEqual(body.requirements, []);
    assert.equal(body.timeout_seconds, 30);
    assert.match(body.metadata.execution_id, /^exec-\d+-[a-z0-9]+$/);
    assert.equal(body.metadata.snapshot_id, null);
    assert.equal(typeof body.metadata.workflow_timestamp, 'number');
    assert.deepEqual(body.metadata.mine, [1]);
  });

  it('{baseUrl, apiKey}: the key goes as a bearer token on every call', async () => {
    const s = await stub([{ status: 200, body: compat() }, { status: 201, body: { snapshot_id: 'snap-1' } }]);
    const vm = new VmExecutionClient({ baseUrl: s.url, apiKey: 'sk-wf' });
    await vm.executeCode({ language: 'python', code: 'print(1)' });
    await vm.createSnapshot('sb-1', 'cp');
    assert.deepEqual(s.seen.map((r) => r.headers.authorization), ['Bearer sk-wf', 'Bearer sk-wf']);
    assert.deepEqual(JSON.parse(s.seen[1].body), { name: 'cp', description: 'Workflow snapshot: cp' });
  });
});
