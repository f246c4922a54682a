// sandbox.js — the Sandbox & snapshots tab: the sandbox the page looks at (status,
// backend, accelerator, memory, snapshot count and bytes, its files), its snapshots
// (name, time, size, the run that made it) with roll back, fork and delete, a named
// snapshot, and a rollback to the last success. What destroys state asks first.
import { el, $, clear, fmtBytes, fmtTime, fmtShortTime, errorBox, confirmAction, describeError } from './util.js';

const KIND = {
  manual: 'taken by hand', pre_run: 'before a run', failure: 'a failed run\'s state', suspend: 'at suspension', fork_base: 'fork base',
};

export function initSandbox(ctx) {
  const card = $('sandbox-card');
  const files = $('sandbox-files');
  const snaps = $('snap-list');
  const summary = $('snap-summary');

  function act(label) {
    // One message line for the outcome of an action, kept in the summary.
    // An error is said in words a person can act on (describeError).
    return (text, ok = true) => {
      if (typeof text !== 'string') { const d = describeError(text, label); text = `${d.title} ${d.detail}`; ok = false; }
      summary.textContent = `${label}: ${text}`;
      summary.className = `status ${ok ? 'good' : 'bad'}`;
    };
  }

  async function refresh() {
    const id = ctx.state.sandboxId;
    if (!id) {
      clear(card, el('p', { class: 'empty' }, `Agent ${ctx.state.agent} has no sandbox yet. It gets one on its first run: run code on the Run tab, or pick a scenario.`));
      clear(files);
      clear(snaps);
      summary.textContent = '';
      return;
    }
    let sb;
    try {
      sb = await ctx.api.call((c) => c.getSandbox(id));
    } catch (err) {
      clear(card, errorBox(err, 'Loading the sandbox'));
      clear(snaps);
      clear(files);
      return;
    }
    const rows = [
      ['Id', el('code', {}, sb.id)], ['Name', sb.name || '—'], ['Status', el('span', { class: `sbstatus st-${sb.status}` }, sb.status)],
      ['Backend', sb.backend], ['Accelerator', sb.accel || (sb.backend === 'gvisor' ? 'none (gVisor)' : '—')],
      ['Memory', `${sb.memory_mb} MB`], ['Runs', String(sb.runs)],
      ['Snapshots', `${sb.snapshots} · ${fmtBytes(sb.snapshot_bytes)}`],
      ['Created', fmtTime(sb.created_at)], ['Last used', fmtTime(sb.last_used_at)],
    ];
    clear(card,
      el('dl', { class: 'sbcard', dataset: { sandbox: sb.id } }, rows.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      el('div', { class: 'row buttons' },
        el('button', { type: 'button', id: 'sandbox-refresh', onclick: () => refresh() }, 'Refresh'),
        el('button', { type: 'button', class: 'danger', id: 'sandbox-delete', onclick: () => deleteSandbox(sb) }, 'Delete sandbox…')));
    loadFiles(sb.id);
    loadSnapshots(sb.id);
  }

  async function loadFiles(id) {
    try {
      const res = await ctx.api.call((c) => c.listFiles(id, '.', { agentId: ctx.state.agent }));
      const entries = (res.entries || []).filter((e) => !e.name.startsWith('.'));
      clear(files, entries.length
        ? el('ul', { class: 'files' }, entries.map((e) => el('li', { dataset: { name: e.name }, title: e.path }, el('code', {}, e.name + (e.type === 'dir' ? '/' : '')), ` ${e.type === 'dir' ? '' : fmtBytes(e.size)}`)))
        : el('p', { class: 'empty' }, 'No files yet (hidden files are not listed). A run that writes one shows it here.'));
    } catch (err) {
      clear(files, errorBox(err, 'Listing the files'));
    }
  }

  async function loadSnapshots(id) {
    let list;
    try {
      list = await ctx.api.call((c) => c.listSnapshots(id, { agentId: ctx.state.agent }));
    } catch (err) {
      clear(snaps, errorBox(err, 'Listing the snapshots'));
      return;
    }
    const items = [...(list.snapshots || [])].reverse(); // newest first
    if (!items.length) {
      clear(snaps, el('p', { class: 'empty' }, 'No snapshots yet. vmexec takes one before every run; or take a named one above.'));
      return;
    }
    const row = (s) => el('tr', { dataset: { snapshot: s.id, kind: s.kind } },
      el('td', { 'data-label': 'Snapshot' }, s.name ? el('strong', {}, s.name) : null, s.name ? el('br') : null, el('code', {}, s.id), s.pinned ? el('span', { class: 'tag' }, 'pinned') : null),
      el('td', { 'data-label': 'Kind' }, el('span', { class: `kind k-${s.kind}`, title: KIND[s.kind] || s.kind }, s.kind)),
      el('td', { 'data-label': 'Taken', class: 'nowrap', title: fmtTime(s.created_at) }, fmtShortTime(s.created_at)),
      el('td', { 'data-label': 'Size', class: 'nowrap' }, fmtBytes(s.size_bytes)),
      el('td', { 'data-label': 'Made by run' }, s.run_id ? el('a', { href: '#history', class: 'runlink', onclick: (e) => { e.preventDefault(); ctx.openRun?.(s.run_id); } }, s.run_id) : '—'),
      el('td', { class: 'actions', 'data-label': 'Actions' },
        el('button', { type: 'button', class: 'rollback', 'aria-label': `Roll back to ${s.name || s.id}`, onclick: () => rollback(id, s) }, 'Roll back…'),
        el('button', { type: 'button', class: 'fork', 'aria-label': `Fork ${s.name || s.id} into a new sandbox`, onclick: () => fork(s) }, 'Fork'),
        el('button', { type: 'button', class: 'delete danger', 'aria-label': `Delete ${s.name || s.id}`, onclick: () => deleteSnap(s) }, 'Delete…')));
    const table = el('table', { class: 'snaps' },
      el('caption', { class: 'sr-only' }, 'Snapshots, newest first'),
      el('thead', {}, el('tr', {}, ['Snapshot', 'Kind', 'Taken', 'Size', 'Made by run', 'Actions'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, items.map(row)));
    clear(snaps, el('div', { class: 'table-wrap' }, table),
      el('p', { class: 'hint' }, `${items.length} snapshot${items.length === 1 ? '' : 's'} on disk: ${fmtBytes(list.disk_bytes)}.`));
  }

  async function rollback(sandboxId, s) {
    const say = act('Roll back');
    if (!(await confirmAction('Roll back the sandbox?', `Sandbox ${sandboxId} gets the files, memory and processes of ${s.name || s.id} (${s.kind}, ${fmtTime(s.created_at)}). What changed since is lost, unless a snapshot holds it. Runs stay in the history.`, 'Roll back'))) return;
    try {
      const r = await ctx.api.call((c) => c.rollback(sandboxId, { agent_id: ctx.state.agent, snapshot_id: s.id }));
      ctx.recordEvent({ type: 'rollback', sandbox_id: sandboxId, snapshot_id: r.snapshot_id });
      say(r.message);
    } catch (err) {
      say(err);
    }
    refresh();
    ctx.refreshSandboxes();
  }

  async function rollbackLast() {
    const say = act('Roll back to last success');
    const id = ctx.state.sandboxId;
    if (!id) { say('there is no sandbox yet: run something first.', false); return; }
    if (!(await confirmAction('Roll back to the last success?', `Sandbox ${id} returns to its state right after its newest successful run. What changed since is lost.`, 'Roll back'))) return;
    try {
      const r = await ctx.api.call((c) => c.rollback(id, { agent_id: ctx.state.agent, last_success: true }));
      if (r.snapshot_id) ctx.recordEvent({ type: 'rollback', sandbox_id: id, snapshot_id: r.snapshot_id });
      say(r.message);
    } catch (err) {
      if (err?.status === 404) say('no successful run to return to, or its snapshot is gone (retention). Roll back to a listed snapshot instead.', false);
      else say(err);
    }
    refresh();
  }

  async function fork(s) {
    const say = act('Fork');
    try {
      const sb = await ctx.api.call((c) => c.fork(s.id, { agent_id: ctx.state.agent, name: `fork of ${s.name || s.id}` }));
      ctx.recordEvent({ type: 'fork', snapshot_id: s.id, sandbox_id: sb.id });
      say(`new sandbox ${sb.id} starts from ${s.name || s.id}; the page now uses it (switch back with the Sandbox picker).`);
      await ctx.refreshSandboxes();
      ctx.selectSandbox(sb.id);
    } catch (err) {
      say(err);
    }
  }

  async function deleteSnap(s) {
    const say = act('Delete');
    if (!(await confirmAction('Delete the snapshot?', `${s.name || s.id} (${s.kind}, ${fmtBytes(s.size_bytes)}) is removed for good: you cannot roll back or fork from it afterwards.`, 'Delete'))) return;
    try {
      await ctx.api.call((c) => c.deleteSnapshot(s.id, { agentId: ctx.state.agent }));
      say(`snapshot ${s.name || s.id} deleted.`);
    } catch (err) {
      say(err);
    }
    refresh();
  }

  async function deleteSandbox(sb) {
    const say = act('Delete sandbox');
    if (!(await confirmAction('Delete the sandbox?', `Sandbox ${sb.id} stops and its files, processes and ${sb.snapshots} snapshot${sb.snapshots === 1 ? '' : 's'} are deleted. Its runs stay in the history. The agent's next run starts a fresh sandbox.`, 'Delete sandbox'))) return;
    try {
      await ctx.api.call((c) => c.deleteSandbox(sb.id));
      say(`sandbox ${sb.id} deleted.`);
      if (ctx.state.pick === sb.id) ctx.state.pick = '';
      if (ctx.state.own === sb.id) ctx.state.own = '';
    } catch (err) {
      say(err);
    }
    await ctx.refreshSandboxes();
    refresh();
  }

  $('snap-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const say = act('Snapshot');
    const id = ctx.state.sandboxId;
    if (!id) { say('there is no sandbox yet: run something first, then snapshot it.', false); return; }
    const name = $('snap-name').value.trim();
    $('snap-create').disabled = true;
    try {
      const s = await ctx.api.call((c) => c.createSnapshot(id, { agent_id: ctx.state.agent, name: name || undefined, pinned: $('snap-pinned').checked }));
      say(`took ${s.name || s.id} (${fmtBytes(s.size_bytes)}).`);
      $('snap-name').value = '';
    } catch (err) {
      say(err);
    } finally {
      $('snap-create').disabled = false;
    }
    refresh();
    ctx.refreshSandboxes();
  });
  $('rollback-last').addEventListener('click', () => rollbackLast());
  ctx.onShow.sandbox = refresh;
}
