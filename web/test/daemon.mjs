// The real daemon for the browser tests: the JavaScript client's harness
// (clients/js/test/daemon.mjs: `vmexec serve` built from this tree on a free loopback
// port, a temporary data dir, the shared template and runsc), plus the browser the
// tests drive. Importing this module starts nothing; startDaemon() does.
import { existsSync } from 'node:fs';
import { missing as daemonMissing, startDaemon, waitUntil } from '../../clients/js/test/daemon.mjs';

export { startDaemon, waitUntil };

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** missing says why the browser tests cannot run here, or '' when they can. */
export function missing() {
  const why = daemonMissing();
  if (why) return why;
  if (!existsSync(CHROMIUM)) return `no browser at ${CHROMIUM}: scripts/setup installs Debian's chromium`;
  return '';
}
