// app.js — the page's entry module. It owns the shared state (the agent, the sandbox
// the page looks at, the API client with the tab's key), the header, the tabs, the
// code editor and live runs; the other tabs are in reply.js, sandbox.js, history.js
// and get the same ctx. Everything goes through the project's JavaScript client,
// served by the daemon at /js/vmexec.js.
import { Client, LANGUAGES } from '/js/vmexec.js';
import { el, $, clear, fmtDuration, verdictBadge, VERDICTS, describeError, errorBox, randomId, sleep } from './util.js';
import { SCENARIOS, TEMPLATES } from './scenarios.js';
import { initReply } from './reply.js';
import { initSandbox } from './sandbox.js';
import { initHistory } from './history.js';

const KEY_STORE = 'vmexec.apiKey'; // sessionStorage: this tab only
const AGENT_STORE = 'vmexec.agent'; // localStorage: not a secret
const LANG_NAMES = { python: 'Python', javascript: 'JavaScript (Node)', bash: 'Bash', rust: 'Rust', go: 'Go' };
const MAX_SHOWN = 256 * 1024; // characters of output kept on the page per run

// ----- the API, with the tab's key

let keyPrompt = null;

const api = {
  client: null,
  make() {
    const key = sessionStorage.getItem(KEY_STORE);
    this.client = new Client({ baseUrl: location.origin, apiKey: key || null, maxRetries: 2 });
    $('keybar').hidden = !key;
  },
  /** call runs fn(client); a 401 asks for a key (once for concurrent calls) and retries. */
  async call(fn) {
    for (let refused = false; ; refused = true) {
      try {
        return await fn(this.client);
      } catch (err) {
        if (err?.status !== 401) throw err;
        const had = sessionStorage.getItem(KEY_STORE);
        if (!(await askKey(refused || had ? 'That key was refused (unknown, revoked or mistyped). Paste a valid key.' : null))) throw err;
        this.make();
      }
    }
  },
};

function askKey(problem) {
  if (keyPrompt) return keyPrompt;
  const dlg = $('key-dialog');
  $('key-text').textContent = problem
    || 'The daemon answered 401: every request needs an API key. Ask its operator for one (`vmexec keys create` prints it).';
  $('key-input').value = '';
  dlg.returnValue = '';
  keyPrompt = new Promise((resolve) => {
    dlg.addEventListener('close', () => {
      keyPrompt = null;
      const key = $('key-input').value.trim();
      if (dlg.returnValue === 'ok' && key) {
        sessionStorage.setItem(KEY_STORE, key);
        resolve(true);
      } else {
        resolve(false);
      }
    }, { once: true });
    dlg.showModal();
    $('key-input').focus();
  });
  return keyPrompt;
}

// ----- state

const state = {
  agent: '',
  pick: '', // '' = the agent's own sandbox; else a chosen sandbox id
  own: '', // the agent's own sandbox, as last seen
  sandboxes: [], // the agent's sandboxes
  running: null, // {ctl, uiRun}
  get sandboxId() { return this.pick || this.own; },
};

// Actions the API does not list (manual rollbacks, forks), remembered by this tab for
// the timeline.
function eventsKey() { return `vmexec.events.${state.agent}`; }
function localEvents() {
  try { return JSON.parse(sessionStorage.getItem(eventsKey()) || '[]'); } catch { return []; }
}
function recordEvent(ev) {
  const list = localEvents();
  list.push({ ...ev, at: new Date().toISOString() });
  sessionStorage.setItem(eventsKey(), JSON.stringify(list.slice(-200)));
}

// ----- banner

function banner(err, what) {
  const { title, detail } = describeError(err, what);
  $('banner-title').textContent = title;
  $('banner-detail').textContent = detail;
  $('banner').hidden = false;
}
function notice(title, detail = '') {
  $('banner-title').textContent = title;
  $('banner-detail').textContent = detail;
  $('banner').hidden = false;
}

// ----- tabs

const TABS = ['run', 'reply', 'sandbox', 'history'];
const onShow = {};

function showTab(name, { focus = false } = {}) {
  if (!TABS.includes(name)) name = 'run';
  for (const t of TABS) {
    const btn = $(`tabbtn-${t}`);
    btn.setAttribute('aria-selected', String(t === name));
    btn.tabIndex = t === name ? 0 : -1;
    $(`tab-${t}`).hidden = t !== name;
  }
  if (focus) $(`tabbtn-${name}`).focus();
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  onShow[name]?.();
}

function initTabs() {
  TABS.forEach((t, i) => {
    const btn = $(`tabbtn-${t}`);
    btn.addEventListener('click', () => showTab(t));
    btn.addEventListener('keydown', (e) => {
      const d = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
      if (d) showTab(TABS[(i + d + TABS.length) % TABS.length], { focus: true });
    });
  });
  window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));
}

// ----- header: health, agents, sandboxes

async function loadHealth() {
  try {
    const [h, b] = await Promise.all([api.call((c) => c.health()), api.call((c) => c.backends())]);
    const names = (b.backends || []).map((x) => x.name + (x.accel ? ` (${x.accel})` : '')).join(', ');
    $('health').textContent = `${h.status} · ${names || h.backend} · ${h.sandboxes} sandbox${h.sandboxes === 1 ? '' : 'es'}`;
    $('health').className = 'health ok';
  } catch (err) {
    $('health').textContent = 'unreachable';
    $('health').className = 'health bad';
    banner(err, 'Loading the daemon status');
  }
}

async function loadAgents() {
  const ids = new Set();
  try {
    const [sbs, runs] = await Promise.all([api.call((c) => c.listSandboxes()), api.call((c) => c.history({ limit: 100 }))]);
    for (const s of sbs || []) if (s.agent_id) ids.add(s.agent_id);
    for (const r of runs.runs || []) if (r.agent_id) ids.add(r.agent_id);
  } catch { /* the banner of loadHealth says why */ }
  clear($('agent-list'), [...ids].sort().map((id) => el('option', { value: id })));
}

/** refreshSandboxes reloads the agent's sandboxes into the picker and the brief. */
async function refreshSandboxes() {
  if (!state.agent) return;
  loadHealth();
  try {
    const all = await api.call((c) => c.listSandboxes());
    state.sandboxes = (all || []).filter((s) => s.agent_id === state.agent)
      .sort((a, b) => String(b.last_used_at).localeCompare(String(a.last_used_at)));
  } catch (err) {
    banner(err, 'Listing sandboxes');
    return;
  }
  if (state.own && !state.sandboxes.some((s) => s.id === state.own)) state.own = '';
  if (!state.own && state.sandboxes.length) state.own = state.sandboxes[0].id;
  if (state.pick && !state.sandboxes.some((s) => s.id === state.pick)) state.pick = '';
  const pick = $('sandbox-pick');
  clear(pick,
    el('option', { value: '' }, state.own ? `agent's own (${state.own})` : "agent's own (created on its first run)"),
    state.sandboxes.filter((s) => s.id !== state.own).map((s) => el('option', { value: s.id }, `${s.id}${s.name && s.name !== s.id ? ` · ${s.name}` : ''}`)));
  pick.value = state.pick;
  const cur = state.sandboxes.find((s) => s.id === state.sandboxId);
  $('sandbox-brief').textContent = cur
    ? `${cur.status} · ${cur.backend}${cur.accel ? `/${cur.accel}` : ''} · ${cur.runs} run${cur.runs === 1 ? '' : 's'} · ${cur.snapshots} snapshot${cur.snapshots === 1 ? '' : 's'}`
    : 'no sandbox yet: the first run creates one';
}

function setAgent(id) {
  id = String(id || '').trim();
  if (!id || id === state.agent) return;
  state.agent = id;
  state.pick = '';
  state.own = '';
  state.sandboxes = [];
  localStorage.setItem(AGENT_STORE, id);
  $('agent').value = id;
  refreshAll();
}

/** selectSandbox makes the page (and its runs) use sandbox id ('' = the agent's own). */
function selectSandbox(id) {
  state.pick = id === state.own ? '' : id;
  refreshAll();
}

function refreshAll() {
  refreshSandboxes().then(() => {
    for (const t of TABS) if (!$(`tab-${t}`).hidden) onShow[t]?.();
  });
}

function initHeader() {
  const agent = $('agent');
  agent.addEventListener('change', () => setAgent(agent.value));
  agent.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); setAgent(agent.value); } });
  $('new-agent').addEventListener('click', () => setAgent(randomId('agent-')));
  $('sandbox-pick').addEventListener('change', (e) => selectSandbox(e.target.value));
  $('banner-close').addEventListener('click', () => { $('banner').hidden = true; });
  $('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORE);
    api.make();
    notice('Key forgotten.', 'The next request that needs one will ask again.');
  });
}

// ----- the editor

function initEditor() {
  const sel = $('language');
  clear(sel, LANGUAGES.map((l) => el('option', { value: l }, LANG_NAMES[l] || l)));
  const code = $('code');
  sel.addEventListener('change', () => {
    const cur = code.value.trim();
    if (!cur || Object.values(TEMPLATES).some((t) => t.trim() === cur)) code.value = TEMPLATES[sel.value] || '';
  });
  sel.value = 'python';
  code.value = TEMPLATES.python;
  let escaped = false;
  code.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault();
      $('run-form').requestSubmit();
      return;
    }
    if (e.key === 'Escape') { escaped = true; return; }
    if (e.key !== 'Tab' || e.ctrlKey || e.altKey || e.metaKey) { escaped = false; return; }
    if (escaped) { escaped = false; return; } // Esc, Tab: leave the editor
    e.preventDefault();
    indent(code, e.shiftKey);
  });
  $('run-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (state.running) return;
    runCode({ language: sel.value, code: code.value, limits: formLimits() }).catch(() => {});
  });
  $('cancel').addEventListener('click', () => cancelRun());
}

const INDENT = '    ';

/** indent inserts an indent at the caret, or (un)indents every selected line. */
function indent(ta, out) {
  const { selectionStart: s, selectionEnd: e, value: v } = ta;
  if (!out && s === e) {
    ta.setRangeText(INDENT, s, e, 'end');
  } else {
    const ls = v.lastIndexOf('\n', s - 1) + 1;
    const le = e > s && v[e - 1] === '\n' ? e - 1 : e;
    const lines = v.slice(ls, le).split('\n');
    const done = lines.map((l) => (out ? l.replace(/^( {1,4}|\t)/, '') : INDENT + l));
    const text = done.join('\n');
    ta.setRangeText(text, ls, le, 'preserve');
    if (s === e) {
      const shift = done[0].length - lines[0].length;
      ta.selectionStart = ta.selectionEnd = Math.max(ls, s + shift);
    } else {
      ta.selectionStart = ls;
      ta.selectionEnd = ls + text.length;
    }
  }
  ta.dispatchEvent(new Event('input', { bubbles: true }));
}

function formLimits() {
  const t = Number($('timeout').value);
  const m = Number($('memory').value);
  const limits = {};
  if (Number.isFinite(t) && t > 0) limits.timeout_ms = Math.round(t * 1000);
  if (Number.isFinite(m) && m > 0) limits.memory_mb = Math.round(m);
  return limits;
}

// ----- live runs

function output() {
  const pre = $('output');
  let shown = 0;
  let cut = false;
  const add = (cls) => (chunk) => {
    if (cut) return;
    if (shown + chunk.length > MAX_SHOWN) {
      chunk = chunk.slice(0, MAX_SHOWN - shown);
      cut = true;
    }
    shown += chunk.length;
    const last = pre.lastElementChild;
    if (last && last.classList.contains(cls) && !last.classList.contains('note')) last.append(chunk);
    else pre.append(el('span', { class: cls }, chunk));
    if (cut) pre.append(el('span', { class: 'note' }, `\n[the page shows the first ${MAX_SHOWN / 1024} KiB of output]\n`));
    pre.scrollTop = pre.scrollHeight;
  };
  return { stdout: add('stdout'), stderr: add('stderr') };
}

function setRunning(on) {
  $('run').disabled = on;
  $('cancel').disabled = !on;
  for (const b of document.querySelectorAll('.scenario-list button')) b.disabled = on;
}

/**
 * runCode runs one program for the agent with live output on the Run tab and resolves
 * with its result (an ExecResult, or the history's Run when it was canceled), or
 * rejects with the error already shown.
 */
async function runCode({ language, code, limits = {}, label = '' }) {
  limits = { ...formLimits(), ...limits };
  if (!state.agent) setAgent(randomId('agent-'));
  if (state.running) throw new Error('a run is in progress');
  const ctl = new AbortController();
  const uiRun = randomId('ui-');
  state.running = { ctl, uiRun };
  setRunning(true);
  $('language').value = language;
  $('code').value = code;
  clear($('output'));
  clear($('result'));
  const status = $('run-status');
  status.textContent = `${label ? `${label}: ` : ''}running ${LANG_NAMES[language] || language} for ${state.agent}${state.pick ? ` in ${state.pick}` : ''}…`;
  status.className = 'status running';
  const out = output();
  // On a narrow screen the output is below the editor: bring it into view.
  if (window.matchMedia('(max-width: 760px)').matches) $('output-h').scrollIntoView({ block: 'start' });
  const req = { agent_id: state.agent, language, code, limits, metadata: { ui_run: uiRun } };
  if (state.pick) req.sandbox_id = state.pick;
  try {
    const res = await api.call((c) => c.execStream(req, { signal: ctl.signal, onStdout: out.stdout, onStderr: out.stderr }).result());
    if (!state.pick && res.sandbox_id) state.own = res.sandbox_id;
    showResult(res);
    status.textContent = `${label ? `${label}: ` : ''}${res.verdict} — the ${language} program ${VERDICTS[res.verdict] || res.verdict}.`;
    status.className = `status done v-${res.verdict}`;
    return res;
  } catch (err) {
    if (ctl.signal.aborted) {
      status.textContent = 'Canceled: the page closed the stream, so the server cancels the run and rolls it back. Waiting for its record…';
      const run = await canceledRun(uiRun);
      if (run) {
        showResult(run);
        status.textContent = `${run.verdict || run.status} — the run was canceled from the page and ${run.rolled_back ? 'rolled back' : 'not rolled back'}.`;
        status.className = `status done v-${run.verdict}`;
        return run;
      }
      status.textContent = 'Canceled. The run\'s record did not appear in the history within 30 s; look at the History tab.';
      throw err;
    }
    status.textContent = 'The run could not be served.';
    status.className = 'status done v-error';
    $('result').append(errorBox(err, 'The run'));
    throw err;
  } finally {
    state.running = null;
    setRunning(false);
    refreshSandboxes();
  }
}

function cancelRun() {
  state.running?.ctl.abort(new DOMException('canceled from the page', 'AbortError'));
}

// canceledRun finds the history record of the run the page canceled (by its metadata
// ui_run) once the server has closed it.
async function canceledRun(uiRun) {
  const end = Date.now() + 30000;
  while (Date.now() < end) {
    try {
      const page = await api.call((c) => c.history({ agent_id: state.agent, limit: 10 }));
      const run = (page.runs || []).find((r) => r.metadata?.ui_run === uiRun);
      if (run && run.status !== 'running') return { ...run, execution_id: run.id };
    } catch { /* retry until the deadline */ }
    await sleep(300);
  }
  return null;
}

/** resultCard renders an ExecResult (or a history Run) with its transaction. */
function resultCard(r) {
  const id = r.execution_id || r.id;
  const rows = [
    ['Verdict', el('span', {}, verdictBadge(r.verdict), ' ', VERDICTS[r.verdict] || r.status || '')],
    ['Exit code', String(r.exit_code)],
    ['Duration', fmtDuration(r.duration_ms)],
    ['Run', el('code', {}, id || '—')],
    ['Sandbox', el('code', {}, r.sandbox_id || '—')],
  ];
  if (r.signal) rows.push(['Signal', r.signal]);
  if (r.blocked_rule || r.verdict === 'blocked') {
    rows.push(['Blocked by', el('span', {}, el('code', { class: 'rule' }, r.blocked_rule || '?'), ' ', el('span', { class: 'reason' }, r.blocked_reason || ''))]);
  }
  const txn = el('ul', { class: 'txn' },
    el('li', {}, 'Pre-run snapshot: ', r.pre_snapshot_id ? el('code', {}, r.pre_snapshot_id) : 'none (snapshots before runs are off, or the policy refused the code first)'),
    el('li', { class: r.rolled_back ? 'rolled' : '' }, 'Rolled back: ',
      r.rolled_back
        ? el('strong', {}, `yes — the sandbox was restored to ${r.restored_snapshot_id || r.pre_snapshot_id || 'its pre-run snapshot'}, as if the run never happened`)
        : (r.verdict === 'ok' ? 'no — the run succeeded, its changes are kept' : 'no')),
    el('li', {}, 'Failure snapshot: ', r.failure_snapshot_id ? el('span', {}, el('code', {}, r.failure_snapshot_id), ' (the state the failed run left, kept for inspection)') : 'none'));
  const notes = [];
  if (r.stdout_truncated || r.stderr_truncated) notes.push('Output was cut at the run\'s output limit.');
  if (r.sandbox_recreated) notes.push('The sandbox was recreated for this run (the previous one had died).');
  if (r.sandbox_lost) notes.push('The sandbox was lost during the run; the next run starts a fresh one.');
  for (const w of r.warnings || []) notes.push(w);
  if (r.redactions?.length) notes.push(`Secrets redacted from the output: ${r.redactions.join(', ')}.`);
  if (r.error) notes.push(r.error);
  return el('div', { class: 'result-card', dataset: { verdict: r.verdict || '', rolledBack: String(!!r.rolled_back) } },
    el('dl', {}, rows.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
    el('h3', {}, 'Transaction'), txn,
    notes.length ? el('ul', { class: 'notes' }, notes.map((n) => el('li', {}, n))) : null);
}

function showResult(r) {
  clear($('result'), resultCard(r));
}

// ----- scenarios

const story = {
  start(title) {
    $('story').hidden = false;
    clear($('story-steps'));
    $('story').querySelector('h3').textContent = `What vmexec did: ${title}`;
  },
  step(text, cls = '') {
    const li = el('li', { class: cls }, text);
    $('story-steps').append(li);
    return li;
  },
  /** compare shows a state before and after side by side. */
  compare(title, before, after, ok) {
    $('story-steps').append(el('li', { class: `compare ${ok ? 'good' : 'bad'}` }, title,
      el('div', { class: 'before-after' },
        el('div', { class: 'state-box' }, el('h4', {}, 'Before the failed run'), el('pre', {}, before)),
        el('div', { class: 'state-box' }, el('h4', {}, 'After vmexec rolled it back'), el('pre', {}, after)))));
  },
};

function initScenarios(ctx) {
  const list = $('scenario-list');
  for (const sc of SCENARIOS) {
    const btn = el('button', { type: 'button', class: 'scenario', id: `scenario-${sc.id}`, 'aria-describedby': `scenario-${sc.id}-d` },
      el('strong', {}, sc.title));
    btn.addEventListener('click', async () => {
      if (state.running) return;
      story.start(sc.title);
      $('story').dataset.done = '';
      try {
        await sc.run(ctx, story);
      } catch (err) {
        const d = describeError(err, 'The scenario');
        story.step(`Stopped: ${d.title} ${d.detail}`, 'bad');
      } finally {
        $('story').dataset.done = sc.id; // the scenario has finished (tests wait for it)
      }
    });
    list.append(el('div', { class: 'scenario-item' }, btn, el('p', { id: `scenario-${sc.id}-d`, class: 'hint' }, sc.blurb)));
  }
}

// ----- start

function main() {
  api.make();
  const ctx = {
    api, state, runCode, showResult, resultCard, refreshSandboxes, selectSandbox, setAgent, showTab, banner, notice,
    recordEvent, localEvents, formLimits, onShow, story,
    get running() { return !!state.running; },
    editor: { set(language, code) { $('language').value = language; $('code').value = code; } },
  };
  initTabs();
  initHeader();
  initEditor();
  initScenarios(ctx);
  initReply(ctx);
  initSandbox(ctx);
  initHistory(ctx);
  const saved = localStorage.getItem(AGENT_STORE);
  setAgent(new URLSearchParams(location.search).get('agent') || saved || 'demo');
  showTab(location.hash.slice(1) || 'run');
  loadHealth();
  loadAgents();
}

main();

