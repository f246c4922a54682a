"""Interpreter contexts through the Python client against the real daemon: cells keep
state and return values, stream through callbacks, a failing cell is rolled back with the
interpreter's memory; list, restart, delete; javascript with top-level await."""

import os
import unittest

import vmexec
from tests.daemon import Daemon, missing

WHY = missing()
D = None


def setUpModule():
    global D
    if not WHY:
        D = Daemon()


def tearDownModule():
    if D:
        D.stop()


@unittest.skipIf(WHY, WHY)
class ContextsTest(unittest.TestCase):
    def setUp(self):
        self.vx = vmexec.Client(D.url)

    def test_python_cells(self):
        sb = self.vx.create_sandbox(agent_id=f"py-ctx-{os.getpid()}")["id"]
        ctx = self.vx.create_context(sb, "python")
        self.assertTrue(ctx["id"].startswith("ctx_"))
        out, shown = [], []
        r = self.vx.run_cell(sb, ctx["id"], "x = 1\nprint('hello')\nx + 1",
                             on_stdout=out.append, on_display=shown.append)
        self.assertEqual(r["verdict"], "ok")
        self.assertEqual("".join(out), "hello\n")
        self.assertEqual([(o["text"], o["is_main_result"]) for o in shown], [("2", True)])
        bad = self.vx.run_cell(sb, ctx["id"], "x = 2\nraise ValueError('nope')")
        self.assertEqual(bad["verdict"], "error")
        self.assertEqual((bad["error"]["name"], bad["error"]["value"]), ("ValueError", "nope"))
        self.assertIn("ValueError: nope", bad["error"]["traceback"])
        self.assertTrue(bad["rolled_back"])
        self.assertEqual(self.vx.run_cell(sb, ctx["id"], "x")["results"][0]["text"], "1")
        kept = self.vx.run_cell(sb, ctx["id"], "x = 3\n1/0", rollback=False)
        self.assertFalse(kept["rolled_back"])
        self.assertEqual(self.vx.run_cell(sb, ctx["id"], "x")["results"][0]["text"], "3")
        self.assertEqual([c["id"] for c in self.vx.list_contexts(sb)], [ctx["id"]])
        self.vx.restart_context(sb, ctx["id"])
        self.assertEqual(self.vx.run_cell(sb, ctx["id"], "'x' in dir()")["results"][0]["text"], "False")
        self.vx.delete_context(sb, ctx["id"])
        self.assertEqual(self.vx.list_contexts(sb), [])
        with self.assertRaises(vmexec.VmexecError) as cm:
            self.vx.run_cell(sb, ctx["id"], "1")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))

    def test_javascript_cells(self):
        sb = self.vx.create_sandbox(agent_id=f"py-ctx-js-{os.getpid()}")["id"]
        ctx = self.vx.create_context(sb, "javascript")
        r = self.vx.run_cell(sb, ctx["id"], "const v = await Promise.resolve(41)\nv + 1")
        self.assertEqual((r["verdict"], r["results"][0]["text"]), ("ok", "42"))
        types = [ev.type for ev in self.vx.run_cell_stream(sb, ctx["id"], "console.log('v', v)\nv")]
        self.assertEqual(types, ["stdout", "display", "result"])
        with self.assertRaises(vmexec.VmexecError) as cm:
            self.vx.create_context(sb, "cobol")
        self.assertEqual(cm.exception.status, 400)


if __name__ == "__main__":
    unittest.main()
