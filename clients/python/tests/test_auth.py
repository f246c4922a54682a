"""API keys: the client sends api_key as a bearer token; an authed daemon (a key made
with `vmexec keys create` on its data dir) serves it, and refuses a client without one
with a VmexecError 401 `unauthorized`."""

import subprocess
import unittest
import urllib.error
import urllib.request

import vmexec
from tests.daemon import Daemon, binaries, missing, wait_until

WHY = missing()
D = None
KEY = ""


def _refused():
    try:
        urllib.request.urlopen(D.url + "/v1/sandboxes", timeout=5)
    except urllib.error.HTTPError as e:
        return e.code == 401
    return False


def setUpModule():
    global D, KEY
    if WHY:
        return
    D = Daemon()
    KEY = subprocess.run([binaries()[0], "keys", "create", "--data-dir", D.data, "--name", "py", "--agents", "py-*"],
                         check=True, capture_output=True, text=True).stdout.strip()
    wait_until(_refused, what="keys in force")  # the running daemon picks it up in a second or two


def tearDownModule():
    if D:
        D.stop()


@unittest.skipIf(WHY, WHY)
class AuthTest(unittest.TestCase):
    def test_runs_with_the_key(self):
        r = vmexec.Client(D.url, api_key=KEY, agent_id="py-1").exec("python", "print(6*7)")
        self.assertEqual((r["verdict"], r["stdout"]), ("ok", "42\n"))

    def test_refused_without_or_with_a_wrong_key(self):
        for key in (None, "vmx_" + "0" * 40):
            with self.assertRaises(vmexec.VmexecError) as cm:
                vmexec.Client(D.url, api_key=key, agent_id="py-1").exec("python", "print(1)")
            self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthorized"))


if __name__ == "__main__":
    unittest.main()
