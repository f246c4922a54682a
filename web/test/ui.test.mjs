// The web page in a real browser (Debian's chromium, driven by playwright-core) against
// the real daemon: every scenario end to end through the page, live output before the
// result, rollback, history, snapshots (roll back, fork, delete), an LLM reply, the
// API key prompt, no console errors, and screenshots at 1280×800 and 390 px wide in a
// temporary folder (its path is printed; $VMEXEC_WEB_SHOTS picks another).
//
// The tests share one daemon, one browser tab and one agent, in order: the history and
// sandbox tests look at what the scenario tests did, as a person trying vmexec would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { missing, startDaemon, CHROMIUM } from './daemon.mjs';

const why = missing();
const skip = why || false;
const T = { timeout: 240_000 };

let chromium;
let daemon;
let browser;
let page;
let shots;
const agent = `ui-${Math.random().toString(16).slice(2, 10)}`;
const consoleErrors = [];

function watchConsole(p, into) {
  p.on('console', (m) => { if (m.type() === 'error') into.push(m.text()); });
  p.on('pageerror', (e) => into.push(`pageerror: ${e.message}`));
}

before(async () => {
  if (why) return;
  ({ chromium } = await import('playwright-core'));
  daemon = await startDaemon();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  watchConsole(page, consoleErrors);
  shots = process.env.VMEXEC_WEB_SHOTS || mkdtempSync(join(tmpdir(), 'vmexec-web-shots-'));
  mkdirSync(shots, { recursive: true });
  console.log(`# screenshots: ${shots}`);
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
});

const api = async (path, init) => {
  const r = await fetch(daemon.url + path, init);
  return { status: r.status, body: r.headers.get('content-type')?.includes('json') ? await r.json() : await r.text() };
};
const lastRun = async () => (await api(`/v1/history?agent_id=${agent}&limit=1`)).body.runs[0];

async function tab(name) {
  await page.click(`#tabbtn-${name}`);
  await page.waitForSelector(`#tab-${name}:not([hidden])`);
}

async function scenario(id) {
  await tab('run');
  await page.click(`#scenario-${id}`);
  await page.waitForSelector(`#story[data-done="${id}"]`, { timeout: 180_000 });
  return page.textContent('#story');
}

async function verdict() {
  return page.getAttribute('#result .result-card', 'data-verdict');
}

/** runInEditor types code into the editor and runs it with Ctrl+Enter; resolves with the result card's verdict. */
async function runInEditor(language, code) {
  await tab('run');
  await page.selectOption('#language', language);
  await page.fill('#code', code);
  await page.waitForSelector('#run:not([disabled])');
  await page.focus('#code');
  await page.keyboard.press('Control+Enter'); // runCode clears the result and disables Run at once
  await page.waitForFunction(() => !document.querySelector('#run').disabled && document.querySelector('#result .result-card, #result .error'), null, { timeout: 120_000 });
  return verdict();
}

test('the page loads with every section, the five languages, the scenarios, and labelled controls', { skip, ...T }, async () => {
  await page.goto(`${daemon.url}/`);
  await page.waitForSelector('#health.ok');
  assert.deepEqual(await page.$$eval('#language option', (os) => os.map((o) => o.value)), ['python', 'javascript', 'bash', 'rust', 'go']);
  assert.equal(await page.locator('#scenario-list button').count(), 7);
  // No error banner and no key bar when nothing is wrong and no key is set.
  assert.equal(await page.isVisible('#banner'), false);
  assert.equal(await page.isVisible('#keybar'), false);
  const unlabelled = await page.$$eval('input, select, textarea, button', (els) => els
    .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || (e.tagName === 'BUTTON' && e.textContent.trim())))
    .map((e) => e.id || e.outerHTML.slice(0, 60)));
  assert.deepEqual(unlabelled, []);
  await page.fill('#agent', agent);
  await page.press('#agent', 'Enter');
  assert.match(await page.textContent('#sandbox-brief'), /no sandbox yet/);
  await tab('history');
  await page.waitForSelector('#hist-list .empty');
  assert.match(await page.textContent('#hist-list'), /No runs yet .* Run code on the Run tab/);
  await tab('sandbox');
  assert.match(await page.textContent('#sandbox-card'), /has no sandbox yet.*first run/);
});

test('a run streams its output before its result, stdout apart from stderr; Tab indents and Ctrl+Enter runs', { skip, ...T }, async () => {
  await tab('run');
  await page.selectOption('#language', 'bash');
  await page.fill('#code', '');
  await page.focus('#code');
  await page.keyboard.press('Tab');
  await page.keyboard.insertText('x');
  assert.equal(await page.inputValue('#code'), '    x');
  await page.keyboard.press('Shift+Tab');
  assert.equal(await page.inputValue('#code'), 'x');
  await page.fill('#code', 'echo line 1\nsleep 1\necho to stderr >&2\necho line 2\nsleep 1\necho line 3\n');
  await page.evaluate(() => {
    window.__outputBeforeResult = null;
    const out = document.getElementById('output');
    new MutationObserver(() => {
      if (window.__outputBeforeResult === null && out.textContent.includes('line 1')) {
        window.__outputBeforeResult = !document.querySelector('#result .result-card');
      }
    }).observe(out, { childList: true, subtree: true, characterData: true });
  });
  await page.focus('#code');
  await page.keyboard.press('Control+Enter');
  // The first line is on the page while the program still sleeps: no result yet.
  await page.waitForFunction(() => document.getElementById('output').textContent.includes('line 1') && !document.querySelector('#result .result-card'));
  await page.waitForSelector('#result .result-card', { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.__outputBeforeResult), true);
  assert.equal(await verdict(), 'ok');
  assert.match(await page.$$eval('#output .stdout', (s) => s.map((x) => x.textContent).join('')), /line 1\nline 2\nline 3/);
  assert.equal(await page.$$eval('#output .stderr', (s) => s.map((x) => x.textContent).join('')), 'to stderr\n');
  const card = await page.textContent('#result .result-card');
  assert.match(card, /Exit code\s*0/);
  assert.match(card, /Pre-run snapshot: snap-[0-9a-f]{16}/);
  assert.match(card, /Rolled back: no — the run succeeded/);
  assert.match(await page.textContent('#sandbox-brief'), /running · gvisor · 1 run/);
});

test('scenario: success', { skip, ...T }, async () => {
  const story = await scenario('success');
  assert.equal(await verdict(), 'ok');
  assert.match(await page.textContent('#output'), /10! = 3628800/);
  assert.match(story, /Verdict ok, exit code 0/);
});

test('scenario: failure with automatic rollback: the file the failed run deleted is back', { skip, ...T }, async () => {
  const story = await scenario('rollback');
  assert.match(story, /Before: data.txt holds "precious data"/);
  assert.match(story, /Step 2 deleted data.txt and exited 1: verdict nonzero_exit. The run failed \(nonzero_exit\), so vmexec restored the pre-run snapshot snap-/);
  assert.match(story, /After: data.txt holds "precious data" again/);
  assert.deepEqual(await page.$$eval('#story .before-after pre', (ps) => ps.map((p) => p.textContent)), ['precious data\n', 'precious data\n']);
  assert.equal(await verdict(), 'nonzero_exit');
  assert.equal(await page.getAttribute('#result .result-card', 'data-rolled-back'), 'true');
  assert.match(await page.textContent('#output .stdout'), /deleted data.txt/);
  assert.match(await page.textContent('#output .stderr'), /something went wrong/);
  // Checked without the page too: the files API has the file.
  const run = await lastRun();
  assert.equal(run.rolled_back, true);
  const file = await api(`/v1/sandboxes/${run.sandbox_id}/files?path=data.txt`);
  assert.equal(file.body, 'precious data\n');
});

test('scenario: security block shows the rule and its reason', { skip, ...T }, async () => {
  const story = await scenario('blocked');
  assert.equal(await verdict(), 'blocked');
  assert.match(story, /refused the code before it ran: rule destroy_root/);
  assert.match(story, /Reason given to the agent: \S+/);
  assert.match(await page.textContent('#result .result-card'), /Blocked by\s*destroy_root/);
});

test('scenario: multi-turn state: turn 2 reads what turn 1 wrote', { skip, ...T }, async () => {
  const story = await scenario('multiturn');
  assert.match(story, /Turn 1 wrote state.json \(verdict ok\)/);
  assert.match(story, /Turn 2 read it back: "turn 2 read \['remember me'\] from turn 1"/);
});

test('scenario: timeout: the output before the limit streams, then verdict timeout and rollback', { skip, ...T }, async () => {
  await tab('run');
  await page.click('#scenario-timeout');
  await page.waitForFunction(() => document.getElementById('output').textContent.includes('working...') && !document.querySelector('#result .result-card'));
  await page.waitForSelector('#story[data-done="timeout"]', { timeout: 60_000 });
  assert.equal(await verdict(), 'timeout');
  assert.equal(await page.getAttribute('#result .result-card', 'data-rolled-back'), 'true');
  assert.doesNotMatch(await page.textContent('#output'), /never printed/);
});

test('scenario: output flood: stopped at the output limit', { skip, ...T }, async () => {
  const story = await scenario('flood');
  assert.equal(await verdict(), 'output_limit');
  assert.match(story, /verdict output_limit, output cut: yes/);
  assert.match(await page.textContent('#output'), /flood flood/);
});

test('scenario: custom code puts the editor in your hands', { skip, ...T }, async () => {
  const story = await scenario('custom');
  assert.match(story, /Write or paste code in the editor/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'code');
});

test('Cancel aborts the stream: the server cancels the run (verdict canceled) and rolls it back', { skip, ...T }, async () => {
  await tab('run');
  await page.selectOption('#language', 'bash');
  await page.fill('#code', 'echo started\nsleep 60\n');
  await page.click('#run');
  await page.waitForFunction(() => document.getElementById('output').textContent.includes('started'));
  await page.click('#cancel');
  await page.waitForSelector('#result .result-card', { timeout: 60_000 });
  assert.equal(await verdict(), 'canceled');
  assert.equal(await page.getAttribute('#result .result-card', 'data-rolled-back'), 'true');
  assert.match(await page.textContent('#run-status'), /canceled from the page and rolled back/);
});

test('a request the server refuses is said in words a person can act on', { skip, ...T }, async () => {
  await tab('run');
  await page.fill('#timeout', '9999');
  await page.selectOption('#language', 'python');
  await page.fill('#code', 'print(1)\n');
  await page.click('#run');
  await page.waitForSelector('#result .error');
  const text = await page.textContent('#result .error');
  assert.match(text, /The run was refused as invalid\. .*timeout.* — fix the field it names and try again\./);
  await page.fill('#timeout', '30');
  // The browser logs the 400 it was answered; that one is expected.
  const i = consoleErrors.findIndex((e) => /status of 400/.test(e));
  if (i >= 0) consoleErrors.splice(i, 1);
});

test('a daemon that went away is said in words, with what to do', { skip, ...T }, async () => {
  const d = await startDaemon();
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const p = await ctx.newPage();
    const errors = [];
    watchConsole(p, errors);
    await p.goto(`${d.url}/`);
    await p.waitForSelector('#health.ok');
    await d.stop();
    await p.fill('#code', 'print(1)\n');
    await p.click('#run');
    await p.waitForSelector('#result .error', { timeout: 60_000 });
    assert.match(await p.textContent('#result .error'), /Cannot reach the vmexec daemon\. Is `vmexec serve` still running at 127\.0\.0\.1:\d+\? Start it/);
    assert.deepEqual(errors.filter((e) => !/ERR_CONNECTION_REFUSED/.test(e)), []);
  } finally {
    await ctx.close();
    await d.stop();
  }
});

test('LLM reply: the blocks with language, detection and lines; run in order, stop at the failure', { skip, ...T }, async () => {
  await tab('reply');
  await page.click('#reply-sample');
  await page.waitForSelector('#reply-blocks .block >> nth=3');
  const blocks = await page.$$eval('#reply-blocks .block', (bs) => bs.map((b) => b.querySelector('header').textContent));
  assert.equal(blocks.length, 4);
  assert.match(blocks[0], /Block 1\s*python\s*labelled python.*lines 3–7/);
  assert.match(blocks[1], /Block 2\s*bash\s*language detected/);
  assert.match(blocks[2], /javascript/);
  await page.click('#reply-run');
  await page.waitForFunction(() => document.getElementById('reply-status').dataset.done, null, { timeout: 180_000 });
  const status = await page.$$eval('#reply-blocks .block', (bs) => bs.map((b) => b.dataset.status));
  assert.deepEqual(status, ['executed', 'executed', 'executed', 'skipped']);
  const outs = await page.$$eval('#reply-blocks .block pre.output', (ps) => ps.map((p) => p.textContent));
  assert.match(outs[0], /saved 8 numbers/);
  assert.match(outs[1], /sum: 31/);
  assert.match(outs[2], /expected 9 numbers, found 8/);
  const third = await page.textContent('#reply-blocks .block:nth-child(3) .block-result');
  assert.match(third, /nonzero_exit\s*exit 3/);
  assert.match(third, /rolled back to snap-/);
  assert.match(await page.textContent('#reply-status'), /Not every block succeeded: 3 executed, 1 failed, 1 skipped/);
});

test('LLM reply: Cancel stops the running block (canceled, rolled back) and the blocks after it', { skip, ...T }, async () => {
  await tab('reply');
  await page.fill('#reply-text', '```bash\necho first block\n```\n\n```bash\necho waiting; sleep 60\n```\n\n```bash\necho never\n```\n');
  await page.click('#reply-run');
  await page.waitForFunction(() => document.querySelector('#reply-blocks .block:nth-child(2) pre.output')?.textContent.includes('waiting'), null, { timeout: 60_000 });
  await page.click('#reply-cancel');
  await page.waitForFunction(() => /^Canceled/.test(document.getElementById('reply-status').textContent));
  assert.equal(await page.getAttribute('#reply-blocks .block:nth-child(1)', 'data-status'), 'executed');
  const end = Date.now() + 30_000;
  let run;
  while (Date.now() < end) {
    run = (await api(`/v1/history?agent_id=${agent}&limit=1`)).body.runs[0];
    if (run.code.includes('sleep 60') && run.status !== 'running') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(run.verdict, 'canceled');
  assert.equal(run.rolled_back, true);
  const runs = (await api(`/v1/history?agent_id=${agent}&limit=5`)).body.runs;
  assert.ok(!runs.some((r) => r.code.includes('echo never')), 'the block after the canceled one did not run');
});

test('sandbox and snapshots: status, a named snapshot, roll back to it and to the last success, fork, delete — each confirmed', { skip, ...T }, async () => {
  await tab('sandbox');
  await page.waitForSelector('#sandbox-card .sbcard');
  const card = await page.textContent('#sandbox-card');
  assert.match(card, /Statusrunning/);
  assert.match(card, /Backendgvisor/);
  assert.match(card, /Memory512 MB/);
  assert.match(card, /Snapshots\d+ · \d/);
  await page.waitForSelector('#snap-list tr[data-snapshot]');
  assert.match(await page.textContent('#snap-list'), /pre_run.*ex-[0-9a-f]+/s);

  await page.fill('#snap-name', 'checkpoint');
  await page.click('#snap-create');
  await page.waitForSelector('#snap-list tr[data-kind="manual"]:has-text("checkpoint")');
  assert.match(await page.textContent('#snap-summary'), /Snapshot: took checkpoint/);

  assert.equal(await runInEditor('bash', 'echo later > after.txt\n'), 'ok');
  const sb = (await lastRun()).sandbox_id;
  await tab('sandbox');
  await page.waitForSelector('#sandbox-files li[data-name="after.txt"]');

  // Roll back: asked first; Cancel leaves the sandbox as it is.
  const rollbackBtn = 'tr:has-text("checkpoint") button.rollback';
  await page.click(rollbackBtn);
  await page.waitForSelector('#confirm-dialog[open]');
  assert.match(await page.textContent('#confirm-text'), /gets the files, memory and processes of checkpoint/);
  await page.click('#confirm-no');
  assert.equal((await api(`/v1/sandboxes/${sb}/files?path=after.txt`)).status, 200);
  await page.click(rollbackBtn);
  await page.click('#confirm-yes');
  await page.waitForFunction(() => /Roll back: sandbox .* rolled back to snapshot/.test(document.getElementById('snap-summary').textContent));
  await page.waitForFunction(() => !document.querySelector('#sandbox-files li[data-name="after.txt"]') && document.querySelector('#sandbox-files li[data-name="data.txt"]'));
  assert.equal((await api(`/v1/sandboxes/${sb}/files?path=after.txt`)).status, 404);

  await page.click('#rollback-last');
  await page.click('#confirm-yes');
  await page.waitForFunction(() => /^Roll back to last success: /.test(document.getElementById('snap-summary').textContent));
  assert.match(await page.textContent('#snap-summary'), /Roll back to last success: sandbox .*(rolled back|already in the state)/);

  // Delete a pre-run snapshot: asked first.
  const victim = await page.getAttribute('#snap-list tr[data-kind="pre_run"] >> nth=-1', 'data-snapshot');
  await page.click(`tr[data-snapshot="${victim}"] button.delete`);
  assert.match(await page.textContent('#confirm-text'), /removed for good/);
  await page.click('#confirm-yes');
  await page.waitForSelector(`tr[data-snapshot="${victim}"]`, { state: 'detached' });
  assert.equal((await api(`/v1/snapshots/${victim}`)).status, 404);

  // Fork the checkpoint: a new sandbox with its state, which the page then uses.
  await page.click('tr:has-text("checkpoint") button.fork');
  await page.waitForFunction(() => /^Fork: new sandbox sb-/.test(document.getElementById('snap-summary').textContent));
  const fork = (await page.textContent('#snap-summary')).match(/new sandbox (sb-[0-9a-f]+)/)[1];
  await page.waitForFunction((id) => document.getElementById('sandbox-pick').value === id, fork);
  assert.notEqual(fork, sb);
  assert.equal(await runInEditor('bash', 'cat data.txt; test ! -e after.txt && echo "no after.txt"\n'), 'ok');
  assert.match(await page.textContent('#result .result-card'), new RegExp(`Sandbox\\s*${fork}`));
  assert.match(await page.textContent('#output'), /precious data\nno after.txt/);
  // Delete the fork (asked first): the page goes back to the agent's own sandbox.
  await tab('sandbox');
  await page.waitForSelector(`#sandbox-card .sbcard[data-sandbox="${fork}"]`);
  await page.click('#sandbox-delete');
  assert.match(await page.textContent('#confirm-text'), new RegExp(`Sandbox ${fork} stops and its files, processes and \\d+ snapshots? are deleted`));
  await page.click('#confirm-yes');
  await page.waitForFunction((id) => document.getElementById('snap-summary').textContent.includes(`sandbox ${id} deleted`), fork);
  await page.waitForSelector(`#sandbox-card .sbcard[data-sandbox="${sb}"]`);
  assert.equal(await page.inputValue('#sandbox-pick'), '');
  assert.equal((await api(`/v1/sandboxes/${fork}`)).status, 404);
});

test('history: filters, paging, a row opens to code, output and snapshots, re-run; the timeline shows rollbacks', { skip, ...T }, async () => {
  await tab('history');
  await page.waitForSelector('#hist-list details.run');
  assert.match(await page.textContent('#hist-status'), new RegExp(`^\\d+ runs of ${agent}\\.`));

  await page.check('#hist-failures');
  await page.waitForFunction(() => /failed run/.test(document.getElementById('hist-status').textContent));
  const verdicts = await page.$$eval('#hist-list details.run', (ds) => ds.map((d) => d.dataset.verdict));
  assert.ok(verdicts.length >= 4 && verdicts.every((v) => v !== 'ok'), `failures only: ${verdicts}`);
  await page.uncheck('#hist-failures');

  await page.selectOption('#hist-lang', 'bash');
  await page.waitForFunction(() => /the bash ones/.test(document.getElementById('hist-status').textContent));
  const langs = await page.$$eval('#hist-list details.run .lang', (ls) => ls.map((l) => l.textContent));
  assert.ok(langs.length > 0 && langs.every((l) => l === 'bash'), `bash only: ${langs}`);
  await page.selectOption('#hist-lang', '');

  await page.fill('#hist-since', '2099-01-01T00:00:00');
  await page.dispatchEvent('#hist-since', 'change');
  await page.waitForSelector('#hist-list .empty');
  assert.match(await page.textContent('#hist-list'), /No run matches these filters/);
  await page.fill('#hist-since', '');
  await page.dispatchEvent('#hist-since', 'change');

  await page.selectOption('#hist-size', '10');
  await page.waitForFunction(() => document.querySelectorAll('#hist-list details.run').length === 10 && !document.getElementById('hist-older').disabled);
  const first = await page.$$eval('#hist-list details.run', (ds) => ds.map((d) => d.dataset.run));
  await page.click('#hist-older');
  await page.waitForFunction(() => document.getElementById('hist-page').textContent === 'page 2');
  const second = await page.$$eval('#hist-list details.run', (ds) => ds.map((d) => d.dataset.run));
  assert.ok(second.length > 0 && second.every((id) => !first.includes(id)), 'page 2 repeats no run of page 1');
  await page.click('#hist-newer');
  await page.waitForFunction(() => document.getElementById('hist-page').textContent === 'page 1');
  await page.selectOption('#hist-size', '50');
  await page.waitForFunction(() => document.querySelectorAll('#hist-list details.run').length > 10);

  // The rollback scenario's failed run: code, output, verdict and its snapshots.
  const row = page.locator('#hist-list details.run[data-verdict="nonzero_exit"]:has(.tag.rolled)', { hasText: 'import os' }).last();
  await row.locator('summary').click();
  await row.locator('.run-snaps ul').waitFor();
  const detail = await row.textContent();
  assert.match(detail, /os\.remove\("data\.txt"\)/);
  assert.match(detail, /deleted data\.txt/);
  assert.match(detail, /something went wrong after deleting it/);
  assert.match(detail, /pre-run: snap-[0-9a-f]{16} — pre_run/);
  assert.match(detail, /failure: snap-[0-9a-f]{16} — failure/);
  assert.match(detail, /Rolled back: yes/);
  await row.locator('button.rerun').click();
  await page.waitForSelector('#tab-run:not([hidden])');
  await page.waitForFunction(() => /Re-run of ex-/.test(document.getElementById('run-status').textContent) && document.querySelector('#result .result-card'), null, { timeout: 60_000 });
  assert.equal(await verdict(), 'nonzero_exit');

  await tab('history');
  await page.waitForSelector('#timeline svg.tl');
  const tl = await page.evaluate(() => ({
    runs: document.querySelectorAll('#timeline circle.dot').length,
    snaps: document.querySelectorAll('#timeline rect.sq').length,
    auto: document.querySelectorAll('#timeline path.rollback-arc:not(.manual)').length,
    manual: document.querySelectorAll('#timeline path.rollback-arc.manual').length,
    label: document.querySelector('#timeline svg').getAttribute('aria-label'),
  }));
  assert.ok(tl.runs >= 10 && tl.snaps >= 3 && tl.auto >= 2 && tl.manual >= 1, JSON.stringify(tl));
});

test('screenshots at 1280×800 and 390 px wide: nothing wider than the screen', { skip, ...T }, async () => {
  await scenario('rollback'); // the Run tab with a story to show
  for (const [w, h] of [[1280, 800], [390, 844]]) {
    await page.setViewportSize({ width: w, height: h });
    for (const t of ['run', 'reply', 'sandbox', 'history']) {
      await tab(t);
      if (t === 'sandbox') await page.waitForSelector('#snap-list tr[data-snapshot]');
      if (t === 'history') await page.waitForSelector('#timeline svg.tl');
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: join(shots, `${t}-${w}.png`), fullPage: w < 1000 });
      if (w < 1000) await page.screenshot({ path: join(shots, `${t}-${w}-screen.png`) }); // what a phone shows first
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(wide <= w, `${t} at ${w} px: the page is ${wide} px wide`);
      // Every snapshot action in reach, without scrolling the table sideways.
      const cut = await page.$$eval('.table-wrap', (ts) => ts.filter((x) => x.offsetParent && x.scrollWidth > x.clientWidth + 1).length);
      assert.equal(cut, 0, `${t} at ${w} px: a table is wider than its panel`);
    }
  }
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('keys: a daemon that answers 401 gets a key from the page, kept for this tab only', {
  skip: why || false,
  ...T,
}, async () => {
  const d = await startDaemon();
  const errors = [];
  try {
    const out = execFileSync(d.bin, ['keys', 'create', '--data-dir', d.dataDir, '--name', 'web-test', '--admin'], { encoding: 'utf8' });
    const key = out.match(/vmx_[0-9a-f]{40}/)?.[0];
    assert.ok(key, `keys create printed no key: ${out}`);
    const end = Date.now() + 30_000; // a running daemon picks a new key up within a second or two
    while ((await fetch(`${d.url}/v1/languages`)).status !== 401) {
      assert.ok(Date.now() < end, 'the daemon never asked for a key');
      await new Promise((r) => setTimeout(r, 100));
    }
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const p = await ctx.newPage();
    watchConsole(p, errors);
    await p.goto(`${d.url}/`);
    await p.waitForSelector('#key-dialog[open]');
    await p.fill('#key-input', `vmx_${'0'.repeat(40)}`);
    await p.click('#key-ok');
    await p.waitForFunction(() => document.getElementById('key-dialog').open && /refused/.test(document.getElementById('key-text').textContent));
    await p.fill('#key-input', key);
    await p.click('#key-ok');
    await p.waitForSelector('#health.ok');
    assert.equal(await p.evaluate(() => sessionStorage.getItem('vmexec.apiKey')), key);
    assert.equal(await p.evaluate(() => JSON.stringify(localStorage).includes('vmx_')), false);
    assert.equal(await p.isVisible('#keybar'), true);
    await p.fill('#code', 'print(6*7)\n');
    await p.click('#run');
    await p.waitForSelector('#result .result-card', { timeout: 120_000 });
    assert.equal(await p.getAttribute('#result .result-card', 'data-verdict'), 'ok');
    // Another tab has no key: it asks again.
    const other = await browser.newContext();
    const q = await other.newPage();
    await q.goto(`${d.url}/`);
    await q.waitForSelector('#key-dialog[open]');
    await other.close();
    await ctx.close();
    const unexpected = errors.filter((e) => !/status of 401/.test(e));
    assert.deepEqual(unexpected, []);
  } finally {
    await d.stop();
  }
});


test('no errors in the browser console', { skip }, () => {
  assert.deepEqual(consoleErrors, []);
});
