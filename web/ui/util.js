// util.js — small DOM and formatting helpers of the page, and the one place server
// errors are turned into words a person can act on (describeError).

/** el builds an element: el('div', {class: 'x', onclick: f}, child, 'text', ...). */
export function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') n.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(n.dataset, v);
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

export const $ = (id) => document.getElementById(id);

export function clear(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

export function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime()) || d.getFullYear() < 1971) return '—';
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** fmtShortTime is fmtTime without the year, for tables. */
export function fmtShortTime(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime()) || d.getFullYear() < 1971) return '—';
  return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function fmtDuration(ms) {
  if (ms == null) return '—';
  if (ms < 1000) return `${ms} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

/** What each verdict means, in a few words. */
export const VERDICTS = {
  ok: 'exited 0: success',
  nonzero_exit: 'exited with a non-zero code',
  timeout: 'ran past its time limit and was killed',
  output_limit: 'wrote more output than allowed and was stopped',
  memory_limit: 'used more memory than allowed and was killed',
  killed: 'was killed by a signal',
  blocked: 'refused by the policy before it ran',
  canceled: 'canceled: the client went away mid-run',
};

export function verdictBadge(verdict) {
  const v = verdict || 'running';
  return el('span', { class: `badge v-${v}`, title: VERDICTS[v] || v, dataset: { verdict: v } }, v);
}

/**
 * describeError turns an error of the client into {title, detail}: what happened and
 * what to do about it. The server's own message is kept in the detail.
 */
export function describeError(err, what = 'The request') {
  const status = err?.status ?? 0;
  const code = err?.code ?? '';
  const server = (err?.body && err.body.error) || '';
  const msg = server || String(err?.message || err).replace(/^vmexec: /, '');
  if (err?.name === 'AbortError') return { title: `${what} was canceled.`, detail: '' };
  if (code === 'connection_error' || (status === 0 && code !== 'timeout')) {
    return { title: 'Cannot reach the vmexec daemon.', detail: `Is \`vmexec serve\` still running at ${location.host}? Start it (scripts/serve) and try again. (${msg})` };
  }
  switch (status) {
    case 400: return { title: `${what} was refused as invalid.`, detail: `${msg} — fix the field it names and try again.` };
    case 401: return { title: 'The daemon needs an API key.', detail: 'Enter a valid key when asked (or reload the page to be asked again).' };
    case 403: return { title: 'Not allowed.', detail: `${msg} — it belongs to another agent, or your key's scope does not cover it. Pick the agent that owns it.` };
    case 404: return { title: 'Not found.', detail: `${msg} — it may have been deleted, or removed by snapshot retention. Refresh the lists.` };
    case 409: return { title: 'Conflict.', detail: `${msg} — refresh and try again.` };
    case 413: return { title: 'Too large.', detail: `${msg} — send less (code is limited to 1 MiB, replies too).` };
    case 415: return { title: 'Wrong content type.', detail: msg };
    case 429: return { title: 'The agent is busy.', detail: `${msg} — its queue of runs is full; wait for them to finish, then try again.` };
    case 501: return { title: 'Not supported here.', detail: `${msg} — this sandbox's backend cannot do that.` };
    case 503: return { title: 'The server is at capacity or stopping.', detail: `${msg} — wait a moment and retry, or delete sandboxes you no longer need.` };
    case 504: return { title: 'The server gave up waiting.', detail: `${msg} — try again; if it keeps happening, the sandbox may be stuck: roll it back or delete it.` };
    case 507: return { title: 'The snapshot disk budget is full.', detail: `${msg} — delete old snapshots (Sandbox & snapshots tab), or unpin some.` };
    default: break;
  }
  if (status >= 500) return { title: 'The server failed.', detail: `${msg} — the daemon's log has the details.` };
  return { title: `${what} failed.`, detail: msg };
}

/** errorBox renders describeError as an inline alert. */
export function errorBox(err, what) {
  const { title, detail } = describeError(err, what);
  return el('div', { class: 'error', role: 'alert' }, el('strong', {}, title), ' ', detail);
}

/** confirmAction asks in a modal dialog; resolves true when the person confirms. */
export function confirmAction(title, text, confirmLabel = 'Confirm') {
  const dlg = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = confirmLabel;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
    $('confirm-no').focus();
  });
}

export function shortId(id) { return id || '—'; }

export function randomId(prefix) {
  const b = new Uint8Array(4);
  crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
