"""The Python client against the real daemon (real gVisor sandboxes, real SQLite): every
method, streaming order, a blocked run, failure → rollback → state check, history
paging, files, policy."""

import json
import os
import re
import subprocess
import sys
import unittest

import vmexec
from tests.daemon import REPO, Daemon, missing, wait_until

WHY = missing()
D = None
_n = [0]


def agent(name):
    _n[0] += 1
    return f"py-{name}-{os.getpid()}-{_n[0]}"


def setUpModule():
    global D
    if not WHY:
        D = Daemon()


def tearDownModule():
    if D:
        D.stop()


@unittest.skipIf(WHY, WHY)
class DaemonTest(unittest.TestCase):
    def setUp(self):
        self.vx = vmexec.Client(D.url)

    def test_service(self):
        self.assertEqual(self.vx.health()["status"], "healthy")
        self.assertEqual(sorted(self.vx.languages()), sorted(vmexec.LANGUAGES))
        self.assertTrue(any(b["name"] == "gvisor" and b["default"] for b in self.vx.backends()))

    def test_exec_ok_and_failed_program_is_a_result(self):
        a = agent("exec")
        r = self.vx.exec("python", "import math; print(math.factorial(10))", agent_id=a)
        self.assertEqual((r["verdict"], r["stdout"].strip()), ("ok", "3628800"))
        bad = self.vx.exec("python", "print(undefined_name)", agent_id=a)
        self.assertEqual(bad["verdict"], "nonzero_exit")
        self.assertIn("NameError", bad["stderr"])

    def test_failure_rolls_back_state(self):
        vx = vmexec.Client(D.url, agent_id=agent("rb"))
        self.assertEqual(vx.exec("bash", "echo one > s.txt")["verdict"], "ok")
        f = vx.exec("bash", "echo two > s.txt; exit 3")
        self.assertEqual(f["exit_code"], 3)
        self.assertTrue(f["rolled_back"])
        self.assertTrue(f["failure_snapshot_id"].startswith("snap-"))
        self.assertEqual(vx.exec("bash", "cat s.txt")["stdout"], "one\n")

    def test_changes_and_diff(self):
        vx = vmexec.Client(D.url, agent_id=agent("changes"))
        self.assertEqual(vx.exec("bash", "echo one > notes.txt")["verdict"], "ok")
        r = vx.exec("bash", "echo two > notes.txt; echo x > new.txt")
        got = [(c["kind"], c["path"]) for c in r["changes"]]
        self.assertEqual(got, [("created", "/home/user/new.txt"), ("modified", "/home/user/notes.txt")])
        self.assertEqual(vx.run(r["execution_id"])["changes"], r["changes"])
        d = vx.run_change_diff(r["execution_id"], "notes.txt")
        self.assertIn("-one\n", d["diff"])
        self.assertIn("+two\n", d["diff"])
        off = vx.exec("bash", "echo y > y.txt", changes={"enabled": False})
        self.assertNotIn("changes", off)

    def test_blocked(self):
        r = self.vx.exec("bash", "rm -rf /home/user", agent_id=agent("blk"))
        self.assertEqual((r["verdict"], r["blocked_rule"], r["exit_code"]), ("blocked", "destroy_root", -1))
        self.assertTrue(r["blocked_reason"])

    def test_errors_carry_code_and_status(self):
        cases = [
            ("unknown sandbox", lambda: self.vx.sandbox("sb-000000000000"), 404, "not_found"),
            ("unknown language", lambda: self.vx.exec("cobol", "x", agent_id=agent("e")), 400, "bad_request"),
            ("unknown snapshot", lambda: self.vx.snapshot("snap-0000000000000000"), 404, "not_found"),
            ("bad limit", lambda: self.vx.history(limit=-1), 400, "bad_request"),
        ]
        for name, f, status, code in cases:
            with self.subTest(name), self.assertRaises(vmexec.VmexecError) as cm:
                f()
            self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.retryable), (status, code, False), name)

    def test_sandboxes(self):
        a = agent("sb")
        sb = self.vx.create_sandbox(agent_id=a, name="py-box")
        self.assertEqual(sb["name"], "py-box")
        self.assertIn(sb["id"], [s["id"] for s in self.vx.sandboxes()])
        self.assertEqual(self.vx.sandbox(sb["id"])["id"], sb["id"])
        r = self.vx.exec("javascript", "console.log(6*7)", agent_id=a, sandbox_id=sb["id"])
        self.assertEqual((r["stdout"], r["sandbox_id"]), ("42\n", sb["id"]))
        self.vx.delete_sandbox(sb["id"])
        with self.assertRaises(vmexec.VmexecError) as cm:
            self.vx.sandbox(sb["id"])
        self.assertEqual(cm.exception.status, 404)

    def test_snapshots_rollback_fork(self):
        a = agent("snap")
        vx = vmexec.Client(D.url, agent_id=a)
        sb = vx.exec("bash", "echo 1 > v.txt")["sandbox_id"]
        snap = vx.create_snapshot(sb, name="after-1", description="v is 1")
        self.assertEqual(snap["kind"], "manual")
        vx.exec("bash", "echo 2 > v.txt")
        self.assertIn(snap["id"], [s["id"] for s in vx.snapshots(sb)["snapshots"]])
        self.assertEqual(vx.snapshot(snap["id"])["sandbox_id"], sb)
        self.assertEqual(vx.rollback(sb, snap["id"])["snapshot_id"], snap["id"])
        self.assertEqual(vx.exec("bash", "cat v.txt")["stdout"], "1\n")
        fork = vx.fork(snap["id"], name="forked")
        self.assertNotEqual(fork["id"], sb)
        self.assertEqual(vx.exec("bash", "cat v.txt", sandbox_id=fork["id"])["stdout"], "1\n")
        vx.delete_sandbox(fork["id"])
        vx.delete_snapshot(snap["id"])
        with self.assertRaises(vmexec.VmexecError):
            vx.snapshot(snap["id"])

    def test_rollback_last_success(self):
        vx = vmexec.Client(D.url, agent_id=agent("last"))
        sb = vx.exec("bash", "echo good > t.txt")["sandbox_id"]
        f = vx.exec("bash", "echo bad > t.txt; exit 1", history={"auto_rollback_on_failure": False})
        self.assertFalse(f["rolled_back"])
        self.assertTrue(vx.rollback(sb, last_success=True)["snapshot_id"].startswith("snap-"))
        self.assertEqual(vx.exec("bash", "cat t.txt")["stdout"], "good\n")

    def test_history_paging(self):
        a = agent("hist")
        vx = vmexec.Client(D.url, agent_id=a)
        ids = [vx.exec("bash", f"echo {i}", metadata={"turn": i, "tags": ["x"], "none": None})["execution_id"] for i in range(3)]
        vx.exec("bash", "exit 1")
        page = vx.history(limit=2)
        self.assertEqual((len(page["runs"]), page["total"]), (2, 4))
        self.assertTrue(page.get("next_cursor"))
        runs = list(vx.history_iter(limit=1))
        self.assertEqual(len(runs), 4)
        self.assertEqual([r["id"] for r in runs[1:]][::-1], ids)
        fails = vx.history(failures_only=True)["runs"]
        self.assertEqual([r["exit_code"] for r in fails], [1])
        run = vx.run(ids[1])
        self.assertEqual(run["stdout"], "1\n")
        self.assertEqual(run["metadata"]["turn"], 1, "metadata keeps its JSON types")

    def test_policy(self):
        a = agent("pol")
        self.assertEqual(self.vx.set_policy(a, {"allowed_languages": ["python"]})["own"]["allowed_languages"], ["python"])
        self.assertEqual(self.vx.policy(a)["own"]["allowed_languages"], ["python"])
        r = self.vx.exec("bash", "echo hi", agent_id=a)
        self.assertEqual((r["verdict"], r["blocked_rule"]), ("blocked", "language_not_allowed"))

    def test_parse_execute(self):
        text = "First:\n```python\nprint('a')\n```\nthen\n~~~bash\necho b\n~~~\n"
        r = self.vx.parse_execute(text, agent_id=agent("pe"))
        self.assertTrue(r["success"])
        self.assertEqual([(b["block"]["language"], b["result"]["stdout"]) for b in r["blocks"]], [("python", "a\n"), ("bash", "b\n")])

    def test_stream_order(self):
        code = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; echo end"
        events = list(self.vx.stream("bash", code, agent_id=agent("st")))
        types = [e.type for e in events]
        self.assertEqual(types[-1], "result")
        self.assertEqual(types.count("result"), 1)
        self.assertIn("stdout", types[:-1])
        result = events[-1].data
        out = "".join(e.text for e in events if e.type == "stdout")
        err = "".join(e.text for e in events if e.type == "stderr")
        self.assertEqual(out, "out1\nout2\nout3\nend\n")
        self.assertEqual(out, result["stdout"])
        self.assertEqual(err, "err1\nerr2\nerr3\n")

    def test_stream_is_live_break_cancels(self):
        # If output came only at the end, the first chunk would follow a completed run;
        # arriving live, leaving the loop disconnects and the server cancels the run.
        a = agent("live")
        vx = vmexec.Client(D.url, agent_id=a)
        first = None
        for ev in vx.stream("bash", "echo tick; sleep 50; echo tock", limits={"timeout_ms": 120000}):
            self.assertNotEqual(ev.type, "result", "the run completed before its first output reached the client")
            if ev.type == "stdout":
                first = ev.text
                break
        self.assertEqual(first, "tick\n")
        run = wait_until(lambda: next((r for r in vx.history()["runs"] if r["status"] != "running"), None),
                         what="the canceled run in the history")
        self.assertEqual((run["verdict"], run["rolled_back"]), ("canceled", True))

    def test_stream_refused(self):
        for kw, status, code in [({"sandbox_id": "sb-000000000000"}, 404, "not_found"), ({}, 400, "bad_request")]:
            lang = "bash" if kw else "cobol"
            with self.subTest(code), self.assertRaises(vmexec.VmexecError) as cm:
                list(self.vx.stream(lang, "true", agent_id=agent("serr"), **kw))
            self.assertEqual((cm.exception.status, cm.exception.code), (status, code))

    def test_stream_failure_and_parse_execute_stream(self):
        vx = vmexec.Client(D.url, agent_id=agent("sf"))
        res = [e for e in vx.stream("bash", "echo x; exit 4") if e.type == "result"][0].data
        self.assertEqual((res["exit_code"], res["rolled_back"]), (4, True))
        events = list(vx.parse_execute_stream("```bash\necho one\n```\n```python\nprint('two')\n```\n"))
        blocks = [e.data for e in events if e.type == "block"]
        self.assertEqual([b["status"] for b in blocks], ["executed", "executed"])
        self.assertEqual(events[-1].type, "result")
        outs = [(e.block, e.text) for e in events if e.type == "stdout"]
        self.assertEqual(outs, [(0, "one\n"), (1, "two\n")])

    def test_files(self):
        a = agent("files")
        vx = vmexec.Client(D.url, agent_id=a)
        sb = vx.exec("bash", "true")["sandbox_id"]
        data = bytes((i * 7) & 0xFF for i in range(300_000))
        vx.write_file(sb, "dir/sub/data.bin", data)
        vx.write_file(sb, "note.txt", "héllo\n")
        self.assertEqual(vx.read_file(sb, "dir/sub/data.bin"), data)
        self.assertEqual(vx.read_file(sb, "note.txt").decode(), "héllo\n")
        self.assertEqual(vx.exec("bash", "cat note.txt; stat -c %s dir/sub/data.bin")["stdout"], "héllo\n300000\n")
        entries = vx.list_files(sb, "dir", depth=2)
        self.assertTrue(any(e["name"] == "data.bin" and e["size"] == 300000 for e in entries), entries)
        vx.delete_file(sb, "note.txt")
        with self.assertRaises(vmexec.VmexecError) as cm:
            vx.read_file(sb, "note.txt")
        self.assertEqual(cm.exception.status, 404)


@unittest.skipIf(WHY, WHY)
class ReadmeTest(unittest.TestCase):
    """The README's Python examples work when pasted (run in clients/python)."""

    def examples(self):
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        section = readme[readme.index("### Python client"):]
        section = section[:section.index("\n## ")]
        return re.findall(r"```python\n(.*?)```", section, re.S)

    def run_example(self, code):
        env = dict(os.environ, VMEXEC_URL=D.url)
        p = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(REPO, "clients", "python"),
                           env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def test_examples(self):
        first, tool = self.examples()
        out = self.run_example(first)
        self.assertTrue(out.startswith("ok 3628800\n"), out)
        self.assertIn("1\n2\n3\n-> ok\n", out)
        self.assertTrue(out.endswith("\n1\n"), out)
        got = json.loads(self.run_example(tool).strip().splitlines()[-1])
        self.assertEqual((got["verdict"], got["stdout"], got["rolled_back"]), ("ok", "45\n", False))


if __name__ == "__main__":
    unittest.main()
