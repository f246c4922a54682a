// vmexec javascript context driver: see contexts.go for the protocol and its guarantees.
//
// The same protocol as ctxdriver.py: newline-delimited JSON on the control socket
// (fd 4), the cell's own output on fd 1 and 2, the cell's sync marker written to both
// before a result and its marker after "done". The markers go through process.stdout
// and process.stderr, after what the cell wrote there: node queues a write to a full
// pipe and finishes it later, so a marker written to the fd directly could overtake
// it. Cells run through node's REPL evaluator (top-level await, `let`/`const` kept
// across cells, the last expression's value as the result). SIGINT interrupts a running
// cell: a synchronous loop through vm's breakOnSigint, a pending await by abandoning
// it; between cells it is ignored.
'use strict';

const fs = require('fs');
const net = require('net');
const repl = require('repl');
const util = require('util');
const vm = require('vm');
const { PassThrough } = require('stream');

const ctrl = new net.Socket({ fd: 4, readable: true, writable: true });
const sink = new PassThrough();
sink.resume();
const server = repl.start({
  input: new PassThrough(),
  output: sink,
  prompt: '',
  terminal: false,
  useColors: false,
  preview: false,
  useGlobal: true,
});
// The evaluator runs in the REPL's domain, which sends a cell's exceptions (thrown, or
// rejecting its await) to the domain's 'error' listeners instead of the callback: they
// end the running cell instead of being printed; one thrown later, between cells, goes
// to stderr.
let fail = null; // rejects the running cell
server._domain.removeAllListeners('error');
server._domain.on('error', (e) => {
  if (fail) fail(e);
  else fs.writeSync(2, 'Uncaught ' + (e && e.stack ? e.stack : util.inspect(e)) + '\n');
});
let count = 0;
let interrupt = null; // rejects the running cell's await

function send(obj) {
  ctrl.write(JSON.stringify(obj) + '\n');
}

// writeMarker writes marker to stdout and stderr after what is queued there, and
// resolves when both have taken it (or failed: a cell destroyed the stream), or after
// markerWait (a cell corked the stream).
const markerWait = 1000;
// The streams' own write methods, kept from start-up: a cell that replaces
// process.stdout.write (to silence or capture output) must not hold up every marker.
const streamWrite = new Map([
  [process.stdout, process.stdout.write],
  [process.stderr, process.stderr.write],
]);
function writeMarker(marker) {
  if (!marker) return Promise.resolve();
  const one = (stream, fd) => new Promise((resolve) => {
    const timer = setTimeout(resolve, markerWait);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    try {
      if (stream.destroyed || stream.writableEnded) {
        fs.writeSync(fd, marker);
        done();
      } else {
        streamWrite.get(stream).call(stream, marker, done);
      }
    } catch (e) {
      done();
    }
  });
  return Promise.all([one(process.stdout, 1), one(process.stderr, 2)]);
}

process.on('SIGINT', () => {
  if (interrupt) interrupt();
});

function errorOf(e) {
  if (e instanceof repl.Recoverable) e = e.err;
  if (e && typeof e === 'object' && typeof e.name === 'string') {
    let stack = typeof e.stack === 'string' ? e.stack : `${e.name}: ${e.message}`;
    // The driver's and node's own frames below the cell's are noise.
    stack = stack.split('\n').filter((l) => !/^\s+at .*(\bnode:|REPLServer|sigintHandlersWrap)/.test(l) && !l.includes(__filename)).join('\n');
    return { name: e.name, value: String(e.message ?? ''), traceback: stack };
  }
  return { name: 'Error', value: util.inspect(e), traceback: 'Uncaught ' + util.inspect(e) };
}

function format(value) {
  const out = { text: util.inspect(value, { depth: 4 }), is_main_result: true };
  return out;
}

// evaluate runs a cell. Code without `await` runs as a script of the main context
// (its top-level declarations stay for later cells; a synchronous loop is broken by
// SIGINT); code with it goes through the REPL's evaluator, which rewrites top-level
// await (its declarations become globals).
function evaluate(code, name) {
  if (!code.includes('await')) {
    let script;
    // A cell that is an object literal, as the REPL reads it.
    if (/^\s*\{/.test(code) && /\}\s*$/.test(code)) {
      try {
        script = new vm.Script(`(${code})`, { filename: name });
      } catch (e) {
        script = undefined;
      }
    }
    try {
      if (!script) script = new vm.Script(code, { filename: name });
      return Promise.resolve(script.runInThisContext({ breakOnSigint: true, displayErrors: false }));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  return new Promise((resolve, reject) => {
    fail = reject;
    server.eval(code, server.context, name, (err, result) => {
      if (err) reject(err);
      else resolve(result);
    });
  });
}

async function cell(req) {
  count++;
  const env = req.env || {};
  const saved = {};
  for (const k of Object.keys(env)) {
    saved[k] = process.env[k];
    process.env[k] = env[k];
  }
  let error = null;
  const stop = new Promise((_, reject) => {
    interrupt = () => {
      const e = new Error('Script execution was interrupted by `SIGINT`');
      e.name = 'Interrupted';
      reject(e);
    };
  });
  stop.catch(() => {});
  try {
    const value = await Promise.race([evaluate(req.code || '', `cell-${count}`), stop]);
    if (value !== undefined) {
      const result = format(value);
      await writeMarker(req.sync);
      send({ type: 'result', result, sync: req.sync ? 1 : 0 });
    }
  } catch (e) {
    error = errorOf(e);
  }
  interrupt = null;
  fail = null;
  for (const k of Object.keys(saved)) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  send({ type: 'done', count, error });
  await writeMarker(req.marker);
}

let queue = Promise.resolve();
let buf = '';
ctrl.setEncoding('utf8');
ctrl.on('data', (chunk) => {
  buf += chunk;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    let req;
    try {
      req = JSON.parse(line);
    } catch (e) {
      continue;
    }
    queue = queue.then(() => cell(req));
  }
});
ctrl.on('end', () => process.exit(0));
ctrl.on('error', () => process.exit(0));
send({ type: 'ready', pid: process.pid });
