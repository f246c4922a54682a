// history.js — the History tab: the agent's runs with filters (failures only, language,
// time range) and paging; a row opens to its code, output, verdict and snapshots, and
// can be run again; above it, a timeline of runs, snapshots and rollbacks.
import { LANGUAGES } from '/js/vmexec.js';
import { el, $, clear, fmtTime, fmtDuration, fmtBytes, verdictBadge, errorBox } from './util.js';

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, ...children) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) n.setAttribute(k, String(v));
  for (const c of children) if (c) n.append(c);
  return n;
}
const title = (t) => svg('title', {}, document.createTextNode(t));

export function initHistory(ctx) {
  const list = $('hist-list');
  const status = $('hist-status');
  const lang = $('hist-lang');
  clear(lang, el('option', { value: '' }, 'all'), LANGUAGES.map((l) => el('option', { value: l }, l)));
  let cursors = [undefined]; // cursors[i]: where page i starts
  let page = 0;
  let loading = 0;

  function filters() {
    const f = { agent_id: ctx.state.agent };
    if ($('hist-failures').checked) f.failures_only = true;
    const since = $('hist-since').value;
    const until = $('hist-until').value;
    if (since) f.since = new Date(since).toISOString();
    if (until) f.until = new Date(until).toISOString();
    return f;
  }

  async function load(i) {
    const ticket = ++loading;
    const size = Number($('hist-size').value) || 20;
    const want = lang.value;
    const base = filters();
    status.textContent = 'Loading…';
    let cursor = cursors[i];
    const rows = [];
    let total = 0;
    let next;
    try {
      // The API filters all but the language; with a language, read on until a page is full.
      for (let n = 0; n < 25; n++) {
        const res = await ctx.api.call((c) => c.history({ ...base, limit: size, cursor }));
        total = res.total;
        rows.push(...(res.runs || []).filter((r) => !want || r.language === want));
        next = res.next_cursor;
        if (!next || rows.length >= size) break;
        cursor = next;
      }
    } catch (err) {
      if (ticket !== loading) return;
      status.textContent = '';
      clear(list, errorBox(err, 'Loading the history'));
      return;
    }
    if (ticket !== loading) return;
    page = i;
    cursors[i + 1] = next;
    cursors.length = i + 2;
    $('hist-newer').disabled = i === 0;
    $('hist-older').disabled = !next;
    $('hist-page').textContent = `page ${i + 1}`;
    const range = base.since || base.until ? ' in this time range' : '';
    status.textContent = `${total} ${base.failures_only ? 'failed ' : ''}run${total === 1 ? '' : 's'} of ${ctx.state.agent}${range}${want ? ` (all languages; this page shows the ${want} ones)` : ''}.`;
    if (!rows.length) {
      const filtered = want || base.failures_only || base.since || base.until;
      clear(list, el('p', { class: 'empty' }, filtered
        ? 'No run matches these filters: clear “Failures only”, the language or the time range.'
        : `No runs yet for ${ctx.state.agent}. Run code on the Run tab or try a scenario; each run appears here.`));
      return;
    }
    clear(list, rows.map((r) => runRow(r)));
  }

  function runRow(r, open = false) {
    const first = (r.code || '').split('\n').find((l) => l.trim()) || '';
    const detail = el('div', { class: 'run-detail' });
    const d = el('details', { class: 'run', dataset: { run: r.id, verdict: r.verdict || r.status } },
      el('summary', {},
        el('span', { class: 'when' }, fmtTime(r.started_at)),
        el('span', { class: 'lang' }, r.language),
        verdictBadge(r.verdict || (r.status === 'running' ? 'running' : r.status)),
        el('span', { class: 'exit' }, `exit ${r.exit_code}`),
        el('span', { class: 'dur' }, fmtDuration(r.duration_ms)),
        r.rolled_back ? el('span', { class: 'tag rolled' }, 'rolled back') : null,
        r.sandbox_id !== ctx.state.sandboxId ? el('span', { class: 'tag', title: 'run in another sandbox of the agent' }, `in ${r.sandbox_id}`) : null,
        r.metadata?.source === 'parse-execute' ? el('span', { class: 'tag' }, `reply block ${Number(r.metadata.block_index) + 1}`) : null,
        el('code', { class: 'first' }, first.slice(0, 80))),
      detail);
    d.addEventListener('toggle', () => { if (d.open && !detail.childElementCount) fillDetail(r, detail); });
    if (open) { d.open = true; }
    return d;
  }

  async function fillDetail(r, box) {
    box.append(
      el('h4', {}, 'Code'), el('pre', { class: 'code-view' }, r.code),
      el('h4', {}, 'Output'),
      el('pre', { class: 'output small' }, el('span', { class: 'stdout' }, r.stdout || ''), el('span', { class: 'stderr' }, r.stderr || ''),
        !r.stdout && !r.stderr ? el('span', { class: 'note' }, '(no output)') : null,
        r.stdout_truncated || r.stderr_truncated ? el('span', { class: 'note' }, '\n[the history keeps the first 64 KiB of each stream]') : null),
      ctx.resultCard({ ...r, execution_id: r.id }),
      el('div', { class: 'row buttons' },
        el('button', { type: 'button', class: 'primary rerun', onclick: () => { ctx.showTab('run'); ctx.runCode({ language: r.language, code: r.code, label: `Re-run of ${r.id}` }).catch(() => {}); } }, 'Run again'),
        el('button', { type: 'button', onclick: () => { ctx.editor.set(r.language, r.code); ctx.showTab('run'); document.getElementById('code').focus(); } }, 'Open in the editor')));
    const snapBox = el('div', { class: 'run-snaps' }, el('h4', {}, 'Its snapshots'), el('p', { class: 'hint' }, 'Loading…'));
    box.append(snapBox);
    let have = [];
    try {
      have = (await ctx.api.call((c) => c.listSnapshots(r.sandbox_id, { agentId: ctx.state.agent }))).snapshots || [];
    } catch (err) {
      if (err?.status !== 404) { snapBox.lastChild.replaceWith(errorBox(err, 'Listing its snapshots')); return; }
    }
    const byId = new Map(have.map((s) => [s.id, s]));
    const named = [['pre-run', r.pre_snapshot_id], ['failure', r.failure_snapshot_id], ['restored', r.restored_snapshot_id]].filter(([, id]) => id);
    const ids = new Set(named.map(([, id]) => id));
    for (const s of have) if (s.run_id === r.id && !ids.has(s.id)) named.push([s.kind, s.id]);
    snapBox.lastChild.replaceWith(named.length
      ? el('ul', {}, named.map(([role, id]) => {
        const s = byId.get(id);
        return el('li', {}, `${role}: `, el('code', {}, id), s ? ` — ${s.kind}, ${fmtBytes(s.size_bytes)}, ${fmtTime(s.created_at)}` : ' — no longer on disk (deleted, or removed by retention)');
      }))
      : el('p', { class: 'hint' }, 'None: the run took no snapshot (blocked, or snapshots were off).'));
  }

  async function openRun(id) {
    ctx.showTab('history');
    try {
      const r = await ctx.api.call((c) => c.getRun(id));
      list.prepend(runRow(r, true));
      list.firstChild.scrollIntoView({ block: 'nearest' });
    } catch (err) {
      list.prepend(errorBox(err, `Loading run ${id}`));
    }
  }
  ctx.openRun = openRun;

  // ----- the timeline

  async function timeline() {
    const box = $('timeline');
    let runs = [];
    let snaps = [];
    try {
      runs = (await ctx.api.call((c) => c.history({ agent_id: ctx.state.agent, limit: 60 }))).runs || [];
      if (ctx.state.sandboxId) {
        snaps = (await ctx.api.call((c) => c.listSnapshots(ctx.state.sandboxId, { agentId: ctx.state.agent }))).snapshots || [];
      }
    } catch (err) {
      if (err?.status !== 404) { clear(box, errorBox(err, 'Loading the timeline')); return; }
    }
    const local = ctx.localEvents();
    const events = [
      ...runs.map((r) => ({ t: r.started_at, kind: 'run', r })),
      ...snaps.map((s) => ({ t: s.created_at, kind: 'snap', s })),
      ...local.map((a) => ({ t: a.at, kind: a.type, a })),
    ].sort((a, b) => String(a.t).localeCompare(String(b.t))).slice(-48);
    if (!events.length) {
      clear(box, el('p', { class: 'empty' }, `Nothing yet for ${ctx.state.agent}: runs, snapshots and rollbacks appear here as they happen.`));
      return;
    }
    const X0 = 18; const DX = 26; const Y = { snap: 24, run: 62, act: 100 };
    const width = X0 + events.length * DX + 20;
    const pos = new Map();
    events.forEach((e, i) => { e.x = X0 + i * DX; if (e.kind === 'snap') pos.set(e.s.id, e.x); });
    const g = svg('svg', { width, height: 124, viewBox: `0 0 ${width} 124`, role: 'img', class: 'tl',
      'aria-label': `Timeline: ${runs.length} runs, ${snaps.length} snapshots, ${runs.filter((r) => r.rolled_back).length + local.filter((a) => a.type === 'rollback').length} rollbacks` });
    const lanes = [['snapshots', Y.snap], ['runs', Y.run], ['your actions', Y.act]];
    for (const [, y] of lanes) g.append(svg('line', { x1: 4, x2: width - 8, y1: y, y2: y, class: 'lane' }));
    // The lane names stay in view while the timeline scrolls sideways.
    const labels = el('div', { class: 'tl-labels', 'aria-hidden': 'true' }, lanes.map(([name, y]) => {
      const span = el('span', {}, name);
      span.style.top = `${y - 9}px`; // CSSOM, not a style attribute: the CSP allows no inline styles
      return span;
    }));
    const arc = (x1, y1, x2, y2, cls, label) => {
      const top = Math.min(y1, y2) - 18;
      g.append(svg('path', { d: `M ${x1} ${y1} C ${x1} ${top}, ${x2} ${top}, ${x2} ${y2}`, class: cls, 'data-kind': cls }, title(label)));
    };
    for (const e of events) {
      if (e.kind === 'run') {
        const r = e.r;
        const pre = pos.get(r.pre_snapshot_id);
        if (pre !== undefined) g.append(svg('line', { x1: pre, y1: Y.snap + 6, x2: e.x, y2: Y.run - 7, class: 'lineage' }));
        const fail = pos.get(r.failure_snapshot_id);
        if (fail !== undefined) g.append(svg('line', { x1: e.x, y1: Y.run - 7, x2: fail, y2: Y.snap + 6, class: 'lineage failure' }));
        if (r.rolled_back) {
          const to = pos.get(r.restored_snapshot_id);
          if (to !== undefined) arc(e.x + 3, Y.run - 6, to, Y.snap - 7, 'rollback-arc', `run ${r.id} failed: rolled back to ${r.restored_snapshot_id}`);
        }
        g.append(svg('circle', { cx: e.x, cy: Y.run, r: 7, class: `dot v-${r.verdict || 'running'}`, 'data-run': r.id },
          title(`${fmtTime(r.started_at)} · run ${r.id} · ${r.language} · ${r.verdict || r.status}${r.rolled_back ? ' · rolled back' : ''}`)));
      } else if (e.kind === 'snap') {
        const s = e.s;
        g.append(svg('rect', { x: e.x - 6, y: Y.snap - 6, width: 12, height: 12, rx: 2, class: `sq k-${s.kind}`, 'data-snapshot': s.id },
          title(`${fmtTime(s.created_at)} · snapshot ${s.name ? `${s.name} ` : ''}${s.id} · ${s.kind} · ${fmtBytes(s.size_bytes)}`)));
      } else if (e.kind === 'rollback') {
        const to = pos.get(e.a.snapshot_id);
        if (to !== undefined) arc(e.x, Y.act - 7, to, Y.snap + 7, 'rollback-arc manual', `you rolled ${e.a.sandbox_id} back to ${e.a.snapshot_id}`);
        g.append(svg('path', { d: `M ${e.x - 7} ${Y.act} L ${e.x} ${Y.act - 7} L ${e.x + 7} ${Y.act} L ${e.x} ${Y.act + 7} Z`, class: 'act rollback' },
          title(`${fmtTime(e.a.at)} · rolled back to ${e.a.snapshot_id}`)));
      } else if (e.kind === 'fork') {
        const from = pos.get(e.a.snapshot_id);
        if (from !== undefined) g.append(svg('line', { x1: from, y1: Y.snap + 6, x2: e.x, y2: Y.act - 7, class: 'lineage fork' }));
        g.append(svg('path', { d: `M ${e.x - 7} ${Y.act + 6} L ${e.x} ${Y.act - 7} L ${e.x + 7} ${Y.act + 6} Z`, class: 'act fork' },
          title(`${fmtTime(e.a.at)} · forked ${e.a.snapshot_id} into ${e.a.sandbox_id}`)));
      }
    }
    const legend = el('p', { class: 'legend' },
      el('span', { class: 'lg dot-ok' }, 'run ok'), el('span', { class: 'lg dot-fail' }, 'run failed'), el('span', { class: 'lg dot-limit' }, 'time/output limit'), el('span', { class: 'lg dot-blocked' }, 'blocked'), el('span', { class: 'lg dot-canceled' }, 'canceled'),
      el('span', { class: 'lg sq-pre' }, 'pre-run snapshot'), el('span', { class: 'lg sq-failure' }, 'failure snapshot'), el('span', { class: 'lg sq-manual' }, 'named snapshot'),
      el('span', { class: 'lg arc' }, 'rollback'), el('span', { class: 'lg act' }, 'your rollback / fork'));
    clear(box, el('div', { class: 'tl-wrap' }, labels, el('div', { class: 'tl-scroll', tabindex: 0, 'aria-label': 'Timeline, scrolls sideways' }, g)), legend,
      local.length ? null : el('p', { class: 'hint' }, 'Rollbacks and forks you make from this tab are drawn in the bottom lane.'));
    box.querySelector('.tl-scroll').scrollLeft = width;
  }

  function refresh() {
    cursors = [undefined];
    load(0);
    timeline();
  }

  for (const id of ['hist-failures', 'hist-lang', 'hist-since', 'hist-until', 'hist-size']) $(id).addEventListener('change', () => { cursors = [undefined]; load(0); });
  $('hist-filters').addEventListener('submit', (e) => e.preventDefault());
  $('hist-refresh').addEventListener('click', () => refresh());
  $('hist-newer').addEventListener('click', () => load(Math.max(0, page - 1)));
  $('hist-older').addEventListener('click', () => load(page + 1));
  ctx.onShow.history = refresh;
}
