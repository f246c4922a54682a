// reply.js — the LLM reply tab: paste a reply, see its code blocks as the server's
// CommonMark parser finds them (language, detected or not, line range), run them in
// order with stop-on-failure, and see each block's output and result as it comes.
import { el, $, clear, verdictBadge, errorBox, fmtDuration } from './util.js';

const SAMPLE = `Sure — first I'll save the numbers, then sum them, then report.

\`\`\`python
nums = [3, 1, 4, 1, 5, 9, 2, 6]
open("nums.txt", "w").write("\\n".join(map(str, nums)))
print("saved", len(nums), "numbers")
\`\`\`

Now the sum, with a shell one-liner (no language on this fence: vmexec detects it):

\`\`\`
#!/bin/bash
awk '{ s += $1 } END { print "sum:", s }' nums.txt
\`\`\`

And a check in JavaScript that fails on purpose, so the last block is skipped:

\`\`\`javascript
const n = require("fs").readFileSync("nums.txt", "utf8").split("\\n").length;
console.log("count", n);
if (n !== 9) { console.error("expected 9 numbers, found " + n); process.exit(3); }
\`\`\`

\`\`\`python
print("this block is skipped after the failure above")
\`\`\`
`;

export function initReply(ctx) {
  const text = $('reply-text');
  const status = $('reply-status');
  const list = $('reply-blocks');
  let ctl = null;
  const cards = new Map(); // block index → {card, out, res}

  function blockCard(b, st) {
    const lang = b.language || '(unknown)';
    const out = el('pre', { class: 'output small' });
    const res = el('div', { class: 'block-result' }, st ? el('span', { class: `bstatus s-${st}` }, st) : null);
    const card = el('article', { class: 'block', dataset: { index: b.index, language: b.language } },
      el('header', {},
        el('strong', {}, `Block ${b.index + 1}`), ' ',
        el('span', { class: 'lang' }, lang),
        el('span', { class: b.detected ? 'tag detected' : 'tag' }, b.detected ? 'language detected' : (b.raw_language ? `labelled ${b.raw_language}` : 'no label')),
        b.known ? null : el('span', { class: 'tag warn' }, 'not a language vmexec runs'),
        el('span', { class: 'lines' }, `lines ${b.start_line}–${b.end_line}`),
        b.closed ? null : el('span', { class: 'tag warn' }, 'fence never closed')),
      el('details', {}, el('summary', {}, 'Code'), el('pre', { class: 'code-view' }, b.code)),
      out, res);
    cards.set(b.index, { card, out, res });
    return card;
  }

  function showBlockResult(br) {
    const c = cards.get(br.block.index) || (() => { list.append(blockCard(br.block)); return cards.get(br.block.index); })();
    const r = br.result;
    c.card.dataset.status = br.status;
    clear(c.res,
      el('span', { class: `bstatus s-${br.status}` }, br.status),
      r ? [' ', verdictBadge(r.verdict), ` exit ${r.exit_code} · ${fmtDuration(r.duration_ms)}`,
        r.rolled_back ? el('span', { class: 'tag rolled' }, `rolled back to ${r.restored_snapshot_id}`) : null,
        r.blocked_rule ? el('span', { class: 'reason' }, ` ${r.blocked_rule}: ${r.blocked_reason}`) : null] : null,
      br.reason && !r?.blocked_rule ? el('span', { class: 'reason' }, ` ${br.reason}`) : null);
    if (r && !c.out.textContent && (r.stdout || r.stderr)) {
      c.out.append(el('span', { class: 'stdout' }, r.stdout || ''), el('span', { class: 'stderr' }, r.stderr || ''));
    }
  }

  async function extract() {
    if (!text.value.trim()) {
      status.textContent = 'The reply is empty: paste one, or load the sample.';
      clear(list);
      return null;
    }
    status.textContent = 'Finding the code blocks…';
    try {
      const res = await ctx.api.call((c) => c.parseExecute({ agent_id: ctx.state.agent, text: text.value, execute: false }));
      cards.clear();
      clear(list, (res.blocks || []).map((br) => blockCard(br.block)));
      status.textContent = res.blocks?.length
        ? `${res.blocks.length} code block${res.blocks.length === 1 ? '' : 's'} found; “Run the blocks” runs them in this order.`
        : 'No code blocks found: a block is fenced with ``` (or ~~~) lines.';
      return res;
    } catch (err) {
      status.textContent = '';
      clear(list, errorBox(err, 'Reading the reply'));
      return null;
    }
  }

  async function run() {
    if (!text.value.trim()) { status.textContent = 'The reply is empty: paste one, or load the sample.'; return; }
    ctl = new AbortController();
    $('reply-run').disabled = true;
    $('reply-cancel').disabled = false;
    cards.clear();
    clear(list);
    status.textContent = `Running the blocks for ${ctx.state.agent}…`;
    const req = {
      agent_id: ctx.state.agent, text: text.value, stop_on_failure: $('reply-stop').checked,
      run_unlabeled: $('reply-unlabeled').checked, limits: ctx.formLimits(),
    };
    if (ctx.state.pick) req.sandbox_id = ctx.state.pick;
    const outFor = (i) => cards.get(i)?.out;
    // Output of a block comes before its block event: make its card from the first chunk.
    const write = (ev) => {
      if (ev.type !== 'stdout' && ev.type !== 'stderr') return;
      if (ev.blockIndex == null) return;
      if (!cards.has(ev.blockIndex)) list.append(blockCard({ index: ev.blockIndex, language: '', code: '', detected: false, known: true, closed: true, start_line: 0, end_line: 0 }, 'running'));
      outFor(ev.blockIndex).append(el('span', { class: ev.type }, ev.data));
    };
    try {
      const blocks = await extract(); // the cards, with their languages and lines, first
      if (!blocks) return;
      status.textContent = `Running ${blocks.blocks.length} block${blocks.blocks.length === 1 ? '' : 's'} in order…`;
      const res = await ctx.api.call((c) => c.parseExecuteStream(req, {
        signal: ctl.signal, onEvent: write, onBlock: showBlockResult,
      }).result());
      for (const br of res.blocks || []) showBlockResult(br);
      status.textContent = `${res.success ? 'Every block succeeded' : 'Not every block succeeded'}: ${res.executed} executed, ${res.failed} failed, ${res.skipped} skipped.`;
      status.dataset.done = res.success ? 'ok' : 'failed';
    } catch (err) {
      if (ctl.signal.aborted) status.textContent = 'Canceled: the server cancels the running block and rolls it back; the blocks after it do not run.';
      else { status.textContent = ''; list.prepend(errorBox(err, 'Running the reply')); }
    } finally {
      ctl = null;
      $('reply-run').disabled = false;
      $('reply-cancel').disabled = true;
      ctx.refreshSandboxes();
    }
  }

  $('reply-sample').addEventListener('click', () => { text.value = SAMPLE; extract(); });
  $('reply-extract').addEventListener('click', () => extract());
  $('reply-run').addEventListener('click', () => run());
  $('reply-cancel').addEventListener('click', () => ctl?.abort(new DOMException('canceled from the page', 'AbortError')));
}
