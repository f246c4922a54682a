// vmexec.js — the JavaScript client of vmexec, one ES module with no dependencies.
// Works in Node >= 18 (global fetch) and in browsers; the daemon serves this very file
// at GET /js/vmexec.js. Typings: index.d.ts.
//
// Three surfaces:
//   * Client            — the low-level client of the /v1 API: exec (plain and
//                         streaming), parse-execute, sandboxes, snapshots, rollback, fork,
//                         history, files, policy.
//   * VmExecutionClient — the seed system's workflow client, same constructor, options,
//                         methods, result fields and onProgress statuses, so workflow
//                         code written for it runs unchanged; transactions (snapshot
//                         before, rollback on failure) are the server's.
//   * ApiClient / withVmMethods — the seed's api-client methods (executeCode,
//                         parseAndExecuteCode, extractCodeBlocks, createVmSnapshot,
//                         rollbackVm, getVmHistory).
//
// Retries: a request is retried only when nothing ran — the connection was refused or
// reset before any response, or the server answered 429 (queue full) or 503
// (unavailable, at capacity) — with exponential backoff, full jitter, and the server's
// Retry-After when it sends one. A program that ran and failed is a 200 result and is
// never retried; neither is any other status, a timeout, or a caller's abort.

const DEFAULT_URL = 'http://127.0.0.1:8080';

/** The languages vmexec runs, by canonical name, and the names it accepts for each. */
export const LANGUAGES = Object.freeze(['python', 'javascript', 'bash', 'rust', 'go']);
const ALIASES = {
  python: 'python', py: 'python', python3: 'python',
  javascript: 'javascript', js: 'javascript', node: 'javascript', nodejs: 'javascript',
  bash: 'bash', sh: 'bash', shell: 'bash',
  rust: 'rust', rs: 'rust',
  go: 'go', golang: 'go',
};

/** canonicalLanguage returns python, javascript, bash, rust or go for a name vmexec accepts, else null. */
export function canonicalLanguage(name) {
  if (typeof name !== 'string') return null;
  return ALIASES[name.trim().toLowerCase()] ?? null;
}

// ---------------------------------------------------------------------------------
// Errors

/**
 * VmexecError is a request the server refused or could not serve: `status` is the
 * HTTP status (0 when no response came), `code` the server's error code (bad_request,
 * not_found, busy, unavailable, ...; connection_error or timeout when no response
 * came), `body` the parsed error body.
 */
export class VmexecError extends Error {
  constructor(message, { status = 0, code = 'error', body = null, cause, retryable = false } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'VmexecError';
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryable = retryable;
  }
}

/** ConnectionError: no response came (refused, reset, DNS, TLS). */
export class ConnectionError extends VmexecError {
  constructor(message, opts = {}) {
    super(message, { code: 'connection_error', ...opts });
    this.name = 'ConnectionError';
  }
}

/** TimeoutError: the client's own timeout ended the request. */
export class TimeoutError extends VmexecError {
  constructor(message, opts = {}) {
    super(message, { code: 'timeout', ...opts });
    this.name = 'TimeoutError';
  }
}

// Error codes of a connection that failed before any byte of a response: the request
// did not reach a handler, or the server closed a reused idle connection.
const RETRYABLE_NET_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'EAI_AGAIN',
]);

function netCode(err) {
  for (let e = err; e; e = e.cause) {
    if (e.code && typeof e.code === 'string') return e.code;
    if (e === e.cause) break;
  }
  return '';
}

/** isRetryable says whether err means nothing ran: a refused/reset connection, 429 or 503. */
export function isRetryable(err) {
  if (!err) return false;
  if (err instanceof VmexecError) return err.retryable;
  const status = err.status ?? err.statusCode ?? err.response?.status;
  if (status === 429 || status === 503) return true;
  if (err.name === 'AbortError' || err.name === 'TimeoutError') return false;
  const code = netCode(err);
  if (RETRYABLE_NET_CODES.has(code)) return true;
  // Browsers report every network failure as a bare TypeError ("Failed to fetch").
  return err instanceof TypeError && code === '' && typeof process === 'undefined';
}

// retryAfterMs reads a Retry-After header: seconds or an HTTP date.
function retryAfterMs(h) {
  if (!h) return null;
  const s = Number(h);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const t = Date.parse(h);
  return Number.isNaN(t) ? null : Math.max(0, t - Date.now());
}

/**
 * backoffDelay is the wait before retry number `attempt` (1-based): the server's
 * Retry-After when given, else a random delay in [0, min(maxMs, baseMs * 2^(attempt-1))]
 * (exponential backoff with full jitter).
 */
export function backoffDelay(attempt, { baseMs = 250, maxMs = 8000, retryAfter = null, random = Math.random } = {}) {
  if (retryAfter != null) return Math.min(retryAfter, Math.max(maxMs, 60000));
  const cap = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
  return Math.round(cap * random());
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(t); reject(signal.reason); };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// combineSignals returns a signal that aborts when any of signals does (AbortSignal.any
// is not in Node 18), and a function that stops listening.
function combineSignals(signals) {
  const list = signals.filter(Boolean);
  if (list.length <= 1) return { signal: list[0], done() {} };
  const ctl = new AbortController();
  const listeners = [];
  for (const s of list) {
    if (s.aborted) { ctl.abort(s.reason); break; }
    const f = () => ctl.abort(s.reason);
    s.addEventListener('abort', f, { once: true });
    listeners.push([s, f]);
  }
  return { signal: ctl.signal, done() { for (const [s, f] of listeners) s.removeEventListener('abort', f); } };
}

function envURL() {
  try {
    // eslint-disable-next-line no-undef
    if (typeof process !== 'undefined' && process.env && process.env.VMEXEC_URL) return process.env.VMEXEC_URL;
  } catch { /* no process object */ }
  return null;
}

function query(params) {
  if (!params) return '';
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------
// Server-Sent Events

/**
 * SSEParser turns the bytes of a text/event-stream into events, as the HTML standard
 * says: lines end in CRLF, LF or CR; a line starting with ':' is a comment; `data`
 * lines of one event are joined with '\n'; `event` names the event (default
 * "message"); `id` is kept; `retry` and unknown fields are ignored; a blank line
 * dispatches; an event without data is not dispatched.
 */
export class SSEParser {
  constructor() {
    this.decoder = new TextDecoder('utf-8');
    this.buf = '';
    this.first = true;
    this.pendingCR = false;
    this.reset();
  }

  reset() { this.event = ''; this.data = []; this.hasData = false; }

  /** push feeds a chunk (Uint8Array or string) and returns the events it completed. */
  push(chunk) {
    let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    if (this.first && text.length > 0) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    if (this.pendingCR && text.startsWith('\n')) text = text.slice(1); // the LF of a CRLF split across chunks
    this.pendingCR = false;
    this.buf += text;
    const out = [];
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.buf.slice(start, i), out);
      if (c === 13) {
        if (i + 1 < this.buf.length) {
          if (this.buf.charCodeAt(i + 1) === 10) i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  /** end flushes the decoder; an event not closed by a blank line is dropped, as the standard says. */
  end() {
    this.buf += this.decoder.decode();
    this.buf = '';
    this.reset();
    return [];
  }

  line(line, out) {
    if (line === '') {
      if (this.hasData) out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      this.reset();
      return;
    }
    if (line.startsWith(':')) return; // comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event': this.event = value; break;
      case 'data': this.data.push(value); this.hasData = true; break;
      case 'id': if (!value.includes('\0')) this.id = value; break;
      default: break; // retry and unknown fields: ignored
    }
  }
}

async function* readBody(body) {
  if (body[Symbol.asyncIterator]) {
    yield* body;
    return;
  }
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock?.();
  }
}

// outputText reads the text of a stdout/stderr event's data.
function outputText(d) {
  if (typeof d === 'string') return d;
  if (d && typeof d === 'object') return d.data ?? d.text ?? d.chunk ?? '';
  return '';
}

function toEvent(raw) {
  let data = raw.data;
  try { data = JSON.parse(raw.data); } catch { /* plain text data */ }
  switch (raw.event) {
    case 'stdout':
    case 'stderr':
      return { type: raw.event, data: outputText(data), ...(data && data.block != null ? { blockIndex: data.block } : {}), raw: data };
    case 'result':
      return { type: 'result', result: data };
    case 'block':
      return { type: 'block', block: data };
    case 'display':
      return { type: 'display', display: data };
    case 'error':
      return { type: 'error', error: data };
    default:
      return { type: raw.event, data };
  }
}

// The HTTP status a plain call answers for each error code; an `error` event carries
// only the code.
const CODE_STATUS = {
  bad_request: 400, invalid_json: 400, too_large: 413, not_found: 404, forbidden: 403, busy: 429,
  conflict: 409, unsupported: 501, limit: 503, unavailable: 503, timeout: 504, internal: 500,
};

function streamError(body) {
  const e = body && typeof body === 'object' ? body : { error: String(body ?? 'stream error') };
  const status = CODE_STATUS[e.code] ?? 500;
  return new VmexecError(`vmexec: ${e.error || 'stream error'}`, {
    status, code: e.code || 'error', body: e, retryable: status === 429 || status === 503,
  });
}

/**
 * EventStream is a streaming call: an async iterator of its events ({type:'stdout'|
 * 'stderr', data}, {type:'block', block}, {type:'result', result}), and `result()`,
 * which reads to the end (calling the callbacks) and resolves with the final result.
 * An `error` event rejects with a VmexecError carrying the code and the status the
 * plain call would have answered; one at the start that means nothing ran (busy,
 * unavailable, limit) is retried like a 429/503. A stream that breaks or ends before
 * its result rejects with a ConnectionError, never retried. A server that answers the
 * route with plain JSON yields that body as the one result event. `abort()` ends the
 * call; the server cancels a run whose client went away (verdict canceled, rolled back).
 */
export class EventStream {
  constructor(start, { onStdout, onStderr, onBlock, onDisplay, onEvent } = {}, controller, retry = { maxRetries: 0 }) {
    this._start = start;
    this._retry = retry;
    this._cb = { onStdout, onStderr, onBlock, onDisplay, onEvent };
    this._controller = controller;
    this._final = undefined;
    this._iterating = false;
  }

  abort(reason) { this._controller.abort(reason); }

  async *[Symbol.asyncIterator]() {
    if (this._iterating) throw new Error('vmexec: an EventStream can be read only once');
    this._iterating = true;
    const retry = this._retry;
    for (let attempt = 1; ; attempt++) {
      const res = await this._start();
      const type = res.headers.get('content-type') || '';
      if (!type.includes('text/event-stream')) {
        // A server that answered with one JSON body (no streaming on this route).
        const body = await res.json();
        yield this._dispatch({ type: 'result', result: body });
        return;
      }
      const parser = new SSEParser();
      let yielded = false;
      let again = null;
      try {
        for await (const chunk of readBody(res.body)) {
          for (const raw of parser.push(chunk)) {
            const ev = toEvent(raw);
            if (ev.type === 'error') {
              const err = streamError(ev.error);
              // Refused before anything ran (queue full, at capacity): retry as a
              // plain call's 429 or 503 would be.
              if (err.retryable && !yielded && attempt <= retry.maxRetries) {
                again = err;
                break;
              }
              this._dispatch(ev);
              throw err;
            }
            yielded = true;
            yield this._dispatch(ev);
          }
          if (again) break;
        }
      } catch (err) {
        if (err instanceof VmexecError) throw err;
        if (this._controller.signal.aborted) throw this._controller.signal.reason ?? err;
        throw new ConnectionError(`vmexec: the event stream broke: ${err.message}`, { cause: err });
      } finally {
        parser.end();
        if (!again) this._controller.abort(); // releases the connection if the caller stopped early
      }
      if (again) {
        await sleep(backoffDelay(attempt, { baseMs: retry.baseMs, maxMs: retry.maxMs }), this._controller.signal);
        continue;
      }
      if (this._final === undefined) {
        throw new ConnectionError('vmexec: the event stream ended before its result');
      }
      return;
    }
  }

  _dispatch(ev) {
    const cb = this._cb;
    if (ev.type === 'stdout') cb.onStdout?.(ev.data);
    else if (ev.type === 'stderr') cb.onStderr?.(ev.data);
    else if (ev.type === 'block') cb.onBlock?.(ev.block);
    else if (ev.type === 'display') cb.onDisplay?.(ev.display);
    else if (ev.type === 'result') this._final = ev.result;
    cb.onEvent?.(ev);
    return ev;
  }

  /** result reads the rest of the stream and resolves with the final result. */
  async result() {
    if (!this._iterating) {
      for await (const _ of this) { /* callbacks run in _dispatch */ }
    } else if (this._final === undefined) {
      throw new Error('vmexec: result() after iterating without reaching the result');
    }
    return this._final;
  }
}

// ---------------------------------------------------------------------------------
// The low-level client

/**
 * Client is the low-level client of vmexec's /v1 API. Request and result objects are
 * the API's JSON shapes (snake_case, as in api/openapi.yaml).
 *
 *   const vx = new Client({ baseUrl: 'http://127.0.0.1:8080' });
 *   const r = await vx.exec({ agent_id: 'demo', language: 'python', code: 'print(1)' });
 */
export class Client {
  constructor(opts = {}) {
    if (typeof opts === 'string') opts = { baseUrl: opts };
    this.baseUrl = String(opts.baseUrl || envURL() || DEFAULT_URL).replace(/\/+$/, '');
    this.apiKey = opts.apiKey ?? null;
    this.agentId = opts.agentId ?? null;
    this.maxRetries = opts.maxRetries ?? 3;
    this.retryBaseMs = opts.retryBaseMs ?? 250;
    this.retryMaxMs = opts.retryMaxMs ?? 8000;
    this.timeoutMs = opts.timeoutMs ?? 0;
    this.headers = { ...(opts.headers || {}) };
    this.fetch = opts.fetch || globalThis.fetch?.bind(globalThis);
    if (!this.fetch) throw new Error('vmexec: no fetch (Node >= 18 or a browser), or pass opts.fetch');
  }

  // send performs one HTTP exchange with the retry rule and returns the Response of a
  // 2xx, or throws a VmexecError.
  async send(method, path, { body, headers, signal, timeoutMs, contentType, maxRetries } = {}) {
    const retries = maxRetries ?? this.maxRetries;
    const url = this.baseUrl + path;
    const h = { ...this.headers, ...(headers || {}) };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    let payload = body;
    if (body !== undefined && body !== null && contentType === undefined && typeof body === 'object'
        && !(body instanceof Uint8Array) && !(body instanceof ArrayBuffer) && !(typeof Blob !== 'undefined' && body instanceof Blob)) {
      payload = JSON.stringify(body);
      h['Content-Type'] = 'application/json';
    } else if (typeof body === 'string' && contentType === undefined) {
      h['Content-Type'] = 'application/json';
    } else if (contentType) {
      h['Content-Type'] = contentType;
    }
    const limit = timeoutMs ?? this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      const timer = limit > 0 ? new AbortController() : null;
      const tid = timer ? setTimeout(() => timer.abort(new TimeoutError(`vmexec: ${method} ${path}: no answer within ${limit} ms`)), limit) : null;
      const sig = combineSignals([signal, timer?.signal]);
      let res;
      let err;
      try {
        res = await this.fetch(url, { method, headers: h, body: payload, signal: sig.signal });
      } catch (e) {
        err = e;
      } finally {
        if (tid) clearTimeout(tid);
        sig.done();
      }
      if (err) {
        if (signal?.aborted) throw signal.reason ?? err;
        if (timer?.signal.aborted) throw timer.signal.reason;
        const retryable = isRetryable(err);
        const ce = new ConnectionError(`vmexec: ${method} ${url}: ${err.cause?.message || err.message}`, { cause: err, retryable });
        if (!retryable || attempt > retries) throw ce;
        await sleep(backoffDelay(attempt, { baseMs: this.retryBaseMs, maxMs: this.retryMaxMs }), signal);
        continue;
      }
      if (res.ok) return res;
      const e = await errorFrom(res, method, path);
      if (!e.retryable || attempt > retries) throw e;
      await sleep(backoffDelay(attempt, {
        baseMs: this.retryBaseMs, maxMs: this.retryMaxMs, retryAfter: retryAfterMs(res.headers.get('retry-after')),
      }), signal);
    }
  }

  /**
   * request sends a request and returns its parsed JSON body (null for an empty one).
   * It also takes the seed api-client's form, request(path, {method, body}) with body a
   * JSON string, so a Client can be handed to VmExecutionClient.
   */
  async request(path, opts = {}) {
    const res = await this.send(opts.method || 'GET', path + query(opts.query), opts);
    return parseJSON(res);
  }

  /** stream sends a request that answers Server-Sent Events and returns its EventStream. */
  stream(path, body, opts = {}) {
    const ctl = new AbortController();
    const sig = combineSignals([opts.signal, ctl.signal]);
    const maxRetries = opts.maxRetries ?? this.maxRetries;
    const start = () => this.send('POST', path, {
      body, signal: sig.signal, timeoutMs: opts.timeoutMs ?? 0, maxRetries,
      headers: { Accept: 'text/event-stream', ...(opts.headers || {}) },
    });
    return new EventStream(start, opts, ctl, { maxRetries, baseMs: this.retryBaseMs, maxMs: this.retryMaxMs });
  }

  withAgent(req) {
    if (this.agentId && req && req.agent_id === undefined) return { ...req, agent_id: this.agentId };
    return req;
  }

  // Service

  health(opts) { return this.request('/v1/health', opts); }
  languages(opts) { return this.request('/v1/languages', opts); }
  backends(opts) { return this.request('/v1/backends', opts); }

  // Runs

  /**
   * exec runs code and resolves with its ExecResult; a program that fails is a
   * result, not an error. With onStdout/onStderr it streams and calls them as the
   * program writes.
   */
  exec(req, opts = {}) {
    const path = req.sandbox_id ? `/v1/sandboxes/${enc(req.sandbox_id)}/exec` : '/v1/exec';
    if (opts.onStdout || opts.onStderr || opts.onEvent) return this.stream(path, this.withAgent(req), opts).result();
    return this.request(path, { method: 'POST', body: this.withAgent(req), signal: opts.signal, timeoutMs: opts.timeoutMs, maxRetries: opts.maxRetries });
  }

  /** execStream runs code and returns its events as they come. */
  execStream(req, opts = {}) {
    const path = req.sandbox_id ? `/v1/sandboxes/${enc(req.sandbox_id)}/exec` : '/v1/exec';
    return this.stream(path, this.withAgent(req), opts);
  }

  /** parseExecute runs the code blocks of an LLM reply in document order. */
  parseExecute(req, opts = {}) {
    if (opts.onStdout || opts.onStderr || opts.onBlock || opts.onEvent) return this.parseExecuteStream(req, opts).result();
    return this.request('/v1/parse-execute', { method: 'POST', body: this.withAgent(req), signal: opts.signal, timeoutMs: opts.timeoutMs });
  }

  parseExecuteStream(req, opts = {}) { return this.stream('/v1/parse-execute', this.withAgent(req), opts); }

  // Sandboxes

  createSandbox(req = {}, opts) { return this.request('/v1/sandboxes', { ...opts, method: 'POST', body: this.withAgent(req) }); }
  async listSandboxes(opts) { return (await this.request('/v1/sandboxes', opts)).sandboxes; }
  getSandbox(id, opts) { return this.request(`/v1/sandboxes/${enc(id)}`, opts); }
  async deleteSandbox(id, opts) { await this.request(`/v1/sandboxes/${enc(id)}`, { ...opts, method: 'DELETE' }); }

  // Snapshots, rollback, fork

  createSnapshot(sandboxId, req = {}, opts) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/snapshots`, { ...opts, method: 'POST', body: this.withAgent(req) });
  }

  listSnapshots(sandboxId, { agentId, ...opts } = {}) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/snapshots`, { ...opts, query: { agent_id: agentId ?? this.agentId } });
  }

  getSnapshot(id, { agentId, ...opts } = {}) {
    return this.request(`/v1/snapshots/${enc(id)}`, { ...opts, query: { agent_id: agentId ?? this.agentId } });
  }

  async deleteSnapshot(id, { agentId, ...opts } = {}) {
    await this.request(`/v1/snapshots/${enc(id)}`, { ...opts, method: 'DELETE', query: { agent_id: agentId ?? this.agentId } });
  }

  /** rollback restores a sandbox: {snapshot_id} or {last_success: true}. */
  rollback(sandboxId, req, opts) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/rollback`, { ...opts, method: 'POST', body: this.withAgent(req) });
  }

  /** fork starts a new sandbox from a snapshot. */
  fork(snapshotId, req = {}, opts) {
    return this.request(`/v1/snapshots/${enc(snapshotId)}/fork`, { ...opts, method: 'POST', body: this.withAgent(req) });
  }

  // History

  /** history returns one page of runs, newest first: {runs, next_cursor, total}. */
  history(filter = {}, opts) {
    const f = { ...filter };
    if (f.agent_id === undefined && this.agentId) f.agent_id = this.agentId;
    return this.request('/v1/history', { ...opts, query: f });
  }

  /** historyAll iterates over every run that matches, following next_cursor. */
  async *historyAll(filter = {}, opts) {
    let cursor = filter.cursor;
    for (;;) {
      const page = await this.history({ ...filter, cursor }, opts);
      yield* page.runs;
      if (!page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  getRun(id, opts) { return this.request(`/v1/runs/${enc(id)}`, opts); }
  runChangeDiff(id, path, { agentId, ...opts } = {}) {
    return this.request(`/v1/runs/${enc(id)}/changes`, { ...opts, query: { path, agent_id: agentId ?? this.agentId } });
  }

  // Policy

  getPolicy(agentId, opts) { return this.request(`/v1/agents/${enc(agentId)}/policy`, opts); }
  setPolicy(agentId, policy, opts) {
    return this.request(`/v1/agents/${enc(agentId)}/policy`, { ...opts, method: 'PUT', body: policy });
  }

  // Interpreter contexts: long-lived python and javascript interpreters whose cells
  // are transactions (a failing cell is rolled back with the interpreter's memory).

  /** createContext starts an interpreter: {language: 'python'|'javascript', cwd?}. */
  createContext(sandboxId, req, opts) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/contexts`, { ...opts, method: 'POST', body: this.withAgent(req) });
  }

  /** listContexts lists a sandbox's contexts, oldest first. */
  async listContexts(sandboxId, { agentId, ...opts } = {}) {
    const res = await this.request(`/v1/sandboxes/${enc(sandboxId)}/contexts`, { ...opts, query: { agent_id: agentId ?? this.agentId } });
    return res.contexts;
  }

  /** deleteContext kills a context's interpreter. */
  async deleteContext(sandboxId, contextId, { agentId, ...opts } = {}) {
    await this.request(`/v1/sandboxes/${enc(sandboxId)}/contexts/${enc(contextId)}`, {
      ...opts, method: 'DELETE', query: { agent_id: agentId ?? this.agentId },
    });
  }

  /** restartContext replaces a context's interpreter by a fresh one (its state is gone). */
  restartContext(sandboxId, contextId, opts) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/contexts/${enc(contextId)}/restart`, { ...opts, method: 'POST', body: this.withAgent({}) });
  }

  /**
   * runCell runs code in a context: {code, env?, timeout_ms?, rollback?}. It resolves
   * with the CellResult {run_id, stdout, stderr, results, error?, execution_count,
   * verdict, rolled_back}; a cell that raises is a result, not an error. With
   * onStdout/onStderr/onDisplay it streams and calls them as the cell writes.
   */
  runCell(sandboxId, contextId, req, opts = {}) {
    const path = `/v1/sandboxes/${enc(sandboxId)}/contexts/${enc(contextId)}/run`;
    const body = this.withAgent(typeof req === 'string' ? { code: req } : req);
    if (opts.onStdout || opts.onStderr || opts.onDisplay || opts.onEvent) return this.stream(path, body, opts).result();
    return this.request(path, { method: 'POST', body, signal: opts.signal, timeoutMs: opts.timeoutMs, maxRetries: opts.maxRetries });
  }

  /** runCellStream runs a cell and returns its events as they come. */
  runCellStream(sandboxId, contextId, req, opts = {}) {
    const body = this.withAgent(typeof req === 'string' ? { code: req } : req);
    return this.stream(`/v1/sandboxes/${enc(sandboxId)}/contexts/${enc(contextId)}/run`, body, opts);
  }

  // Files (paths relative to /home/user unless absolute)

  /**
   * writeFile puts data (string, Uint8Array, ArrayBuffer or Blob) at path; parents are
   * created. Options: mode (permission bits, e.g. 0o755), agentId.
   */
  async writeFile(sandboxId, path, data, { mode, agentId, ...opts } = {}) {
    const body = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const q = query({ path, mode: mode === undefined ? undefined : mode.toString(8), agent_id: agentId ?? this.agentId });
    const res = await this.send('PUT', `/v1/sandboxes/${enc(sandboxId)}/files${q}`,
      { ...opts, body, contentType: 'application/octet-stream' });
    return parseJSON(res);
  }

  /** readFile returns the bytes of the file at path. */
  async readFile(sandboxId, path, { agentId, ...opts } = {}) {
    const q = query({ path, agent_id: agentId ?? this.agentId });
    const res = await this.send('GET', `/v1/sandboxes/${enc(sandboxId)}/files${q}`, opts);
    const body = new Uint8Array(await res.arrayBuffer());
    const want = res.headers.get('content-length');
    if (want !== null && Number(want) !== body.length) {
      // The server cuts a download short when the file fails mid-way: never a silent partial file.
      throw new ConnectionError(`vmexec: GET ${path}: got ${body.length} of ${want} bytes (the download was cut short)`);
    }
    return body;
  }

  /** readText returns the file at path decoded as UTF-8. */
  async readText(sandboxId, path, opts) {
    return new TextDecoder().decode(await this.readFile(sandboxId, path, opts));
  }

  /** listFiles lists a directory: {entries: [{name, path, type, size, mode, mtime}]}. */
  listFiles(sandboxId, path = '.', { depth, agentId, ...opts } = {}) {
    return this.request(`/v1/sandboxes/${enc(sandboxId)}/files/list`, { ...opts, query: { path, depth, agent_id: agentId ?? this.agentId } });
  }

  /** deleteFile removes a file, or a directory with {recursive: true}. */
  async deleteFile(sandboxId, path, { recursive, agentId, ...opts } = {}) {
    await this.request(`/v1/sandboxes/${enc(sandboxId)}/files`, {
      ...opts, method: 'DELETE', query: { path, recursive: recursive ? 'true' : undefined, agent_id: agentId ?? this.agentId },
    });
  }
}

async function parseJSON(res) {
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  const type = res.headers.get('content-type') || '';
  if (!type.includes('json')) return text;
  return JSON.parse(text);
}

async function errorFrom(res, method, path) {
  let body = null;
  let text = '';
  try {
    text = await res.text();
    body = JSON.parse(text);
  } catch { /* not JSON */ }
  const msg = (body && body.error) || text.trim() || res.statusText || `HTTP ${res.status}`;
  return new VmexecError(`vmexec: ${method} ${path}: ${res.status} ${msg}`, {
    status: res.status,
    code: (body && body.code) || `http_${res.status}`,
    body,
    retryable: res.status === 429 || res.status === 503,
  });
}

// ---------------------------------------------------------------------------------
// Code blocks in an LLM reply

/**
 * extractCodeBlocks finds the fenced code blocks of a Markdown text in document order:
 * ``` and ~~~ fences of any length (the closing fence of the same character and at
 * least as long), indented up to three spaces or inside list items and block quotes,
 * CRLF line ends, and a last fence a truncated reply never closed. Each block is
 * {index, language, rawLanguage, info, code, raw, closed}; `language` is canonical when
 * vmexec knows the name, the raw name otherwise, and 'python' for a fence without one
 * (as the seed's client did). The server's parse-execute (Client.parseExecute) uses a
 * full CommonMark parser and language detection.
 */
export function extractCodeBlocks(text) {
  const lines = String(text ?? '').split(/\r\n|\r|\n/);
  const blocks = [];
  let open = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!open) {
      // Strip block-quote markers and list markers before the fence.
      const m = /^((?:\s{0,3}>\s?)*(?:\s{0,3}(?:[-*+]|\d{1,9}[.)])\s+)?)(\s{0,3})(`{3,}|~{3,})(.*)$/.exec(line);
      if (!m) continue;
      const fence = m[3];
      const info = m[4].trim();
      if (fence[0] === '`' && info.includes('`')) continue; // not a fence: an inline code span
      const prefix = m[1].length + m[2].length;
      open = { fence, info, prefix, quote: (m[1].match(/>/g) || []).length, start: i, code: [] };
      continue;
    }
    let body = line;
    for (let q = 0; q < open.quote; q++) body = body.replace(/^\s{0,3}>\s?/, '');
    const close = /^\s{0,3}(`{3,}|~{3,})\s*$/.exec(body);
    if (close && close[1][0] === open.fence[0] && close[1].length >= open.fence.length) {
      blocks.push(makeBlock(blocks.length, open, lines.slice(open.start, i + 1).join('\n'), true));
      open = null;
      continue;
    }
    // Remove up to the fence's indentation from the content lines.
    const indent = open.quote ? 0 : open.prefix;
    let n = 0;
    while (n < indent && body[n] === ' ') n++;
    open.code.push(body.slice(n));
  }
  if (open) blocks.push(makeBlock(blocks.length, open, lines.slice(open.start).join('\n'), false));
  return blocks;
}

function makeBlock(index, open, raw, closed) {
  const word = (open.info.split(/[\s{]/)[0] || '').replace(/^\./, '');
  const canon = canonicalLanguage(word);
  return {
    index,
    language: word ? (canon ?? word.toLowerCase()) : 'python',
    rawLanguage: word,
    info: open.info,
    code: open.code.join('\n').trim(),
    raw,
    closed,
  };
}

// ---------------------------------------------------------------------------------
// The seed's api-client methods

/**
 * vmMethods are the seed api-client's VM methods, for any object with
 * request(path, {method, body}) that resolves with parsed JSON. withVmMethods(obj)
 * adds them to obj; ApiClient is a Client that has them.
 */
export const vmMethods = {
  /** executeCode(language, code, {agentId, vmId, requirements, timeout, workingDir, metadata}) → POST /api/llm/execute. */
  executeCode(language, code, options = {}) {
    return this.request('/api/llm/execute', {
      method: 'POST',
      body: JSON.stringify({
        agent_id: options.agentId || 'workflow-agent',
        language,
        code,
        vm_id: options.vmId ?? null,
        requirements: options.requirements || [],
        timeout_seconds: Math.floor((options.timeout || 30000) / 1000),
        working_dir: options.workingDir ?? null,
        ...(options.metadata ? { metadata: options.metadata } : {}),
      }),
    });
  },

  /** parseAndExecuteCode(text, {agentId, autoExecute, autoExecuteThreshold, vmId}) → POST /api/llm/parse-execute. */
  parseAndExecuteCode(text, options = {}) {
    return this.request('/api/llm/parse-execute', {
      method: 'POST',
      body: JSON.stringify({
        agent_id: options.agentId || 'workflow-agent',
        llm_response: text,
        auto_execute: options.autoExecute !== false,
        auto_execute_threshold: options.autoExecuteThreshold ?? 0,
        vm_config: options.vmId ? { vm_id: options.vmId } : null,
      }),
    });
  },

  extractCodeBlocks(text) { return extractCodeBlocks(text); },

  /** createVmSnapshot(vmId, snapshotName) → {snapshot_id, vm_id, name, created_at}. */
  createVmSnapshot(vmId, snapshotName) {
    return this.request(`/api/vms/${enc(vmId)}/snapshots`, {
      method: 'POST',
      body: JSON.stringify({ name: snapshotName, description: `Workflow snapshot: ${snapshotName}` }),
    });
  },

  /** rollbackVm(vmId, snapshotId) → {message, snapshot_id, vm_id}. */
  rollbackVm(vmId, snapshotId) {
    return this.request(`/api/vms/${enc(vmId)}/rollback/${enc(snapshotId)}`, { method: 'POST' });
  },

  /** getVmHistory(vmId) → {history: [{id, command, timestamp, success, exit_code, stdout, stderr, snapshot_id}], total}. */
  getVmHistory(vmId) {
    return this.request(`/api/vms/${enc(vmId)}/history`);
  },
};

/** withVmMethods adds the seed api-client's VM methods to obj (which has request()). */
export function withVmMethods(obj) {
  for (const [k, f] of Object.entries(vmMethods)) {
    Object.defineProperty(obj, k, { value: f, writable: true, configurable: true, enumerable: false });
  }
  return obj;
}

/** ApiClient is the seed's api-client: new ApiClient(baseUrl, {apiKey}) with request() and the VM methods. */
export class ApiClient extends Client {
  constructor(baseUrl, opts = {}) {
    super(typeof baseUrl === 'object' && baseUrl !== null ? baseUrl : { ...opts, baseUrl });
  }
}
for (const [k, f] of Object.entries(vmMethods)) {
  Object.defineProperty(ApiClient.prototype, k, { value: f, writable: true, configurable: true, enumerable: false });
}

// ---------------------------------------------------------------------------------
// The seed's VmExecutionClient

const PROGRESS = Object.freeze(['validating', 'creating_snapshot', 'executing', 'output', 'completed',
  'rolling_back', 'retrying', 'failed', 'error']);
export { PROGRESS as PROGRESS_STATUSES };

const MAX_CODE_BYTES = 1 << 20; // the server's hard cap; its policy blocks earlier, with a reason

/**
 * VmExecutionClient is the seed system's workflow client over vmexec:
 *
 *   const vm = new VmExecutionClient({ baseUrl: 'http://127.0.0.1:8080' }, { autoRollback: true });
 *   const r = await vm.executeCode({ language: 'python', code: 'print(1)', agentId: 'wf' });
 *   if (r.success) ... else if (r.rolledBack) ...
 *
 * The first argument is an api-client (any object with request(path, {method, body})
 * that resolves with parsed JSON, as the seed's was) or {baseUrl, apiKey}. Options:
 * maxRetries (attempts in all, default 3), retryDelay (backoff base, ms, default 1000),
 * autoRollback (default true), snapshotOnExecution (default false), snapshotOnFailure
 * (default true), timeout (per run, ms, default 30000).
 *
 * Unlike the seed's client, the transaction is the server's: vmexec snapshots before
 * each run and rolls a failed run back itself; the result reports the server's
 * snapshot ids. Only requests where nothing ran are retried (refused or reset
 * connections, 429, 503), with exponential backoff and jitter; a program that ran and
 * failed is returned at once.
 */
export class VmExecutionClient {
  constructor(apiClient, options = {}) {
    if (apiClient && typeof apiClient.request === 'function') {
      this.apiClient = apiClient;
    } else {
      this.apiClient = new Client({ ...(apiClient || {}), maxRetries: 0 });
    }
    // The v1 routes (live output, per-request transaction options) need a vmexec
    // transport; a foreign api-client gets the compatible routes only.
    this.client = this.apiClient instanceof Client ? this.apiClient : null;
    // The seed's defaults, then the caller's options over them (as the seed spread them).
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    this.options = {
      maxRetries: options.maxRetries || 3,
      retryDelay: options.retryDelay || 1000,
      autoRollback: options.autoRollback !== false,
      snapshotOnExecution: options.snapshotOnExecution || false,
      snapshotOnFailure: options.snapshotOnFailure !== false,
      timeout: options.timeout || 30000,
      ...given,
    };
    this.explicit = { autoRollback: options.autoRollback === false, snapshotOnFailure: options.snapshotOnFailure === false };
    this.executionHistory = [];
    this.vmSessions = new Map();
    this.activeSnapshots = new Map();
  }

  // call sends one request through the api-client; request bodies are JSON strings, as
  // the seed's api-client expects.
  call(path, method, body, extra) {
    const opts = { method, ...extra };
    if (body !== undefined) opts.body = JSON.stringify(body);
    return this.apiClient.request(path, opts);
  }

  /**
   * executeCode runs code as a transaction and resolves with a result — it rejects
   * only on a programming error. Request: {language, code, agentId, vmId,
   * requirements, workingDir, metadata, onProgress, onStdout, onStderr}.
   */
  async executeCode(request) {
    const {
      language, code, agentId = 'workflow-agent', vmId: givenVm = null, requirements = [],
      workingDir = null, metadata = {}, onProgress = null, onStdout = null, onStderr = null,
    } = request;
    const executionId = this.generateExecutionId();
    const startTime = Date.now();
    const progress = (p) => { try { onProgress?.(p); } catch (e) { console.warn('vmexec: onProgress threw:', e); } };
    const vmId = givenVm ?? this.vmSessions.get(agentId) ?? null;

    progress({ status: 'validating', executionId });
    const validation = this.validateCode(language, code);
    if (!validation.valid) {
      const result = {
        success: false, executionId, vmId, error: validation.error, blocked: true, reason: validation.reason,
        attempts: 0, duration: Date.now() - startTime, timestamp: new Date().toISOString(),
      };
      this.executionHistory.push(result);
      progress({ status: 'failed', ...result });
      return result;
    }

    let snapshotId = null;
    if (this.options.snapshotOnExecution && vmId) {
      progress({ status: 'creating_snapshot', executionId, vmId });
      try {
        snapshotId = await this.createSnapshot(vmId, `pre-execution-${executionId}`);
        this.activeSnapshots.set(executionId, { snapshotId, vmId, timestamp: Date.now() });
      } catch (error) {
        console.warn('vmexec: pre-execution snapshot failed:', error.message);
      }
    }

    const meta = { ...metadata, execution_id: executionId, snapshot_id: snapshotId, workflow_timestamp: startTime };
    const live = this.client && (onProgress || onStdout || onStderr);
    const needV1 = this.client && (live || this.explicit.autoRollback || this.explicit.snapshotOnFailure);
    const send = needV1
      ? () => this.executeV1({ language, code, agentId, vmId, workingDir, meta, progress, onStdout, onStderr, executionId, live })
      : () => this.call('/api/llm/execute', 'POST', {
        agent_id: agentId, language, code, vm_id: vmId, requirements,
        timeout_seconds: Math.floor(this.options.timeout / 1000), working_dir: workingDir, metadata: meta,
      }, { maxRetries: 0 }); // executeCode counts and paces the attempts itself

    progress({ status: 'executing', executionId, vmId });
    let attempts = 0;
    for (;;) {
      attempts++;
      let response;
      try {
        response = await send();
      } catch (error) {
        if (isRetryable(error) && attempts < this.options.maxRetries) { // maxRetries: attempts in all (at least one)
          const wait = backoffDelay(attempts, { baseMs: this.options.retryDelay, maxMs: this.options.retryDelay * 30 });
          progress({ status: 'retrying', executionId, attempt: attempts + 1, maxRetries: this.options.maxRetries, error: error.message, delay: wait });
          await sleep(wait);
          continue;
        }
        const errorResult = {
          success: false, executionId, vmId, error: error.message, code: error.code, httpStatus: error.status,
          duration: Date.now() - startTime, attempts, snapshotId, timestamp: new Date().toISOString(),
        };
        this.executionHistory.push(errorResult);
        progress({ status: 'error', ...errorResult });
        return errorResult;
      }
      return this.finish(response, { executionId, vmId, agentId, startTime, attempts, snapshotId, progress });
    }
  }

  // executeV1 runs through /v1/exec: streaming when live output is wanted, with the
  // caller's transaction options as a per-request policy.
  async executeV1({ language, code, agentId, vmId, workingDir, meta, progress, onStdout, onStderr, executionId, live }) {
    const history = {};
    if (this.explicit.autoRollback) history.auto_rollback_on_failure = false;
    if (this.explicit.snapshotOnFailure) history.snapshot_on_failure = false;
    const req = {
      agent_id: agentId, language, code, sandbox_id: vmId || undefined, working_dir: workingDir || undefined,
      limits: { timeout_ms: this.options.timeout }, metadata: meta,
      ...(Object.keys(history).length ? { history } : {}),
    };
    if (!live) return this.client.exec(req, { maxRetries: 0 });
    const out = (stream) => (data) => {
      progress({ status: 'output', executionId, stream, data });
      (stream === 'stdout' ? onStdout : onStderr)?.(data);
    };
    return this.client.exec(req, { onStdout: out('stdout'), onStderr: out('stderr'), maxRetries: 0 });
  }

  // finish turns the server's result into the seed's result shape.
  finish(response, { executionId, vmId, agentId, startTime, attempts, snapshotId, progress }) {
    const rvm = response.vm_id || response.sandbox_id || vmId;
    if (rvm) this.vmSessions.set(agentId, rvm);
    const result = {
      success: response.exit_code === 0 && (response.verdict === undefined || response.verdict === 'ok'),
      executionId,
      vmId: rvm,
      exitCode: response.exit_code,
      stdout: response.stdout || '',
      stderr: response.stderr || '',
      duration: Date.now() - startTime,
      attempts,
      snapshotId: snapshotId || response.pre_snapshot_id || null,
      timestamp: new Date().toISOString(),
      verdict: response.verdict,
      runId: response.execution_id,
    };
    if (response.blocked || response.verdict === 'blocked') {
      Object.assign(result, {
        blocked: true, reason: response.blocked_reason, rule: response.blocked_rule,
        error: `Blocked by policy (${response.blocked_rule}): ${response.blocked_reason}`,
      });
    }
    if (response.error) result.error = result.error || response.error;
    if (result.success) {
      this.executionHistory.push(result);
      progress({ status: 'completed', ...result });
      return result;
    }
    if (response.failure_snapshot_id) result.failureSnapshotId = response.failure_snapshot_id;
    result.rolledBack = Boolean(response.rolled_back);
    if (response.rolled_back) {
      result.restoredSnapshot = response.restored_snapshot_id;
      progress({ status: 'rolling_back', executionId, snapshotId: response.restored_snapshot_id, byServer: true });
    }
    this.executionHistory.push(result);
    progress({ status: 'failed', ...result });
    return result;
  }

  /**
   * parseAndExecute runs the code blocks of an LLM reply in order, each through
   * executeCode; with stopOnFailure (default true) it stops at the first failure.
   */
  async parseAndExecute(text, options = {}) {
    const codeBlocks = this.extractCodeBlocks(text);
    if (codeBlocks.length === 0) return { success: false, error: 'No code blocks found in text', noCodeFound: true };
    const results = [];
    for (const block of codeBlocks) {
      const result = await this.executeCode({
        language: block.language,
        code: block.code,
        ...options,
        metadata: { ...options.metadata, blockIndex: block.index, totalBlocks: codeBlocks.length },
      });
      results.push(result);
      if (!result.success && options.stopOnFailure !== false) break;
    }
    return {
      success: results.length === codeBlocks.length && results.every((r) => r.success),
      results,
      totalBlocks: codeBlocks.length,
      successfulBlocks: results.filter((r) => r.success).length,
    };
  }

  extractCodeBlocks(text) { return extractCodeBlocks(text); }

  /**
   * validateCode checks what can be checked without the server: a language vmexec
   * runs, code that is a non-empty string under the server's size cap. The security
   * policy is the server's: a blocked run comes back with blocked, reason and rule.
   */
  validateCode(language, code) {
    if (!canonicalLanguage(language)) {
      return { valid: false, error: `Unsupported language: ${language}`, reason: `Supported languages: ${LANGUAGES.join(', ')}` };
    }
    if (typeof code !== 'string' || code.trim() === '') {
      return { valid: false, error: 'No code to run', reason: 'Code is empty' };
    }
    if (new TextEncoder().encode(code).length > MAX_CODE_BYTES) {
      return { valid: false, error: `Code exceeds the maximum of ${MAX_CODE_BYTES} bytes`, reason: 'Code too long' };
    }
    return { valid: true };
  }

  /** createSnapshot snapshots a VM (sandbox) and resolves with the snapshot's id. */
  async createSnapshot(vmId, snapshotName) {
    const response = await this.call(`/api/vms/${enc(vmId)}/snapshots`, 'POST',
      { name: snapshotName, description: `Workflow snapshot: ${snapshotName}` });
    return response.snapshot_id;
  }

  /** rollbackToSnapshot restores a VM to one of its snapshots (the server's rollback). */
  async rollbackToSnapshot(vmId, snapshotId) {
    const response = await this.call(`/api/vms/${enc(vmId)}/rollback/${enc(snapshotId)}`, 'POST');
    return { success: true, vmId, snapshotId: response.snapshot_id || snapshotId, message: response.message };
  }

  /**
   * rollbackToLastSuccess restores the VM to its state right after its last
   * successful run: the server's own rollback (POST /v1/sandboxes/{id}/rollback
   * {last_success: true}).
   */
  async rollbackToLastSuccess(vmId, agentId) {
    const response = await this.call(`/v1/sandboxes/${enc(vmId)}/rollback`, 'POST',
      { ...(agentId ? { agent_id: agentId } : {}), last_success: true });
    return { success: true, vmId, snapshotId: response.snapshot_id, message: response.message };
  }

  /**
   * getExecutionHistory returns the server's history of a VM (entries with
   * snapshot_id, and snapshotId/exitCode for code written against the seed's names),
   * or this client's own results without a vmId. A server that cannot be reached
   * yields this client's results for the VM; a refused request rejects.
   */
  async getExecutionHistory(vmId = null) {
    if (!vmId) return this.executionHistory;
    try {
      const response = await this.call(`/api/vms/${enc(vmId)}/history`, 'GET');
      return (response.history || []).map((h) => ({ ...h, snapshotId: h.snapshot_id ?? null, exitCode: h.exit_code }));
    } catch (error) {
      if (error instanceof VmexecError && error.status > 0) throw error;
      console.warn('vmexec: history unavailable, returning local results:', error.message);
      return this.executionHistory.filter((h) => h.vmId === vmId);
    }
  }

  getActiveSnapshots() { return Array.from(this.activeSnapshots.values()); }

  clearHistory() {
    this.executionHistory = [];
    this.activeSnapshots.clear();
  }

  generateExecutionId() { return `exec-${Date.now()}-${Math.random().toString(36).slice(2, 11)}`; }

  delay(ms) { return sleep(ms); }
}

export default VmExecutionClient;
