// The real daemon for the client tests: `vmexec serve` built from this tree, on a free
// loopback port, with a temporary data dir, the template of scripts/setup and its
// runsc. Importing this module starts nothing; startDaemon() does.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, existsSync, rmSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const dataDir = process.env.VMEXEC_DATA_DIR || '/var/lib/vmexec';

/** missing says why the sandbox tests cannot run here, or '' when they can. */
export function missing() {
  if (process.getuid && process.getuid() !== 0) return 'sandbox tests need root (runsc): run scripts/test as root';
  const runsc = runscPath();
  if (!runsc) return 'runsc not installed: run scripts/setup (as root)';
  const tpl = join(dataDir, 'templates');
  if (!existsSync(tpl) || readdirSync(tpl).length === 0) return `no template in ${tpl}: run scripts/setup`;
  return '';
}

function runscPath() {
  for (const p of [process.env.VMEXEC_RUNSC, join(dataDir, 'tools', 'runsc')]) {
    if (p && existsSync(p)) return p;
  }
  return '';
}

function goEnv() {
  return { ...process.env, PATH: `/usr/local/go/bin:${process.env.PATH}` };
}

let built = null;

// binaries returns the vmexec and guest agent binaries: $VMEXEC_BIN and
// $VMEXEC_AGENT_BIN when set (scripts/test builds them once), else built from this
// tree into a temporary directory.
function binaries() {
  if (built) return built;
  if (process.env.VMEXEC_BIN && process.env.VMEXEC_AGENT_BIN) {
    built = { vmexec: process.env.VMEXEC_BIN, agent: process.env.VMEXEC_AGENT_BIN };
    return built;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vmexec-js-bin-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const vmexec = join(dir, 'vmexec');
  const agent = join(dir, 'vmexec-agent');
  execFileSync('go', ['build', '-o', vmexec, './cmd/vmexec'], { cwd: repoRoot, env: goEnv(), stdio: 'inherit' });
  execFileSync('go', ['build', '-o', agent, './cmd/vmexec-agent'], { cwd: repoRoot, env: { ...goEnv(), CGO_ENABLED: '0' }, stdio: 'inherit' });
  built = { vmexec, agent, dir };
  return built;
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * startDaemon starts vmexec serve and resolves when /health answers, with
 * {url, stop(), log(), dataDir, bin} (bin: the vmexec binary). stop() sends SIGTERM and waits for the exit; the data dir is
 * removed afterwards.
 */
export async function startDaemon({ extra = [] } = {}) {
  const bins = binaries();
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), 'vmexec-js-data-'));
  const logPath = join(data, '..', `${data.split('/').pop()}.log`);
  const logFd = openSync(logPath, 'w');
  const args = ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', data, '--template-dir', join(dataDir, 'templates'),
    '--runsc', runscPath(), '--agent', bins.agent, '--log-level', 'debug', '--pool-size', '1', ...extra];
  // setpriv --pdeathsig: the daemon gets SIGTERM if this test process dies without
  // stopping it (killed, crashed), so no daemon outlives its tests.
  const guard = existsSync('/usr/bin/setpriv') ? ['/usr/bin/setpriv', '--pdeathsig', 'TERM', '--'] : [];
  const argv = [...guard, bins.vmexec, ...args];
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', logFd, logFd] });
  let exited = false;
  const exit = new Promise((res) => child.on('exit', (code, sig) => { exited = true; res({ code, sig }); }));
  const url = `http://127.0.0.1:${port}`;
  const log = () => { try { return readFileSync(logPath, 'utf8'); } catch { return ''; } };
  const deadline = Date.now() + 180_000;
  for (;;) {
    if (exited) throw new Error(`vmexec serve exited at start; log:\n${log().slice(-4000)}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`vmexec serve did not become healthy; log:\n${log().slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    log,
    dataDir: data,
    bin: bins.vmexec,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
        await exit;
        clearTimeout(t);
      }
      rmSync(data, { recursive: true, force: true });
      rmSync(logPath, { force: true });
    },
  };
}

/** waitUntil polls f until it returns a truthy value (no fixed sleeps for ordering). */
export async function waitUntil(f, { timeoutMs = 60_000, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
