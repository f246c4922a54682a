// The E2B SDKs talk to E2B's cloud unless told otherwise: a forgotten E2B_SANDBOX_URL
// sends every sandbox request to https://sandbox.e2b.app. So the suite points both
// URLs at the daemon on loopback BEFORE the SDKs are imported, and this guard refuses
// every socket to a host that is not loopback (the SDKs' fetch, undici and node:http
// all connect through net.Socket): the connection fails, and violations() reports it,
// so no test can pass while traffic would leave the machine.
import net from 'node:net';

const seen = [];
const loopback = (h) => h === undefined || h === 'localhost' || h === '::1' || /^127\./.test(h) || h === '[::1]';

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  const o = args[0];
  const host = typeof o === 'object' && o !== null ? (o.path ? undefined : o.host) : (typeof args[1] === 'string' ? args[1] : undefined);
  if (!loopback(host)) {
    seen.push(String(host));
    throw new Error(`e2b-test guard: refused a connection to ${host} (only loopback is allowed)`);
  }
  return connect.apply(this, args);
};

/** violations lists the non-loopback hosts something tried to reach. */
export function violations() { return [...seen]; }

/** pointAt sets the three E2B variables to the daemon at url (before the SDKs load). */
export function pointAt(url, key) {
  process.env.E2B_API_URL = `${url}/e2b/api`;
  process.env.E2B_SANDBOX_URL = `${url}/e2b/envd`;
  process.env.E2B_API_KEY = key;
  process.env.E2B_DOMAIN = 'e2b.invalid'; // nothing derived from the domain can resolve
  delete process.env.E2B_DEBUG;
}
