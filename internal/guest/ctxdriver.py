# vmexec python context driver: see contexts.go for the protocol and its guarantees.
#
# A long-lived interpreter that runs cells. It prints nothing by itself: a cell's own
# output goes to fd 1 and 2 (pipes the agent reads), and its outcome comes back on the
# control socket (fd 4) as newline-delimited JSON:
#
#   driver -> agent  {"type":"ready","pid":N}                       once, after start-up
#   agent -> driver  {"code":..., "env":{...}, "marker":"...", "sync":"..."}  one cell
#   driver -> agent  {"type":"result","result":{...},"sync":N}*     rich results, in order
#                    {"type":"done","count":N,"error":{...}|null}   the cell's end
#
# Before each result the driver flushes and writes the cell's sync marker to fd 1 and
# fd 2; the result's "sync" counts the sync markers written so far in the cell, and the
# agent holds the result until it has read that many from both pipes, so that output
# written before a result reaches the host before it. After "done" the driver writes
# the cell's marker to fd 1 and fd 2, so that the agent knows it has all of the cell's
# output. SIGINT interrupts a running cell (KeyboardInterrupt); between cells it is
# ignored.

import ast
import base64
import builtins
import io
import json
import linecache
import os
import signal
import socket
import sys
import threading
import traceback
import types

_CTRL = 4
_HERE = __file__
# The interpreter put this file's directory first on sys.path; a cell imports from its
# working directory instead, as an interactive interpreter does.
if sys.path and not sys.flags.safe_path:
    sys.path[0] = ""
_sock = socket.socket(fileno=_CTRL)
os.set_inheritable(_CTRL, False)
_rfile = _sock.makefile("rb")
_running = False
_count = 0
_loop = None

# The user's namespace: a fresh __main__ (pickle and friends find user classes there).
_main = types.ModuleType("__main__")
_main.__dict__["__builtins__"] = builtins
sys.modules["__main__"] = _main
_ns = _main.__dict__


def _send(obj):
    _sock.sendall((json.dumps(obj, default=str) + "\n").encode())


# The running cell's sync marker (b"" between cells) and how many were written; a
# display() from another thread may race the cell's own results.
_sync = b""
_synced = 0
_sync_lock = threading.Lock()


def _send_result(result):
    """Sends a result of the running cell after the output written before it."""
    global _synced
    with _sync_lock:
        n = 0
        if _sync:
            _flush()
            for fd in (1, 2):
                try:
                    os.write(fd, _sync)
                except OSError:
                    pass
            _synced += 1
            n = _synced
        _send({"type": "result", "result": result, "sync": n})


def _on_sigint(sig, frame):
    if _running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _on_sigint)

# plt.show() under the Agg backend would warn that it cannot show; the figure becomes
# a png result at the end of the cell instead.
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")

_MIME = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}
_REPR = [
    ("_repr_html_", "html"),
    ("_repr_markdown_", "markdown"),
    ("_repr_svg_", "svg"),
    ("_repr_png_", "png"),
    ("_repr_jpeg_", "jpeg"),
    ("_repr_latex_", "latex"),
    ("_repr_json_", "json"),
    ("_repr_javascript_", "javascript"),
]


def _value(key, v):
    if isinstance(v, tuple) and len(v) == 2:
        v = v[0]  # (data, metadata)
    if key in ("png", "jpeg"):
        if isinstance(v, (bytes, bytearray)):
            return base64.b64encode(bytes(v)).decode()
        return str(v)
    if key == "json":
        try:
            json.dumps(v)
            return v
        except (TypeError, ValueError):
            return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def _format(obj, main):
    """The display protocol without IPython: text (repr) plus every other
    representation the object offers."""
    out = {}
    if not isinstance(obj, type):
        mb = getattr(obj, "_repr_mimebundle_", None)
        if callable(mb):
            try:
                bundle = mb()
                if isinstance(bundle, tuple):
                    bundle = bundle[0]
                for mime, data in (bundle or {}).items():
                    key = _MIME.get(mime)
                    if key:
                        v = _value(key, data)
                        if v is not None:
                            out[key] = v
                    else:
                        out.setdefault("extra", {})[mime] = data if isinstance(data, (str, int, float, bool, list, dict)) else str(data)
            except Exception:
                pass
        for meth, key in _REPR:
            if key in out:
                continue
            f = getattr(obj, meth, None)
            if not callable(f):
                continue
            try:
                v = f()
            except Exception:
                continue
            if v is None:
                continue
            v = _value(key, v)
            if v is not None:
                out[key] = v
        if "png" not in out and type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig"):
            try:
                out["png"] = _figure_png(obj)
            except Exception:
                pass
    if "text" not in out:
        try:
            out["text"] = repr(obj)
        except Exception as e:
            out["text"] = "<unrepresentable object: %s>" % type(e).__name__
    out["is_main_result"] = main
    return out


def _display(*objs, **kwargs):
    """display(obj, ...): sends each object as a result of the running cell."""
    for o in objs:
        _send_result(_format(o, False))


if not hasattr(builtins, "display"):
    builtins.display = _display


def _figures(shown):
    """Open matplotlib figures become png results, and are closed."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        nums = plt.get_fignums()
    except Exception:
        return
    for n in nums:
        try:
            fig = plt.figure(n)
            if id(fig) not in shown:
                _send_result({"png": _figure_png(fig), "text": repr(fig), "is_main_result": False})
        except Exception:
            pass
    try:
        plt.close("all")
    except Exception:
        pass


def _strip(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename == _HERE:
        tb = tb.tb_next
    return tb


def _error(e):
    tb = _strip(e.__traceback__)
    lines = traceback.format_exception(type(e), e, tb)
    return {"name": type(e).__name__, "value": str(e), "traceback": "".join(lines).rstrip("\n")}


def _run(code, name):
    global _loop
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    tree = compile(code, name, "exec", ast.PyCF_ONLY_AST | flags, dont_inherit=True)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    value = None
    for mode, node in (("exec", tree), ("eval", last)):
        if node is None:
            continue
        c = compile(node, name, mode, flags, dont_inherit=True)
        r = eval(c, _ns)
        if c.co_flags & 0x80:  # CO_COROUTINE: the cell awaits at its top level
            if _loop is None:
                import asyncio
                _loop = asyncio.new_event_loop()
            r = _loop.run_until_complete(r)
        if mode == "eval":
            value = r
    return last is not None, value


def _flush():
    for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            f.flush()
        except Exception:
            pass


def _cell(req):
    global _running, _count, _sync, _synced
    _count += 1
    with _sync_lock:
        _sync, _synced = req.get("sync", "").encode(), 0
    env = req.get("env") or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err = None
    shown = set()
    _running = True
    try:
        has, value = _run(req.get("code", ""), "<cell-%d>" % _count)
        _running = False
        if has and value is not None:
            shown.add(id(value))
            _ns["_"] = value
            _send_result(_format(value, True))
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the cell ends
        _running = False
        err = _error(e)
    finally:
        _running = False
    try:
        _figures(shown)
    except BaseException:
        pass
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    with _sync_lock:
        _sync = b""
    _flush()
    _send({"type": "done", "count": _count, "error": err})
    marker = req.get("marker", "").encode()
    for fd in (1, 2):
        try:
            os.write(fd, marker)
        except OSError:
            pass


def _serve():
    _send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            line = _rfile.readline()
        except KeyboardInterrupt:
            continue
        if not line:
            os._exit(0)
        try:
            req = json.loads(line)
        except ValueError:
            continue
        try:
            _cell(req)
        except KeyboardInterrupt:
            pass  # a late interrupt, after the cell


_serve()
