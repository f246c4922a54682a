# vmexec python zygote: see zygote.go for the protocol and what it guarantees.
#
# Started by the agent's launcher exactly as a run's `python3 -u main.py` would be (same
# interpreter, flags, rlimits, user and environment). It keeps one forked spare waiting on
# the control socket (a fork costs ~7 ms in gVisor, so it is done between runs); the spare
# takes the next run and becomes `python3 -u <script>`: own process group, the run's stdio,
# cwd, argv, sys.path[0] and a fresh __main__; then the script runs at the top level of
# this file so that the interpreter's own exit path (SystemExit handling, joining threads,
# atexit, flushing) ends it exactly as it ends a fresh python3. The zygote reports its exit
# and forks the next spare.
#
# Nothing beyond what the interpreter imports at start-up is imported here except _socket,
# which the child drops from sys.modules again.

import sys
import os
import io

_G = globals()
_STDIO = [(s.encoding, s.errors) for s in (sys.__stdin__, sys.__stdout__, sys.__stderr__)]
_CTRL = 4  # zygoteCtrlFD
_FAST = frozenset(sys.argv[1:])  # the speed-ups on (fast.go): freeze, exit, hint
_HINT_WAIT = 0.1  # zygoteHintWait: at most this long for "spare" after a run's exit

# The interpreter put this file's directory first on sys.path; each run gets its own.
if not sys.flags.safe_path:
    del sys.path[0]
sys.path_importer_cache.pop(__file__, None)

import _socket  # noqa: E402  (after the path fix-up)
_GC_LOADED = "gc" in sys.modules
import gc  # noqa: E402  (built in; dropped from sys.modules again in a run, like _socket)

_ZYGOTE_MODULES = dict(sys.modules)  # a run's own modules are the others


def _watched():
    """Files and directories whose state start-up depended on: sys.path, the user's
    site-packages (even if missing), .pth files and the site customisation modules."""
    site = sys.modules.get("site")
    paths = [p for p in sys.path if p]
    user_site = getattr(site, "USER_SITE", None)
    if user_site and user_site not in paths:
        paths.append(user_site)
    for d in list(paths):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        paths += [os.path.join(d, n) for n in sorted(names) if n.endswith(".pth")]
    for name in ("sitecustomize", "usercustomize"):
        f = getattr(sys.modules.get(name), "__file__", None)
        if f:
            paths.append(f)
    return paths


def _fingerprint(paths):
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
        else:
            # Not st_ino: gVisor numbers inodes anew after a restore, and a zygote
            # restored from a snapshot must not find itself stale; a replaced file
            # has a new ctime.
            out.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return out


def _unfit():
    """Why a forked run could differ from a fresh interpreter, or None."""
    if "usercustomize" in sys.modules:
        return "usercustomize runs at start-up"
    f = getattr(sys.modules.get("sitecustomize"), "__file__", None)
    if f and os.access(f, os.W_OK):
        return "sitecustomize is the run user's"
    return None


_SPACE = _socket.CMSG_SPACE(16 * 4)
_FLAGS = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)


def _recv(sock):
    """One request: (message, fds, flags); message and fds empty when the agent hung up."""
    msg, anc, flags, _ = sock.recvmsg(1 << 16, _SPACE, _FLAGS)
    fds = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, n, 4)]
    return msg, fds, flags


def _serve():
    """The zygote: keeps one forked spare waiting for the next run, reports each run's
    exit, and returns None when it is done. In a spare that takes a run, it returns the
    run to become."""
    sock = _socket.socket(fileno=_CTRL)
    sock.setblocking(True)
    os.set_inheritable(_CTRL, False)
    why = _unfit()
    if why:
        sock.send(b"unfit " + why.encode())
        return None
    paths = _watched()
    base = _fingerprint(paths)
    me = os.getpid()
    taken_r, taken_w = os.pipe()  # a spare says here what became of it: run, stale
    os.set_blocking(taken_r, False)
    ready = False
    idle_deaths = 0
    try:
        while idle_deaths < 3:
            if "freeze" in _FAST:
                _before_fork()
            try:
                spare, err = os.fork(), None
            except OSError as e:
                spare, err = None, e
            if spare == 0:
                os.close(taken_r)
                return _spare(sock, taken_w, paths, base, me)
            if not ready:
                sock.send(b"ready")
                ready = True
            if spare is None:
                # No spare (the user is at its process limit): refuse runs for a while.
                if not _refuse(sock, b"error fork: " + str(err).encode(), 0.5):
                    return None
                continue
            try:
                os.setpgid(spare, spare)  # as the spare does: the agent kills its group
            except OSError:
                pass
            status = os.waitpid(spare, 0)[1]
            try:
                what = os.read(taken_r, 1)
            except BlockingIOError:
                what = b""
            if what == b"r":
                sock.send(b"exit %d" % status)
                idle_deaths = 0
                if "hint" in _FAST and not _await_hint(sock):
                    return None
            elif what == b"s" or _hung_up(sock):
                return None
            else:
                idle_deaths += 1  # killed while waiting: fork another
    except OSError:
        pass
    return None


_frozen = False


def _before_fork():
    """The first time, moves the zygote's start-up objects to the GC's permanent
    generation (gc.freeze), so that the spares' collections and exits leave their pages
    alone; later, collects the young generations instead. A freeze before each fork
    would also freeze the cyclic garbage the zygote made since the last one, never to be
    collected (a slow leak); what the zygote keeps after start-up is little."""
    global _frozen
    if _frozen:
        gc.collect(1)
    else:
        gc.freeze()
        _frozen = True


def _await_hint(sock):
    """Waits until the agent has sent the run's result and says so ("spare"), at most
    _HINT_WAIT, so that the next fork does not slow the result down. A run asked for
    before the hint (the agent does not send one) is refused, nothing ran. False if the
    agent hung up."""
    return _refuse(sock, b"error no spare yet", _HINT_WAIT)


def _hung_up(sock):
    try:
        return sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _refuse(sock, reply, wait):
    """Answers one request (if one comes within wait) with reply, or takes the agent's
    "spare" hint, which needs no answer; False if the agent hung up."""
    sock.settimeout(wait)
    try:
        msg, fds, _ = _recv(sock)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(None)
    for fd in fds:
        os.close(fd)
    if not msg and not fds:
        return False
    if msg == b"spare" and not fds:
        return True  # a hint, not a request: answering it would hand the agent's
        # next request this reply
    try:
        sock.send(reply)
    except OSError:
        return False
    return True


def _spare(sock, taken, paths, base, zygote):
    """A spare: waits for a run, checks it can be forked here, and returns it; exits when
    the agent hangs up or the zygote is stale."""
    while True:
        try:
            msg, fds, flags = _recv(sock)
        except OSError:
            os._exit(0)
        if not msg and not fds:
            os._exit(0)
        if msg == b"spare" and not fds:
            continue  # a hint that came after the zygote stopped waiting for it
        parts = msg.split(b"\0")
        reply = None
        if os.getppid() != zygote:
            reply = b"gone"  # the zygote died: nobody would report the run's exit
        elif parts[0] != b"run" or len(parts) < 4 or len(fds) != 3 or flags & _socket.MSG_CTRUNC:
            reply = b"error bad request"
        elif _fingerprint(paths) != base:
            os.write(taken, b"s")
            reply = b"stale"
        else:
            try:
                os.chdir(parts[2])
            except OSError as e:
                reply = b"error chdir: " + str(e).encode()
        if reply is None:
            try:
                os.setpgid(0, 0)  # done by the zygote too; the agent kills this group
            except OSError:
                pass
            os.write(taken, b"r")
            try:
                sock.send(b"pid %d" % os.getpid())
            except OSError:
                os._exit(255)
            return sock, taken, fds, zygote, [os.fsdecode(p) for p in parts[1:]]
        for fd in fds:
            os.close(fd)
        try:
            sock.send(reply)
        except OSError:
            os._exit(0)
        if reply in (b"stale", b"gone"):
            os._exit(0)


def _stream(fd, name, write, encoding, errors):
    """sys.stdin/stdout/stderr as create_stdio() makes them for python3 -u."""
    buf = io.open(fd, "wb" if write else "rb", 0 if write else -1, None, None, None, False)
    raw = buf if write else buf.raw
    raw.name = name
    s = io.TextIOWrapper(buf, encoding, errors, "\n", False, True)
    s.mode = "w" if write else "r"
    return s


def _become(sock, taken, fds, zygote, args):
    """Turns a spare into args[2:] (python3 -u script; it is already in its cwd)."""
    script, argv = args[0], args[2:]
    os.close(taken)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    sys.stdin = sys.__stdin__ = _stream(0, "<stdin>", False, *_STDIO[0])
    sys.stdout = sys.__stdout__ = _stream(1, "<stdout>", True, *_STDIO[1])
    sys.stderr = sys.__stderr__ = _stream(2, "<stderr>", True, *_STDIO[2])
    sys.argv = [script]
    sys.orig_argv = argv
    if not sys.flags.safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    cache = sys.path_importer_cache
    for finder in list(cache.values()):
        if hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()
    cache[script] = None
    sys.modules.pop("_socket", None)
    if not _GC_LOADED:
        sys.modules.pop("gc", None)
    main = type(sys)("__main__")
    d = main.__dict__
    d["__annotations__"] = {}
    d["__builtins__"] = sys.modules["builtins"]
    d["__loader__"] = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", script)
    d["__file__"] = script
    d["__cached__"] = None
    sys.modules["__main__"] = main
    # Last: the zygote must live to report the exit. Without "go" the agent knows that
    # the script did not run, and runs it the normal way.
    try:
        if os.getppid() != zygote:
            raise OSError
        sock.send(b"go")
    except OSError:
        os._exit(255)
    sock.close()
    return main


def _load(path):
    try:
        with io.open(path, "rb") as f:
            src = f.read()
    except OSError as e:
        _stderr("%s: can't open file %r: [Errno %d] %s\n" % (sys.orig_argv[0], path, e.errno, e.strerror))
        raise SystemExit(2)
    return compile(src, path, "exec", dont_inherit=True)


def _stderr(s):
    """PySys_WriteStderr."""
    f = getattr(sys, "stderr", None)
    try:
        if f is None:
            os.write(2, s.encode("utf-8", "backslashreplace"))
        else:
            f.write(s)
    except Exception:
        pass


def _strip(tb):
    """Drops this file's frames from the head of a traceback."""
    while tb is not None and tb.tb_frame.f_globals is _G:
        tb = tb.tb_next
    return tb


def _quiet(*args):
    pass


def _end(main):
    # _PyRun_SimpleFileObject removes them once the script is done.
    main.__dict__.pop("__file__", None)
    main.__dict__.pop("__cached__", None)


def _uncaught(e, main):
    """Prints an exception that ended the script as PyErr_Print does. Returns True if the
    process must re-raise it (an unhandled KeyboardInterrupt ends python3 by SIGINT)."""
    tb = _strip(e.__traceback__)
    e.__traceback__ = tb
    t = type(e)
    sys.last_type, sys.last_value, sys.last_traceback = t, e, tb
    hook = sys.__dict__.get("excepthook")
    show = True
    try:
        sys.audit("sys.excepthook", hook, t, e, tb)
    except RuntimeError:
        show = False
    except Exception:
        pass
    if show and hook is None:
        _stderr("sys.excepthook is missing\n")
        sys.__excepthook__(t, e, tb)
    elif show:
        try:
            hook(t, e, tb)
        except SystemExit:
            raise
        except BaseException as e2:
            tb2 = e2.__traceback__ = _strip(e2.__traceback__)
            _stderr("Error in sys.excepthook:\n")
            sys.__excepthook__(type(e2), e2, tb2)
            _stderr("\nOriginal exception was:\n")
            sys.__excepthook__(t, e, tb)
    _end(main)
    if t is KeyboardInterrupt:
        sys.excepthook = _quiet
        return True
    return False


def _exit_status(e):
    """The exit status of an uncaught SystemExit, printing a code that is not an int, as
    _Py_HandleSystemExit does."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 0xFF  # exit((int)long)
    f = getattr(sys, "stderr", None)
    try:
        if f is None:
            os.write(2, str(code).encode("utf-8", "backslashreplace"))
        else:
            f.write(str(code))
    except Exception:
        pass
    _stderr("\n")
    return 1


def _flush_std():
    """flush_std_files: False if a flush failed (the exit status becomes 120)."""
    ok = True
    for name in ("stdout", "stderr"):
        f = getattr(sys, name, None)
        if f is None or getattr(f, "closed", False):
            continue
        try:
            f.flush()
        except Exception as e:
            ok = False
            if name == "stdout":
                _stderr("Exception ignored in: %r\n" % (f,))
                sys.__excepthook__(type(e), e, e.__traceback__)
    return ok


def _clear(d):
    """_PyModule_ClearDict: names with one leading underscore first, then the rest."""
    for first in (True, False):
        for k in list(d):
            if k == "__builtins__" or not isinstance(k, str):
                continue
            if not first or (k[:1] == "_" and k[1:2] != "_"):
                d[k] = None


def _exit(status):
    """Ends a forked run as Py_FinalizeEx ends python3 as far as the program can tell:
    joins its threads, runs its atexit handlers, flushes stdio, collects the garbage,
    finalizes the run's own modules (newest first) and the objects only they held,
    flushes stdio again; then leaves with os._exit,
    without tearing down what the run inherited from the zygote (which would touch, and
    so copy, most of the zygote's pages)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    import atexit
    atexit._run_exitfuncs()
    ok = _flush_std()
    # As finalize_modules_delete_special does first: an uncaught exception's traceback
    # (sys.last_*, set by _uncaught) holds the frames it went through, and the objects
    # in them (an unflushed file) are finalized once it goes.
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):
        sys.__dict__.pop(name, None)
    gc.collect()  # as finalize_modules does next: garbage already unreachable
    mods = [m for n, m in reversed(list(sys.modules.items())) if _ZYGOTE_MODULES.get(n) is not m]
    for m in mods:
        d = getattr(m, "__dict__", None)
        if type(d) is dict:
            _clear(d)
    mods = m = d = None
    gc.collect()
    ok = _flush_std() and ok
    os._exit(status if ok else 120)


_run = _serve()
if _run is None:
    raise SystemExit(0)
_main = _become(*_run)
_run = None
_status = 0
try:
    exec(_load(_main.__file__), _main.__dict__)
except SystemExit as _e:
    if "exit" not in _FAST:
        raise
    _status = _exit_status(_e)
except BaseException as _e:
    _run = _e  # handled below, outside the except clause: PyErr_Print handles nothing
else:
    _end(_main)
if _run is not None:
    if _uncaught(_run, _main):
        raise _run
    if "exit" not in _FAST:
        raise SystemExit(1)
    _status, _run = 1, None
if "exit" in _FAST:
    _main = None
    _exit(_status)
