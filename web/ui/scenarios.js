// scenarios.js — the presets of the Run tab. Each runs real code through the page's
// run pipeline (live output, result card) and tells, step by step, what vmexec did.

/** Starting code for each language in the editor. */
export const TEMPLATES = {
  python: 'import platform\nprint("hello from python", platform.python_version())\n',
  javascript: 'console.log("hello from node", process.version);\n',
  bash: 'echo "hello from bash $BASH_VERSION"\nls -la\n',
  rust: 'fn main() {\n    println!("hello from rust");\n}\n',
  go: 'package main\n\nimport "fmt"\n\nfunc main() {\n    fmt.Println("hello from go")\n}\n',
};

const quote = (s) => JSON.stringify(String(s ?? '').trim());

async function readFile(ctx, sandboxId, path) {
  try {
    return { text: await ctx.api.call((c) => c.readText(sandboxId, path, { agentId: ctx.state.agent })) };
  } catch (err) {
    if (err?.status === 404) return { missing: true };
    throw err;
  }
}

function txnLine(r) {
  if (r.rolled_back) return `The run failed (${r.verdict}), so vmexec restored the pre-run snapshot ${r.restored_snapshot_id || r.pre_snapshot_id} and kept the failed state as ${r.failure_snapshot_id || 'no snapshot'}.`;
  if (r.verdict === 'ok') return `The run succeeded; its changes stay. Pre-run snapshot: ${r.pre_snapshot_id || 'none'}.`;
  return `The run ended ${r.verdict} and was not rolled back.`;
}

export const SCENARIOS = [
  {
    id: 'success',
    title: 'Success',
    blurb: 'A Python program that works: output streams, verdict ok, the state is kept.',
    async run(ctx, story) {
      const r = await ctx.runCode({ label: 'Success', language: 'python', code: 'import math, platform\nprint("10! =", math.factorial(10))\nprint("python", platform.python_version())\n' });
      story.step(`vmexec snapshotted the sandbox (${r.pre_snapshot_id || 'no snapshot'}), ran the program and streamed its output.`);
      story.step(`Verdict ${r.verdict}, exit code ${r.exit_code}, ${r.duration_ms} ms. ${txnLine(r)}`, r.verdict === 'ok' ? 'good' : 'bad');
    },
  },
  {
    id: 'rollback',
    title: 'Failure + rollback',
    blurb: 'A run deletes a file and then fails: vmexec rolls the sandbox back, and the file is there again.',
    async run(ctx, story) {
      const setup = await ctx.runCode({ label: 'Rollback, step 1', language: 'bash', code: 'echo "precious data" > data.txt\nls -l data.txt\n' });
      story.step(`Step 1 wrote data.txt (verdict ${setup.verdict}).`);
      const sb = setup.sandbox_id;
      const before = await readFile(ctx, sb, 'data.txt');
      story.step(`Before: data.txt holds ${before.missing ? '(missing)' : quote(before.text)} — read through the files API.`, 'state before');
      const bad = await ctx.runCode({ label: 'Rollback, step 2', language: 'python', code: 'import os\nos.remove("data.txt")\nprint("deleted data.txt")\nraise SystemExit("something went wrong after deleting it")\n' });
      story.step(`Step 2 deleted data.txt and exited ${bad.exit_code}: verdict ${bad.verdict}. ${txnLine(bad)}`, bad.rolled_back ? 'good' : 'bad');
      const after = await readFile(ctx, sb, 'data.txt');
      story.step(after.missing
        ? 'After: data.txt is missing — the rollback did not restore it.'
        : `After: data.txt holds ${quote(after.text)} again — the file the failed run deleted is back.`, `state after ${after.missing ? 'bad' : 'good'}`);
      story.compare('data.txt, read through the files API:', before.missing ? '(missing)' : before.text, after.missing ? '(missing)' : after.text, !after.missing && after.text === before.text);
    },
  },
  {
    id: 'blocked',
    title: 'Security block',
    blurb: 'Destructive code is refused before it runs, with the rule and a reason the agent can act on.',
    async run(ctx, story) {
      const r = await ctx.runCode({ label: 'Security block', language: 'bash', code: 'rm -rf / --no-preserve-root\n' });
      if (r.verdict === 'blocked') {
        story.step(`The policy refused the code before it ran: rule ${r.blocked_rule}.`, 'good');
        story.step(`Reason given to the agent: ${r.blocked_reason}`);
        story.step('Nothing ran, so there was nothing to roll back; the attempt is in the history.');
      } else {
        story.step(`The code was not blocked (verdict ${r.verdict}): is the policy disabled for this agent?`, 'bad');
      }
    },
  },
  {
    id: 'multiturn',
    title: 'Multi-turn state',
    blurb: 'Turn 1 writes a file and starts nothing else; turn 2, a separate run, reads it back.',
    async run(ctx, story) {
      const t1 = await ctx.runCode({ label: 'Turn 1', language: 'python', code: 'import json, time\nstate = {"turn": 1, "notes": ["remember me"], "at": time.time()}\njson.dump(state, open("state.json", "w"))\nprint("turn 1 wrote state.json")\n' });
      story.step(`Turn 1 wrote state.json (verdict ${t1.verdict}) in sandbox ${t1.sandbox_id}.`);
      const t2 = await ctx.runCode({ label: 'Turn 2', language: 'python', code: 'import json\nstate = json.load(open("state.json"))\nprint("turn 2 read", state["notes"], "from turn", state["turn"])\n' });
      story.step(t2.verdict === 'ok'
        ? `Turn 2 read it back: ${quote(t2.stdout)} — the sandbox kept its files between runs.`
        : `Turn 2 could not read it (verdict ${t2.verdict}).`, t2.verdict === 'ok' ? 'good' : 'bad');
    },
  },
  {
    id: 'timeout',
    title: 'Timeout',
    blurb: 'A program that would sleep 30 s under a 2 s limit: killed at the limit, then rolled back.',
    async run(ctx, story) {
      const r = await ctx.runCode({ label: 'Timeout', language: 'bash', code: 'echo "working..."\nsleep 30\necho "never printed"\n', limits: { timeout_ms: 2000 } });
      story.step(`The output written before the limit arrived live; at 2 s vmexec ended the run: verdict ${r.verdict} after ${r.duration_ms} ms.`, r.verdict === 'timeout' ? 'good' : 'bad');
      story.step(txnLine(r));
    },
  },
  {
    id: 'flood',
    title: 'Output flood',
    blurb: 'A program printing forever under a 64 KiB output limit: stopped at the limit, output cut.',
    async run(ctx, story) {
      const r = await ctx.runCode({ label: 'Output flood', language: 'python', code: 'import sys\nwhile True:\n    sys.stdout.write("flood " * 100 + "\\n")\n', limits: { timeout_ms: 20000, max_output_bytes: 65536 } });
      story.step(`vmexec stopped the program when its output passed 64 KiB: verdict ${r.verdict}, output cut: ${r.stdout_truncated ? 'yes' : 'no'}.`, r.verdict === 'output_limit' ? 'good' : 'bad');
      story.step(txnLine(r));
    },
  },
  {
    id: 'custom',
    title: 'Custom code',
    blurb: 'Your own program, in any of the five languages, with your limits.',
    async run(ctx, story) {
      const lang = document.getElementById('language').value;
      const code = document.getElementById('code');
      if (!code.value.trim()) code.value = TEMPLATES[lang];
      code.focus();
      story.step('Write or paste code in the editor, pick the language and limits, then press Run (or Ctrl/⌘+Enter). The result card shows the verdict and the transaction.');
    },
  },
];
