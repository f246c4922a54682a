// Typings of vmexec.js, written by hand. The JSON shapes are those of api/openapi.yaml.

export type Language = 'python' | 'javascript' | 'bash' | 'rust' | 'go';
export type Verdict = 'ok' | 'nonzero_exit' | 'timeout' | 'output_limit' | 'memory_limit' | 'killed' | 'blocked' | 'canceled' | 'error';
export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };

export const LANGUAGES: readonly Language[];
export function canonicalLanguage(name: string): Language | null;

// ----- errors

export interface ErrorBody { error: string; code: string; [key: string]: unknown }

export class VmexecError extends Error {
  constructor(message: string, opts?: { status?: number; code?: string; body?: unknown; cause?: unknown; retryable?: boolean });
  /** HTTP status; 0 when no response came. */
  readonly status: number;
  /** The server's error code (bad_request, not_found, busy, unavailable, ...), or connection_error / timeout. */
  readonly code: string;
  readonly body: ErrorBody | null;
  /** True when nothing ran: a refused or reset connection, 429 or 503. */
  readonly retryable: boolean;
}
export class ConnectionError extends VmexecError {}
export class TimeoutError extends VmexecError {}

export function isRetryable(err: unknown): boolean;
export function backoffDelay(attempt: number, opts?: { baseMs?: number; maxMs?: number; retryAfter?: number | null; random?: () => number }): number;

// ----- API shapes

export interface Limits {
  timeout_ms?: number;
  max_output_bytes?: number;
  memory_mb?: number;
  max_procs?: number;
  max_file_bytes?: number;
}

export interface ExecPolicy {
  snapshot_before_execution?: boolean;
  auto_rollback_on_failure?: boolean;
  snapshot_on_failure?: boolean;
  max_history_entries?: number;
  max_snapshots?: number;
  backend?: string;
  allowed_languages?: string[];
  disabled_rules?: string[];
}

export interface ExecRequest {
  agent_id?: string;
  sandbox_id?: string;
  language: Language | string;
  code: string;
  stdin?: string;
  env?: Record<string, string>;
  working_dir?: string;
  limits?: Limits;
  metadata?: Record<string, JSONValue>;
  history?: ExecPolicy;
  durable?: boolean;
  /** The run's change set: `{enabled: false}` turns it off; `paths` sets the areas scanned. */
  changes?: ChangesOptions;
}

export interface ChangesOptions { enabled?: boolean; paths?: string[] }

/** One path a run created, modified or deleted (found from metadata; contents are not read). */
export interface FileChange {
  path: string;
  kind: 'created' | 'modified' | 'deleted';
  type: 'file' | 'dir' | 'symlink' | 'other';
  /** Bytes after the run (before it, for a deleted file). */
  size: number;
  /** Permission bits. */
  mode: number;
}

/** GET /v1/runs/{id}/changes?path=P: what a run did to one file. */
export interface ChangeDiff {
  run_id: string;
  path: string;
  kind: 'created' | 'modified' | 'deleted';
  /** Not text (or over 1 MiB): sizes only, `diff` empty. */
  binary: boolean;
  old_size: number;
  new_size: number;
  /** A unified diff. */
  diff: string;
  new_from: '' | 'sandbox' | 'failure_snapshot';
}

export interface ExecResult {
  execution_id: string;
  sandbox_id: string;
  agent_id?: string;
  language: string;
  exit_code: number;
  verdict: Verdict;
  signal?: string;
  stdout: string;
  stderr: string;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  duration_ms: number;
  started_at: string;
  completed_at: string;
  sandbox_recreated: boolean;
  sandbox_lost: boolean;
  error?: string;
  pre_snapshot_id?: string;
  failure_snapshot_id?: string;
  restored_snapshot_id?: string;
  rolled_back: boolean;
  warnings?: string[];
  blocked?: boolean;
  blocked_rule?: string;
  blocked_reason?: string;
  redactions?: string[];
  /** What the run created, modified and deleted, by path (absent when nothing). */
  changes?: FileChange[];
  /** The change set is incomplete (over its bound). */
  changes_truncated?: boolean;
  /** The run was rolled back: these changes were undone. */
  changes_undone?: boolean;
  /** What computing the change set cost in the sandbox, in microseconds. */
  changes_scan_us?: number;
}

export interface ParseExecuteRequest {
  agent_id?: string;
  sandbox_id?: string;
  text: string;
  execute?: boolean;
  stop_on_failure?: boolean;
  include_indented?: boolean;
  run_unlabeled?: boolean;
  limits?: Limits;
  history?: ExecPolicy;
}

export interface CodeBlock {
  index: number;
  language: string;
  raw_language?: string;
  info?: string;
  code: string;
  detected: boolean;
  known: boolean;
  start_line: number;
  end_line: number;
  closed: boolean;
  fence: string;
}

export interface BlockResult {
  block: CodeBlock;
  status: 'executed' | 'blocked' | 'skipped' | 'unsupported' | 'error';
  reason?: string;
  result?: ExecResult;
}

export interface ParseExecuteResult {
  blocks: BlockResult[];
  executed: number;
  failed: number;
  skipped: number;
  success: boolean;
}

export interface CreateSandboxRequest { agent_id?: string; name?: string; memory_mb?: number; backend?: string }

export interface Sandbox {
  id: string;
  name: string;
  agent_id?: string;
  backend: string;
  accel?: string;
  status: 'starting' | 'running' | 'busy' | 'dead' | 'suspended' | string;
  memory_mb: number;
  runs: number;
  snapshots: number;
  snapshot_bytes: number;
  created_at: string;
  last_used_at: string;
}

export interface Snapshot {
  id: string;
  sandbox_id: string;
  agent_id?: string;
  name?: string;
  description?: string;
  kind: 'manual' | 'pre_run' | 'failure' | 'fork_base' | 'suspend' | string;
  run_id?: string;
  size_bytes: number;
  pinned: boolean;
  created_at: string;
}

export interface SnapshotList { snapshots: Snapshot[]; disk_bytes: number }
export interface CreateSnapshotRequest { agent_id?: string; name?: string; description?: string; pinned?: boolean }
export type RollbackRequest = { agent_id?: string } & ({ snapshot_id: string; last_success?: false } | { last_success: true; snapshot_id?: undefined });
export interface RollbackResult { sandbox_id: string; snapshot_id: string; message: string }
export interface ForkRequest { agent_id?: string; name?: string }

export interface Run {
  id: string;
  agent_id: string;
  sandbox_id: string;
  language: string;
  code: string;
  status: 'running' | 'done' | 'blocked' | 'error' | string;
  verdict: Verdict | '';
  exit_code: number;
  stdout: string;
  stderr: string;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  blocked_rule?: string;
  blocked_reason?: string;
  pre_snapshot_id?: string;
  failure_snapshot_id?: string;
  restored_snapshot_id?: string;
  rolled_back: boolean;
  started_at: string;
  completed_at: string;
  duration_ms: number;
  metadata?: Record<string, JSONValue>;
  changes?: FileChange[];
  changes_truncated?: boolean;
  changes_undone?: boolean;
}

export interface RunList { runs: Run[]; next_cursor?: string; total: number }

export interface HistoryFilter {
  agent_id?: string;
  sandbox_id?: string;
  failures_only?: boolean;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

export interface PolicyResponse { agent_id: string; effective: ExecPolicy; own: ExecPolicy }

export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits. */
  mode: number;
  mtime: string;
}

export interface Health { service: string; status: string; timestamp: string; version?: string; backend?: string; sandboxes: number }
export interface Backend { name: string; default: boolean; accel?: string; snapshots: boolean }

// ----- interpreter contexts

export type ContextLanguage = 'python' | 'javascript';

export interface CreateContextRequest {
  /** python or javascript (aliases python3, py, js, node). */
  language: ContextLanguage | string;
  /** Working directory, absolute or relative to /home/user (default /home/user). */
  cwd?: string;
  agent_id?: string;
}

export interface Context {
  id: string;
  language: ContextLanguage;
  cwd: string;
  created: string;
  execution_count: number;
  default?: boolean;
}

export interface RunCellRequest {
  code: string;
  env?: Record<string, string>;
  timeout_ms?: number;
  /** Force auto-rollback on or off for this cell (absent: the agent's policy). */
  rollback?: boolean;
  agent_id?: string;
}

/** One rich result of a cell; png and jpeg are base64. */
export interface CellOutput {
  text?: string;
  html?: string;
  markdown?: string;
  svg?: string;
  png?: string;
  jpeg?: string;
  latex?: string;
  json?: unknown;
  javascript?: string;
  extra?: Record<string, unknown>;
  /** The value of the cell's final expression. */
  is_main_result: boolean;
}

export interface CellError { name: string; value: string; traceback: string }

export interface CellResult {
  run_id: string;
  context_id: string;
  stdout: string;
  stderr: string;
  results: CellOutput[];
  error?: CellError;
  execution_count: number;
  verdict: Verdict;
  rolled_back: boolean;
  restarted?: boolean;
  snapshot_id?: string;
  warnings?: string[];
}

// ----- streaming

export type StreamEvent =
  | { type: 'stdout' | 'stderr'; data: string; /** parse-execute: the block that wrote it. */ blockIndex?: number; raw: unknown }
  | { type: 'block'; block: BlockResult }
  | { type: 'display'; display: CellOutput }
  | { type: 'result'; result: ExecResult | ParseExecuteResult | CellResult | any };

export interface StreamCallbacks {
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  onBlock?: (block: BlockResult) => void;
  /** runCell: each rich result (a final expression's value, display(), a figure). */
  onDisplay?: (result: CellOutput) => void;
  onEvent?: (event: StreamEvent) => void;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  headers?: Record<string, string>;
  /** Overrides the client's maxRetries for this call. */
  maxRetries?: number;
}
export interface StreamOptions extends StreamCallbacks, CallOptions {}
export interface FileOptions extends CallOptions { agentId?: string }

export class EventStream<R = unknown> implements AsyncIterable<StreamEvent> {
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
  /** Reads the rest of the stream (calling the callbacks) and resolves with the final result. */
  result(): Promise<R>;
  abort(reason?: unknown): void;
}

export class SSEParser {
  push(chunk: Uint8Array | string): Array<{ event: string; data: string; id?: string }>;
  end(): Array<{ event: string; data: string; id?: string }>;
}

// ----- the low-level client

export interface ClientOptions {
  /** Default: $VMEXEC_URL in Node, else http://127.0.0.1:8080. */
  baseUrl?: string;
  /** Sent as Authorization: Bearer. */
  apiKey?: string | null;
  /** agent_id filled in where a request has none. */
  agentId?: string | null;
  /** Retries of requests where nothing ran (default 3). */
  maxRetries?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Bound on the wait for a response's headers, ms (0: none). */
  timeoutMs?: number;
  headers?: Record<string, string>;
  fetch?: typeof fetch;
}

export interface RequestOptions extends CallOptions {
  method?: string;
  /** A JSON string (the seed api-client's form) or a value to encode as JSON. */
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
}

export class Client {
  constructor(opts?: ClientOptions | string);
  readonly baseUrl: string;
  request<T = any>(path: string, opts?: RequestOptions): Promise<T>;
  stream<R = unknown>(path: string, body: unknown, opts?: StreamOptions): EventStream<R>;

  health(opts?: CallOptions): Promise<Health>;
  languages(opts?: CallOptions): Promise<{ languages: Language[] }>;
  backends(opts?: CallOptions): Promise<{ backends: Backend[] }>;

  exec(req: ExecRequest, opts?: StreamOptions): Promise<ExecResult>;
  execStream(req: ExecRequest, opts?: StreamOptions): EventStream<ExecResult>;
  parseExecute(req: ParseExecuteRequest, opts?: StreamOptions): Promise<ParseExecuteResult>;
  parseExecuteStream(req: ParseExecuteRequest, opts?: StreamOptions): EventStream<ParseExecuteResult>;

  createSandbox(req?: CreateSandboxRequest, opts?: CallOptions): Promise<Sandbox>;
  listSandboxes(opts?: CallOptions): Promise<Sandbox[]>;
  getSandbox(id: string, opts?: CallOptions): Promise<Sandbox>;
  deleteSandbox(id: string, opts?: CallOptions): Promise<void>;

  createSnapshot(sandboxId: string, req?: CreateSnapshotRequest, opts?: CallOptions): Promise<Snapshot>;
  listSnapshots(sandboxId: string, opts?: CallOptions & { agentId?: string }): Promise<SnapshotList>;
  getSnapshot(id: string, opts?: CallOptions & { agentId?: string }): Promise<Snapshot>;
  deleteSnapshot(id: string, opts?: CallOptions & { agentId?: string }): Promise<void>;
  rollback(sandboxId: string, req: RollbackRequest, opts?: CallOptions): Promise<RollbackResult>;
  fork(snapshotId: string, req?: ForkRequest, opts?: CallOptions): Promise<Sandbox>;

  history(filter?: HistoryFilter, opts?: CallOptions): Promise<RunList>;
  historyAll(filter?: HistoryFilter, opts?: CallOptions): AsyncIterable<Run>;
  getRun(id: string, opts?: CallOptions): Promise<Run>;
  /** The diff of one file in a run's change set (path absolute or relative to /home/user). */
  runChangeDiff(id: string, path: string, opts?: CallOptions & { agentId?: string }): Promise<ChangeDiff>;

  getPolicy(agentId: string, opts?: CallOptions): Promise<PolicyResponse>;
  setPolicy(agentId: string, policy: ExecPolicy, opts?: CallOptions): Promise<PolicyResponse>;

  writeFile(sandboxId: string, path: string, data: string | Uint8Array | ArrayBuffer | Blob, opts?: FileOptions & { mode?: number }): Promise<FileEntry>;
  readFile(sandboxId: string, path: string, opts?: FileOptions): Promise<Uint8Array>;
  readText(sandboxId: string, path: string, opts?: FileOptions): Promise<string>;
  listFiles(sandboxId: string, path?: string, opts?: FileOptions & { depth?: number }): Promise<{ entries: FileEntry[] }>;
  deleteFile(sandboxId: string, path: string, opts?: FileOptions & { recursive?: boolean }): Promise<void>;

  createContext(sandboxId: string, req: CreateContextRequest, opts?: CallOptions): Promise<Context>;
  listContexts(sandboxId: string, opts?: FileOptions): Promise<Context[]>;
  deleteContext(sandboxId: string, contextId: string, opts?: FileOptions): Promise<void>;
  restartContext(sandboxId: string, contextId: string, opts?: CallOptions): Promise<Context>;
  /** A string is the cell's code. With onStdout/onStderr/onDisplay the cell streams. */
  runCell(sandboxId: string, contextId: string, req: RunCellRequest | string, opts?: StreamOptions): Promise<CellResult>;
  runCellStream(sandboxId: string, contextId: string, req: RunCellRequest | string, opts?: StreamOptions): EventStream<CellResult>;
}

// ----- code blocks

export interface ExtractedBlock {
  index: number;
  /** Canonical when vmexec knows the name; 'python' for a fence without one. */
  language: string;
  rawLanguage: string;
  info: string;
  code: string;
  raw: string;
  closed: boolean;
}
export function extractCodeBlocks(text: string): ExtractedBlock[];

// ----- the seed's api-client

/** What VmExecutionClient needs of an api-client: request(path, {method, body}) resolving with parsed JSON. */
export interface RequestLike {
  request(path: string, opts?: { method?: string; body?: string; [key: string]: unknown }): Promise<any>;
}

export interface CompatExecResponse extends ExecResult { vm_id: string }
export interface CompatHistoryEntry {
  id: string;
  command: string;
  language: string;
  timestamp: string;
  success: boolean;
  exit_code: number;
  stdout: string;
  stderr: string;
  snapshot_id: string | null;
  verdict: string;
  rolled_back: boolean;
}

export interface VmMethods {
  executeCode(language: string, code: string, options?: {
    agentId?: string; vmId?: string | null; requirements?: string[]; timeout?: number; workingDir?: string | null;
    metadata?: Record<string, JSONValue>;
  }): Promise<CompatExecResponse>;
  parseAndExecuteCode(text: string, options?: { agentId?: string; autoExecute?: boolean; autoExecuteThreshold?: number; vmId?: string }):
    Promise<{ code_blocks: Array<CodeBlock & { confidence: number }>; execution_results: CompatExecResponse[]; errors: string[] }>;
  extractCodeBlocks(text: string): ExtractedBlock[];
  createVmSnapshot(vmId: string, snapshotName: string): Promise<{ snapshot_id: string; vm_id: string; name?: string; created_at: string }>;
  rollbackVm(vmId: string, snapshotId: string): Promise<{ message: string; snapshot_id: string; vm_id: string }>;
  getVmHistory(vmId: string): Promise<{ history: CompatHistoryEntry[]; total: number }>;
}

export const vmMethods: VmMethods;
export function withVmMethods<T extends RequestLike>(obj: T): T & VmMethods;

export interface ApiClient extends VmMethods {}
export class ApiClient extends Client {
  constructor(baseUrl?: string | ClientOptions, opts?: ClientOptions);
}

// ----- the seed's VmExecutionClient

export type ProgressStatus =
  | 'validating' | 'creating_snapshot' | 'executing' | 'output' | 'completed'
  | 'rolling_back' | 'retrying' | 'failed' | 'error';
export const PROGRESS_STATUSES: readonly ProgressStatus[];

export interface Progress {
  status: ProgressStatus;
  executionId: string;
  vmId?: string | null;
  snapshotId?: string | null;
  /** 'output': which stream, and the chunk. */
  stream?: 'stdout' | 'stderr';
  data?: string;
  /** 'retrying': the next attempt, the limit, and the wait before it (ms). */
  attempt?: number;
  maxRetries?: number;
  delay?: number;
  /** 'rolling_back': the server rolled the run back itself. */
  byServer?: boolean;
  [key: string]: unknown;
}

export interface VmExecutionOptions {
  /** Attempts in all for a request where nothing ran (default 3). */
  maxRetries?: number;
  /** Backoff base, ms (default 1000). */
  retryDelay?: number;
  autoRollback?: boolean;
  snapshotOnExecution?: boolean;
  snapshotOnFailure?: boolean;
  /** Per run, ms (default 30000). */
  timeout?: number;
  [key: string]: unknown;
}

export interface ExecuteCodeRequest {
  language: string;
  code: string;
  agentId?: string;
  vmId?: string | null;
  requirements?: string[];
  workingDir?: string | null;
  metadata?: Record<string, JSONValue>;
  onProgress?: ((progress: Progress) => void) | null;
  onStdout?: ((chunk: string) => void) | null;
  onStderr?: ((chunk: string) => void) | null;
}

export interface ExecutionResult {
  success: boolean;
  executionId: string;
  vmId: string | null;
  exitCode?: number;
  stdout?: string;
  stderr?: string;
  /** Wall time, ms. */
  duration?: number;
  attempts?: number;
  snapshotId?: string | null;
  timestamp?: string;
  verdict?: Verdict;
  /** The server's execution_id. */
  runId?: string;
  rolledBack?: boolean;
  restoredSnapshot?: string;
  failureSnapshotId?: string;
  blocked?: boolean;
  reason?: string;
  rule?: string;
  error?: string;
  /** A request that could not be served: the server's error code and the HTTP status (0: no response). */
  code?: string;
  httpStatus?: number;
}

export interface ParseAndExecuteResult {
  success: boolean;
  results?: ExecutionResult[];
  totalBlocks?: number;
  successfulBlocks?: number;
  error?: string;
  noCodeFound?: boolean;
}

export interface RollbackOutcome { success: boolean; vmId: string; snapshotId: string; message: string }
export interface ActiveSnapshot { snapshotId: string; vmId: string; timestamp: number }

export class VmExecutionClient {
  constructor(apiClient?: RequestLike | ClientOptions, options?: VmExecutionOptions);
  readonly options: Required<Pick<VmExecutionOptions, 'maxRetries' | 'retryDelay' | 'autoRollback' | 'snapshotOnExecution' | 'snapshotOnFailure' | 'timeout'>> & VmExecutionOptions;
  executionHistory: ExecutionResult[];
  executeCode(request: ExecuteCodeRequest): Promise<ExecutionResult>;
  parseAndExecute(text: string, options?: Partial<ExecuteCodeRequest> & { stopOnFailure?: boolean }): Promise<ParseAndExecuteResult>;
  extractCodeBlocks(text: string): ExtractedBlock[];
  validateCode(language: string, code: string): { valid: boolean; error?: string; reason?: string };
  createSnapshot(vmId: string, snapshotName: string): Promise<string>;
  rollbackToSnapshot(vmId: string, snapshotId: string): Promise<RollbackOutcome>;
  rollbackToLastSuccess(vmId: string, agentId?: string): Promise<RollbackOutcome>;
  getExecutionHistory(vmId?: string | null): Promise<Array<CompatHistoryEntry & { snapshotId: string | null; exitCode: number }> | ExecutionResult[]>;
  getActiveSnapshots(): ActiveSnapshot[];
  clearHistory(): void;
  generateExecutionId(): string;
  delay(ms: number): Promise<void>;
}

export default VmExecutionClient;
