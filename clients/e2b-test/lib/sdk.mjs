// Shared set-up of the E2B suites: the guard against traffic leaving loopback, the
// daemon (the JS client's harness: `vmexec serve` built from this tree), and the
// E2B variables pointed at it before an SDK is imported.
import { violations, pointAt } from './guard.mjs';
import { startDaemon, missing, waitUntil } from '../../js/test/daemon.mjs';

export { violations, missing, waitUntil };

// An open daemon (no keys) takes any key; the SDK wants one in the E2B shape.
export const anyKey = 'e2b_' + '0'.repeat(40);

/** daemon starts vmexec serve and points the E2B variables at it. */
export async function daemon(opts) {
  const d = await startDaemon(opts);
  pointAt(d.url, anyKey);
  return d;
}

/** sdk imports the pinned packages (after daemon(): they read the variables). */
export async function sdk() {
  const e2b = await import('e2b');
  const old = await import('e2b-2.50');
  const ci = await import('@e2b/code-interpreter');
  return { e2b, old, ci };
}
