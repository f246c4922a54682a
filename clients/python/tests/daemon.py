"""The real daemon for the client tests: `vmexec serve` built from this tree, on a free
loopback port, with a temporary data dir, the template of scripts/setup and its runsc."""

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DATA = os.environ.get("VMEXEC_DATA_DIR", "/var/lib/vmexec")


def runsc():
    for p in (os.environ.get("VMEXEC_RUNSC"), os.path.join(DATA, "tools", "runsc")):
        if p and os.path.exists(p):
            return p
    return ""


def missing():
    """Why the sandbox tests cannot run here, or '' when they can."""
    if os.geteuid() != 0:
        return "sandbox tests need root (runsc): run scripts/test as root"
    if not runsc():
        return "runsc not installed: run scripts/setup (as root)"
    tpl = os.path.join(DATA, "templates")
    if not os.path.isdir(tpl) or not os.listdir(tpl):
        return f"no template in {tpl}: run scripts/setup"
    return ""


_bins = None


def binaries():
    """$VMEXEC_BIN and $VMEXEC_AGENT_BIN when set (scripts/test builds them once), else
    built from this tree into a temporary directory."""
    global _bins
    if _bins:
        return _bins
    if os.environ.get("VMEXEC_BIN") and os.environ.get("VMEXEC_AGENT_BIN"):
        _bins = (os.environ["VMEXEC_BIN"], os.environ["VMEXEC_AGENT_BIN"])
        return _bins
    d = tempfile.mkdtemp(prefix="vmexec-py-bin-")
    atexit.register(shutil.rmtree, d, True)
    env = dict(os.environ, PATH="/usr/local/go/bin:" + os.environ.get("PATH", ""))
    subprocess.run(["go", "build", "-o", os.path.join(d, "vmexec"), "./cmd/vmexec"], cwd=REPO, env=env, check=True)
    subprocess.run(["go", "build", "-o", os.path.join(d, "vmexec-agent"), "./cmd/vmexec-agent"], cwd=REPO,
                   env=dict(env, CGO_ENABLED="0"), check=True)
    _bins = (os.path.join(d, "vmexec"), os.path.join(d, "vmexec-agent"))
    return _bins


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self):
        vmexec, agent = binaries()
        self.data = tempfile.mkdtemp(prefix="vmexec-py-data-")
        self.log_path = self.data + ".log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "wb")
        # setpriv --pdeathsig: the daemon gets SIGTERM if this test process dies
        # without stopping it (killed, a broken pipe), so no daemon outlives its tests.
        guard = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
        self.proc = subprocess.Popen(
            guard + [vmexec, "serve", "--addr", f"127.0.0.1:{port}", "--data-dir", self.data,
             "--template-dir", os.path.join(DATA, "templates"), "--runsc", runsc(), "--agent", agent,
             "--log-level", "debug", "--pool-size", "1"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("vmexec serve exited at start; log:\n" + self.log()[-4000:])
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("vmexec serve did not become healthy; log:\n" + self.log()[-4000:])
            time.sleep(0.1)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.data, ignore_errors=True)
        try:
            os.remove(self.log_path)
        except OSError:
            pass


def wait_until(f, timeout=60, what="condition"):
    end = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
