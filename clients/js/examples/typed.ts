// A typed use of every surface of vmexec.js; `tsc --noEmit -p test/tsconfig.json`
// checks it against index.d.ts (test/types.test.mjs runs that).
import VmExecutionClientDefault, {
  ApiClient, Client, ConnectionError, VmExecutionClient, VmexecError, extractCodeBlocks, withVmMethods,
  type CellOutput, type CellResult, type Context, type ExecResult, type Progress, type StreamEvent,
} from 'vmexec';

async function lowLevel(): Promise<void> {
  const vx = new Client({ baseUrl: 'http://127.0.0.1:8080', apiKey: 'k', maxRetries: 2 });
  const r: ExecResult = await vx.exec({ agent_id: 'demo', language: 'python', code: 'print(1)', metadata: { n: 1, ok: null } });
  const verdict: string = r.verdict;
  const stream = vx.execStream({ agent_id: 'demo', language: 'bash', code: 'echo hi' }, { onStdout: (s: string) => void s });
  for await (const ev of stream) {
    const e: StreamEvent = ev;
    if (e.type === 'stdout') console.log(e.data.toUpperCase());
    if (e.type === 'result') console.log(e.result.exit_code);
  }
  const done: ExecResult = await vx.exec({ language: 'python', code: 'print(2)' }, { onStderr: (s) => void s });
  const sb = await vx.createSandbox({ agent_id: 'demo' });
  const snap = await vx.createSnapshot(sb.id, { name: 'x' });
  await vx.rollback(sb.id, { snapshot_id: snap.id });
  await vx.rollback(sb.id, { last_success: true });
  const forked = await vx.fork(snap.id, { name: 'copy' });
  const page = await vx.history({ sandbox_id: forked.id, limit: 10, failures_only: true });
  for await (const run of vx.historyAll({ agent_id: 'demo' })) console.log(run.id, run.verdict);
  await vx.writeFile(sb.id, 'a.txt', 'hello');
  const bytes: Uint8Array = await vx.readFile(sb.id, 'a.txt');
  const text: string = await vx.readText(sb.id, 'a.txt');
  const list = await vx.listFiles(sb.id, '.', { depth: 2 });
  list.entries.forEach((e) => console.log(e.name, e.size));
  await vx.deleteFile(sb.id, 'a.txt');
  await vx.setPolicy('demo', { auto_rollback_on_failure: true });
  const pr = await vx.parseExecute({ agent_id: 'demo', text: '```python\nprint(1)\n```' });
  pr.blocks.forEach((b) => console.log(b.status, b.result?.stdout));
  const ch = await vx.exec({ agent_id: 'demo', language: 'bash', code: 'touch x', changes: { paths: ['/home/user'] } });
  ch.changes?.forEach((c) => console.log(c.kind, c.path, c.size, c.mode, ch.changes_undone));
  const diff = await vx.runChangeDiff(ch.execution_id, 'x');
  console.log(diff.diff, diff.binary, diff.old_size, diff.new_from);
  console.log(verdict, done.stdout, page.total, bytes.length, text, pr.success);
  try {
    await vx.getSandbox('nope');
  } catch (err) {
    if (err instanceof VmexecError) console.log(err.status, err.code);
    if (err instanceof ConnectionError) console.log('down');
  }
  // Interpreter contexts.
  const ctx: Context = await vx.createContext('sb-1', { language: 'python', cwd: 'work' });
  const cells: CellResult = await vx.runCell('sb-1', ctx.id, { code: 'x = 1\nx', timeout_ms: 5000, rollback: false },
    { onStdout: (s: string) => void s, onDisplay: (o: CellOutput) => void o.png });
  if (cells.error) console.log(cells.error.name, cells.error.traceback, cells.execution_count, cells.rolled_back);
  console.log(cells.results[0]?.text, (await vx.runCell('sb-1', ctx.id, '1 + 1')).verdict);
  for await (const ev of vx.runCellStream('sb-1', ctx.id, { code: 'print(1)' })) if (ev.type === 'display') console.log(ev.display.html);
  console.log((await vx.listContexts('sb-1')).length, (await vx.restartContext('sb-1', ctx.id)).execution_count);
  await vx.deleteContext('sb-1', ctx.id);
}

async function seed(): Promise<void> {
  const api = new ApiClient('http://127.0.0.1:8080');
  const vm = new VmExecutionClient(api, { autoRollback: true, snapshotOnFailure: true, maxRetries: 3, timeout: 30000 });
  const other = new VmExecutionClientDefault({ baseUrl: 'http://127.0.0.1:8080', apiKey: null });
  const res = await vm.executeCode({
    language: 'python', code: 'print(1)', agentId: 'wf',
    onProgress: (p: Progress) => { if (p.status === 'output') console.log(p.stream, p.data); },
    onStdout: (s) => void s,
  });
  if (res.success) console.log(res.stdout, res.exitCode, res.snapshotId);
  else if (res.rolledBack) console.log(res.restoredSnapshot, res.failureSnapshotId);
  else if (res.blocked) console.log(res.reason);
  const pe = await other.parseAndExecute('```bash\necho 1\n```', { stopOnFailure: true, agentId: 'wf' });
  console.log(pe.totalBlocks, pe.successfulBlocks);
  if (res.vmId) {
    const id: string = await vm.createSnapshot(res.vmId, 'cp');
    await vm.rollbackToSnapshot(res.vmId, id);
    await vm.rollbackToLastSuccess(res.vmId, 'wf');
    console.log((await vm.getExecutionHistory(res.vmId)).length);
  }
  console.log(vm.getActiveSnapshots(), vm.validateCode('python', 'x').valid, extractCodeBlocks('')[0]?.language);
  vm.clearHistory();
  const raw = withVmMethods({ request: async (_p: string, _o?: { method?: string; body?: string }) => ({}) });
  const h = await raw.getVmHistory('sb-1');
  h.history.forEach((e) => console.log(e.snapshot_id));
  await api.executeCode('python', 'print(1)', { agentId: 'wf' });
  await api.rollbackVm('sb-1', 'snap-1');
}

void lowLevel;
void seed;
