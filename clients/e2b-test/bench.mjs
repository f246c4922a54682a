// The E2B SDK's own latency against vmexec, for bench/ (bench/e2b.go starts the
// daemon and runs this with E2B_API_URL / E2B_SANDBOX_URL pointing at it): N times
// Sandbox.create() + runCode('1+1') + kill(), and N warm runCode('1+1') in one
// sandbox. Prints one JSON line: {"mode", "cold": [ms…], "warm": [ms…]}. Without
// interpreter contexts on the daemon (runCode answers 501) it measures
// commands.run('python3 -c "print(1+1)"') instead, and says so in "mode".
import './lib/guard.mjs';
import { violations } from './lib/guard.mjs';

if (!process.env.E2B_API_URL || !process.env.E2B_SANDBOX_URL) {
  console.error('bench.mjs: set E2B_API_URL and E2B_SANDBOX_URL (bench/e2b.go does)');
  process.exit(2);
}
const n = Number(process.argv[2] || 20);
const { Sandbox } = await import('@e2b/code-interpreter');

let mode = 'runCode';
const probe = await Sandbox.create();
try {
  const ex = await probe.runCode('1+1');
  if (ex.text !== '2') throw new Error(`runCode('1+1') = ${JSON.stringify(ex)}`);
} catch (e) {
  if (!/501|not available/.test(String(e?.message))) throw e;
  mode = 'commands.run';
}
const once = async (sb) => {
  if (mode === 'runCode') {
    const ex = await sb.runCode('1+1');
    if (ex.text !== '2') throw new Error(`runCode('1+1') = ${JSON.stringify(ex)}`);
  } else {
    const r = await sb.commands.run('python3 -c "print(1+1)"');
    if (r.stdout !== '2\n') throw new Error(`commands.run: ${JSON.stringify(r)}`);
  }
};
const warm = [];
for (let i = 0; i < n; i++) {
  const t = performance.now();
  await once(probe);
  warm.push(performance.now() - t);
}
await probe.kill();
const cold = [];
for (let i = 0; i < n; i++) {
  await new Promise((r) => setTimeout(r, 300)); // let the pool refill, as between real agents
  const t = performance.now();
  const sb = await Sandbox.create();
  await once(sb);
  await sb.kill();
  cold.push(performance.now() - t);
}
if (violations().length) throw new Error(`traffic left loopback: ${violations()}`);
console.log(JSON.stringify({ mode, cold, warm }));
