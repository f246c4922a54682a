"""vmexec — the Python client of vmexec: run AI agents' code in sandboxes as transactions.

One module, standard library only, Python >= 3.9. Drop it next to your agent::

    from vmexec import Client

    vx = Client("http://127.0.0.1:8080", agent_id="demo")
    r = vx.exec("python", "print(6*7)")
    print(r["verdict"], r["stdout"])          # ok 42
    for ev in vx.stream("bash", "for i in 1 2 3; do echo $i; sleep 1; done"):
        if ev.type == "stdout":
            print(ev.text, end="")

Results are the API's JSON objects as dicts (see api/openapi.yaml). A program that
fails is a result with its exit code and verdict, not an exception; requests the
server refuses raise VmexecError with the server's ``code`` and the HTTP ``status``.

Retries: a request is retried only when nothing ran — the connection was refused or
reset before any response, or the server answered 429 (queue full) or 503
(unavailable, at capacity) — with exponential backoff, full jitter and the server's
Retry-After. A program that ran and failed is never retried; neither is any other
status, a timeout, or a stream that had begun.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

__all__ = [
    "Client", "Event", "SSEParser", "VmexecError", "ConnectionFailed", "Timeout",
    "LANGUAGES", "backoff_delay",
]

DEFAULT_URL = "http://127.0.0.1:8080"
LANGUAGES = ("python", "javascript", "bash", "rust", "go")

# The HTTP status a plain call answers for each error code; a stream's error event
# carries only the code.
_CODE_STATUS = {
    "bad_request": 400, "invalid_json": 400, "too_large": 413, "not_found": 404,
    "forbidden": 403, "busy": 429, "conflict": 409, "unsupported": 501, "limit": 503,
    "unavailable": 503, "timeout": 504, "internal": 500,
}


class VmexecError(Exception):
    """A request the server refused or could not serve.

    ``status`` is the HTTP status (0 when no response came), ``code`` the server's
    error code (bad_request, not_found, busy, unavailable, ...; connection_error or
    timeout when no response came), ``body`` the parsed error body, and ``retryable``
    whether nothing ran (refused or reset connection, 429, 503).
    """

    def __init__(self, message: str, *, status: int = 0, code: str = "error",
                 body: Any = None, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body
        self.retryable = retryable


class ConnectionFailed(VmexecError):
    """No response came: the connection was refused, reset or broke."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message, code="connection_error", retryable=retryable)


class Timeout(VmexecError):
    """The client's own timeout ended the request (never retried: the run may have happened)."""

    def __init__(self, message: str):
        super().__init__(message, code="timeout")


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 8.0,
                  retry_after: Optional[float] = None, rand=random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): the server's
    Retry-After when given, else uniform in [0, min(cap, base * 2**(attempt-1))]."""
    if retry_after is not None:
        return min(retry_after, max(cap, 60.0))
    return min(cap, base * 2 ** (attempt - 1)) * rand()


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------
# Server-Sent Events


@dataclass
class Event:
    """One event of a stream.

    ``type`` is stdout, stderr, block or result (or another name the server sends);
    ``data`` the parsed JSON; ``text`` the chunk of a stdout/stderr event; ``block``
    the index of the parse-execute block that wrote it.
    """

    type: str
    data: Any = None
    id: Optional[str] = None

    @property
    def text(self) -> str:
        if isinstance(self.data, dict):
            return self.data.get("data", "")
        return self.data if isinstance(self.data, str) else ""

    @property
    def block(self) -> Optional[int]:
        return self.data.get("block") if isinstance(self.data, dict) else None


class SSEParser:
    """Incremental text/event-stream parser, as the HTML standard specifies.

    Lines end in CRLF, LF or CR; lines starting with ':' are comments; the ``data``
    lines of one event are joined with '\\n'; ``event`` names it (default "message");
    ``id`` is kept; ``retry`` and unknown fields are ignored; a blank line dispatches;
    an event without data is not dispatched; a final event without its blank line is
    dropped. Feed bytes in chunks of any size (UTF-8 characters may be split).
    """

    def __init__(self) -> None:
        import codecs
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._first = True
        self._pending_cr = False
        self._id: Optional[str] = None
        self._reset()

    def _reset(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._has_data = False

    def feed(self, chunk: Union[bytes, str]) -> List[Event]:
        text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
        if self._first and text:
            if text[0] == "\ufeff":
                text = text[1:]
            self._first = False
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        self._buf += text
        out: List[Event] = []
        start = 0
        i = 0
        buf = self._buf
        n = len(buf)
        while i < n:
            c = buf[i]
            if c == "\n" or c == "\r":
                self._line(buf[start:i], out)
                if c == "\r":
                    if i + 1 < n:
                        if buf[i + 1] == "\n":
                            i += 1
                    else:
                        self._pending_cr = True
                start = i + 1
            i += 1
        self._buf = buf[start:]
        return out

    def close(self) -> List[Event]:
        self._decoder.decode(b"", final=True)
        self._buf = ""
        self._reset()
        return []

    def _line(self, line: str, out: List[Event]) -> None:
        if line == "":
            if self._has_data:
                raw = "\n".join(self._data)
                try:
                    data: Any = json.loads(raw)
                except ValueError:
                    data = raw
                out.append(Event(self._event or "message", data, self._id))
            self._reset()
            return
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id" and "\0" not in value:
            self._id = value
        # retry and unknown fields: ignored


# ------------------------------------------------------------------------------------
# The client

_RETRYABLE_ERRORS = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                     ConnectionAbortedError, http.client.RemoteDisconnected)


class _Response:
    """A response whose status is 2xx, with its connection (closed by close())."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers

    def read(self) -> bytes:
        try:
            return self.resp.read()
        finally:
            self.close()

    def json(self) -> Any:
        body = self.read()
        if not body:
            return None
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


class Client:
    """The client of vmexec's /v1 API.

    ``base_url`` defaults to $VMEXEC_URL, else http://127.0.0.1:8080; ``api_key`` is sent
    as ``Authorization: Bearer``; ``agent_id`` fills in requests that name none;
    ``timeout`` (seconds) bounds each socket operation of a request, so a run longer
    than it needs a larger one (the default, 660 s, is past the server's 10 min
    maximum run); ``max_retries`` bounds the retries of requests where nothing ran.
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 agent_id: Optional[str] = None, timeout: float = 660.0,
                 max_retries: int = 3, retry_base: float = 0.25, retry_cap: float = 8.0,
                 headers: Optional[Dict[str, str]] = None):
        self.base_url = (base_url or os.environ.get("VMEXEC_URL") or DEFAULT_URL).rstrip("/")
        u = urllib.parse.urlsplit(self.base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"vmexec: base_url {self.base_url!r}: want http(s)://host[:port]")
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self.api_key = api_key
        self.agent_id = agent_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.headers = dict(headers or {})

    # -- transport

    def _connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def send(self, method: str, path: str, *, body: Any = None, query: Optional[Dict[str, Any]] = None,
             data: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None) -> _Response:
        """Send one request with the retry rule; return a 2xx response or raise VmexecError."""
        target = self._prefix + path + _query(query)
        h = {"User-Agent": "vmexec-python", **self.headers, **(headers or {})}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        payload: Optional[bytes] = data
        if body is not None:
            payload = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        elif data is not None:
            h.setdefault("Content-Type", "application/octet-stream")
        attempt = 0
        while True:
            attempt += 1
            conn = self._connect()
            try:
                conn.request(method, target, body=payload, headers=h)
                resp = conn.getresponse()
            except socket.timeout as e:
                conn.close()
                raise Timeout(f"vmexec: {method} {path}: no answer within {self.timeout} s") from e
            except _RETRYABLE_ERRORS as e:
                conn.close()
                err = ConnectionFailed(f"vmexec: {method} {self.base_url}{path}: {e}", retryable=True)
                if attempt > self.max_retries:
                    raise err from e
                time.sleep(backoff_delay(attempt, self.retry_base, self.retry_cap))
                continue
            except OSError as e:
                conn.close()
                raise ConnectionFailed(f"vmexec: {method} {self.base_url}{path}: {e}") from e
            if 200 <= resp.status < 300:
                return _Response(conn, resp)
            err = _error_from(resp, method, path)
            wait = _retry_after(resp.headers.get("Retry-After"))
            conn.close()
            if not err.retryable or attempt > self.max_retries:
                raise err
            time.sleep(backoff_delay(attempt, self.retry_base, self.retry_cap, wait))

    def request(self, method: str, path: str, *, body: Any = None,
                query: Optional[Dict[str, Any]] = None) -> Any:
        """Send a request and return its parsed JSON body (None when empty)."""
        return self.send(method, path, body=body, query=query).json()

    def _events(self, path: str, body: Dict[str, Any]) -> Iterator[Event]:
        """POST body to path asking for Server-Sent Events; yield them."""
        attempt = 0
        while True:
            attempt += 1
            res = self.send("POST", path, body=body, headers={"Accept": "text/event-stream"})
            if "text/event-stream" not in (res.headers.get("Content-Type") or ""):
                yield Event("result", res.json())  # a server that does not stream this route
                return
            parser = SSEParser()
            got_result = False
            yielded = False
            retry = False
            try:
                while True:
                    try:
                        chunk = res.resp.read1(65536)
                    except socket.timeout as e:
                        raise Timeout(f"vmexec: POST {path}: the stream was silent for {self.timeout} s") from e
                    except (OSError, http.client.HTTPException) as e:
                        raise ConnectionFailed(f"vmexec: POST {path}: the event stream broke: {e}") from e
                    if not chunk:
                        break
                    for ev in parser.feed(chunk):
                        if ev.type == "error":
                            err = _stream_error(ev.data)
                            if err.retryable and not yielded and attempt <= self.max_retries:
                                retry = True
                                break
                            raise err
                        if ev.type == "result":
                            got_result = True
                        yielded = True
                        yield ev
                    if retry:
                        break
            finally:
                parser.close()
                res.close()
            if retry:
                time.sleep(backoff_delay(attempt, self.retry_base, self.retry_cap))
                continue
            if not got_result:
                raise ConnectionFailed(f"vmexec: POST {path}: the event stream ended before its result")
            return

    def _agent(self, req: Dict[str, Any]) -> Dict[str, Any]:
        if self.agent_id and not req.get("agent_id"):
            req = {**req, "agent_id": self.agent_id}
        return req

    @staticmethod
    def _exec_req(language: str, code: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        req = {"language": language, "code": code}
        req.update({k: v for k, v in fields.items() if v is not None})
        return req

    # -- service

    def health(self) -> Dict[str, Any]:
        return self.request("GET", "/v1/health")

    def languages(self) -> List[str]:
        return self.request("GET", "/v1/languages")["languages"]

    def backends(self) -> List[Dict[str, Any]]:
        return self.request("GET", "/v1/backends")["backends"]

    # -- runs

    def exec(self, language: str, code: str, *, agent_id: Optional[str] = None,
             sandbox_id: Optional[str] = None, stdin: Optional[str] = None,
             env: Optional[Dict[str, str]] = None, working_dir: Optional[str] = None,
             limits: Optional[Dict[str, int]] = None, metadata: Optional[Dict[str, Any]] = None,
             history: Optional[Dict[str, Any]] = None,
             changes: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Run code as a transaction; return the ExecResult (a failed program is a result).

        The result's ``changes`` lists the files the run created, modified and deleted
        (``changes_truncated``, ``changes_undone`` beside it); ``changes={"enabled": False}``
        turns that off, ``changes={"paths": [...]}`` sets the areas scanned.
        """
        req = self._agent(self._exec_req(language, code, dict(
            agent_id=agent_id, sandbox_id=sandbox_id, stdin=stdin, env=env, working_dir=working_dir,
            limits=limits, metadata=metadata, history=history, changes=changes)))
        return self.request("POST", _exec_path(sandbox_id), body=req)

    def stream(self, language: str, code: str, **fields: Any) -> Iterator[Event]:
        """Run code and yield its events as they come: stdout/stderr chunks, then one result.

        Takes exec()'s keyword arguments. Raises VmexecError for an ``error`` event.
        Stopping the iteration early (break, close()) disconnects, and the server
        cancels the run (verdict canceled, rolled back).
        """
        req = self._agent(self._exec_req(language, code, fields))
        return self._events(_exec_path(fields.get("sandbox_id")), req)

    def parse_execute(self, text: str, *, agent_id: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
        """Run the code blocks of an LLM reply in document order."""
        req = self._agent({"text": text, **({"agent_id": agent_id} if agent_id else {}),
                           **{k: v for k, v in fields.items() if v is not None}})
        return self.request("POST", "/v1/parse-execute", body=req)

    def parse_execute_stream(self, text: str, *, agent_id: Optional[str] = None, **fields: Any) -> Iterator[Event]:
        """parse_execute as events: output chunks (with their block), a block event per block, the result."""
        req = self._agent({"text": text, **({"agent_id": agent_id} if agent_id else {}),
                           **{k: v for k, v in fields.items() if v is not None}})
        return self._events("/v1/parse-execute", req)

    # -- sandboxes

    def create_sandbox(self, *, agent_id: Optional[str] = None, name: Optional[str] = None,
                       memory_mb: Optional[int] = None, backend: Optional[str] = None) -> Dict[str, Any]:
        req = self._agent({k: v for k, v in dict(agent_id=agent_id, name=name, memory_mb=memory_mb,
                                                  backend=backend).items() if v is not None})
        return self.request("POST", "/v1/sandboxes", body=req)

    def sandboxes(self) -> List[Dict[str, Any]]:
        return self.request("GET", "/v1/sandboxes")["sandboxes"]

    def sandbox(self, sandbox_id: str) -> Dict[str, Any]:
        return self.request("GET", f"/v1/sandboxes/{_q(sandbox_id)}")

    def delete_sandbox(self, sandbox_id: str) -> None:
        self.send("DELETE", f"/v1/sandboxes/{_q(sandbox_id)}").read()

    # -- snapshots, rollback, fork

    def create_snapshot(self, sandbox_id: str, *, name: Optional[str] = None, description: Optional[str] = None,
                        pinned: bool = False, agent_id: Optional[str] = None) -> Dict[str, Any]:
        req = self._agent({k: v for k, v in dict(name=name, description=description, pinned=pinned or None,
                                                  agent_id=agent_id).items() if v is not None})
        return self.request("POST", f"/v1/sandboxes/{_q(sandbox_id)}/snapshots", body=req)

    def snapshots(self, sandbox_id: str, *, agent_id: Optional[str] = None) -> Dict[str, Any]:
        """{snapshots: [...], disk_bytes}."""
        return self.request("GET", f"/v1/sandboxes/{_q(sandbox_id)}/snapshots",
                            query={"agent_id": agent_id or self.agent_id})

    def snapshot(self, snapshot_id: str, *, agent_id: Optional[str] = None) -> Dict[str, Any]:
        return self.request("GET", f"/v1/snapshots/{_q(snapshot_id)}", query={"agent_id": agent_id or self.agent_id})

    def delete_snapshot(self, snapshot_id: str, *, agent_id: Optional[str] = None) -> None:
        self.send("DELETE", f"/v1/snapshots/{_q(snapshot_id)}", query={"agent_id": agent_id or self.agent_id}).read()

    def rollback(self, sandbox_id: str, snapshot_id: Optional[str] = None, *, last_success: bool = False,
                 agent_id: Optional[str] = None) -> Dict[str, Any]:
        """Restore a sandbox to a snapshot, or (last_success=True) to its state after its last good run."""
        req = self._agent({k: v for k, v in dict(snapshot_id=snapshot_id, last_success=last_success or None,
                                                  agent_id=agent_id).items() if v is not None})
        return self.request("POST", f"/v1/sandboxes/{_q(sandbox_id)}/rollback", body=req)

    def fork(self, snapshot_id: str, *, name: Optional[str] = None, agent_id: Optional[str] = None) -> Dict[str, Any]:
        """Start a new sandbox from a snapshot."""
        req = self._agent({k: v for k, v in dict(name=name, agent_id=agent_id).items() if v is not None})
        return self.request("POST", f"/v1/snapshots/{_q(snapshot_id)}/fork", body=req)

    # -- history

    def history(self, *, agent_id: Optional[str] = None, sandbox_id: Optional[str] = None,
                failures_only: bool = False, since: Optional[str] = None, until: Optional[str] = None,
                limit: Optional[int] = None, cursor: Optional[str] = None) -> Dict[str, Any]:
        """One page of runs, newest first: {runs, next_cursor, total}."""
        return self.request("GET", "/v1/history", query={
            "agent_id": agent_id or (None if sandbox_id else self.agent_id), "sandbox_id": sandbox_id,
            "failures_only": "true" if failures_only else None, "since": since, "until": until,
            "limit": limit, "cursor": cursor})

    def history_iter(self, **filters: Any) -> Iterator[Dict[str, Any]]:
        """Every run that matches, following next_cursor across pages."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.history(cursor=cursor, **filters)
            yield from page["runs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def run(self, run_id: str) -> Dict[str, Any]:
        return self.request("GET", f"/v1/runs/{_q(run_id)}")

    def run_change_diff(self, run_id: str, path: str) -> Dict[str, Any]:
        """The diff of one file in a run's change set: {diff, binary, old_size, new_size, ...}."""
        q: Dict[str, Any] = {"path": path}
        if self.agent_id:
            q["agent_id"] = self.agent_id
        return self.request("GET", f"/v1/runs/{_q(run_id)}/changes", query=q)

    # -- policy

    def policy(self, agent_id: str) -> Dict[str, Any]:
        return self.request("GET", f"/v1/agents/{_q(agent_id)}/policy")

    def set_policy(self, agent_id: str, policy: Dict[str, Any]) -> Dict[str, Any]:
        return self.request("PUT", f"/v1/agents/{_q(agent_id)}/policy", body=policy)

    # -- files (paths relative to /home/user unless absolute)

    def write_file(self, sandbox_id: str, path: str, data: Union[bytes, str], *, mode: Optional[int] = None,
                   agent_id: Optional[str] = None) -> Dict[str, Any]:
        """Put data at path (parents created); return the file's entry."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        q = {"path": path, "mode": format(mode, "o") if mode is not None else None, "agent_id": agent_id or self.agent_id}
        return self.send("PUT", f"/v1/sandboxes/{_q(sandbox_id)}/files", query=q, data=raw).json()

    def read_file(self, sandbox_id: str, path: str, *, agent_id: Optional[str] = None) -> bytes:
        res = self.send("GET", f"/v1/sandboxes/{_q(sandbox_id)}/files", query={"path": path, "agent_id": agent_id or self.agent_id})
        want = res.headers.get("Content-Length")
        body = res.read()
        if want is not None and len(body) != int(want):
            raise ConnectionFailed(f"vmexec: GET {path}: got {len(body)} of {want} bytes (the download was cut short)")
        return body

    def list_files(self, sandbox_id: str, path: str = ".", *, depth: Optional[int] = None,
                   agent_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Entries of a directory: name, path, type, size, mode, mtime."""
        return self.request("GET", f"/v1/sandboxes/{_q(sandbox_id)}/files/list",
                            query={"path": path, "depth": depth, "agent_id": agent_id or self.agent_id})["entries"]

    def delete_file(self, sandbox_id: str, path: str, *, recursive: bool = False, agent_id: Optional[str] = None) -> None:
        self.send("DELETE", f"/v1/sandboxes/{_q(sandbox_id)}/files",
                  query={"path": path, "recursive": "true" if recursive else None,
                         "agent_id": agent_id or self.agent_id}).read()


    # -- interpreter contexts: long-lived python/javascript interpreters whose cells
    #    are transactions (a failing cell is rolled back with the interpreter's memory)

    def create_context(self, sandbox_id: str, language: str = "python", *, cwd: Optional[str] = None,
                       agent_id: Optional[str] = None) -> Dict[str, Any]:
        """Start an interpreter (python or javascript); return the context {id, language, cwd, ...}."""
        req = self._agent({k: v for k, v in dict(language=language, cwd=cwd, agent_id=agent_id).items() if v is not None})
        return self.request("POST", f"/v1/sandboxes/{_q(sandbox_id)}/contexts", body=req)

    def list_contexts(self, sandbox_id: str, *, agent_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The sandbox's contexts, oldest first."""
        return self.request("GET", f"/v1/sandboxes/{_q(sandbox_id)}/contexts",
                            query={"agent_id": agent_id or self.agent_id})["contexts"]

    def delete_context(self, sandbox_id: str, context_id: str, *, agent_id: Optional[str] = None) -> None:
        """Kill a context's interpreter."""
        self.send("DELETE", f"/v1/sandboxes/{_q(sandbox_id)}/contexts/{_q(context_id)}",
                  query={"agent_id": agent_id or self.agent_id}).read()

    def restart_context(self, sandbox_id: str, context_id: str, *, agent_id: Optional[str] = None) -> Dict[str, Any]:
        """Replace a context's interpreter by a fresh one (its state is gone)."""
        return self.request("POST", f"/v1/sandboxes/{_q(sandbox_id)}/contexts/{_q(context_id)}/restart",
                            body=self._agent({"agent_id": agent_id} if agent_id else {}))

    def run_cell(self, sandbox_id: str, context_id: str, code: str, *, env: Optional[Dict[str, str]] = None,
                 timeout_ms: Optional[int] = None, rollback: Optional[bool] = None, agent_id: Optional[str] = None,
                 on_stdout: Optional[Callable[[str], None]] = None, on_stderr: Optional[Callable[[str], None]] = None,
                 on_display: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Run a cell; return the CellResult {run_id, stdout, stderr, results, error, execution_count,
        verdict, rolled_back}. A cell that raises is a result (verdict ``error``), not an exception.

        With on_stdout/on_stderr/on_display the cell streams and they are called as it writes
        (on_display with each rich result: a final expression's value, display(), a figure).
        """
        req = self._agent({k: v for k, v in dict(code=code, env=env, timeout_ms=timeout_ms, rollback=rollback,
                                                  agent_id=agent_id).items() if v is not None})
        path = f"/v1/sandboxes/{_q(sandbox_id)}/contexts/{_q(context_id)}/run"
        if not (on_stdout or on_stderr or on_display):
            return self.request("POST", path, body=req)
        result: Dict[str, Any] = {}
        for ev in self._events(path, req):
            if ev.type == "stdout" and on_stdout:
                on_stdout(ev.text)
            elif ev.type == "stderr" and on_stderr:
                on_stderr(ev.text)
            elif ev.type == "display" and on_display:
                on_display(ev.data)
            elif ev.type == "result":
                result = ev.data
        return result

    def run_cell_stream(self, sandbox_id: str, context_id: str, code: str, **fields: Any) -> Iterator[Event]:
        """run_cell as events: stdout/stderr chunks, a display event per rich result, then the result."""
        req = self._agent({"code": code, **{k: v for k, v in fields.items() if v is not None}})
        return self._events(f"/v1/sandboxes/{_q(sandbox_id)}/contexts/{_q(context_id)}/run", req)


def _exec_path(sandbox_id: Optional[str]) -> str:
    return f"/v1/sandboxes/{_q(sandbox_id)}/exec" if sandbox_id else "/v1/exec"


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _query(params: Optional[Dict[str, Any]]) -> str:
    if not params:
        return ""
    items = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items() if v not in (None, "")]
    return "?" + urllib.parse.urlencode(items) if items else ""


def _error_from(resp: http.client.HTTPResponse, method: str, path: str) -> VmexecError:
    raw = resp.read()
    body: Any = None
    try:
        body = json.loads(raw)
    except ValueError:
        pass
    msg = body.get("error") if isinstance(body, dict) else None
    msg = msg or raw.decode(errors="replace").strip() or resp.reason
    code = body.get("code") if isinstance(body, dict) and body.get("code") else f"http_{resp.status}"
    return VmexecError(f"vmexec: {method} {path}: {resp.status} {msg}", status=resp.status, code=code,
                       body=body, retryable=resp.status in (429, 503))


def _stream_error(data: Any) -> VmexecError:
    body = data if isinstance(data, dict) else {"error": str(data)}
    code = body.get("code") or "error"
    status = _CODE_STATUS.get(code, 500)
    return VmexecError(f"vmexec: {body.get('error') or 'stream error'}", status=status, code=code, body=body,
                       retryable=status in (429, 503))
