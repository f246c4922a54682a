"""The retry rule and the wire against a loopback stub server: 503/429 then 200 are
retried (Retry-After honoured), a reset before a response is retried, a refused
connection is retried then raised; a failed program and other statuses are not."""

import json
import socket
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import vmexec
from tests.daemon import free_port

RESULT = {"execution_id": "ex-1", "sandbox_id": "sb-1", "exit_code": 0, "verdict": "ok", "stdout": "ok\n", "stderr": ""}
BUSY = (503, {"error": "too many sandboxes", "code": "limit"}, {"Retry-After": "0"})


class Stub:
    """Answers each request with the next response: (status, body, headers), or a
    callable(handler) that writes its own answer. Records what it saw."""

    def __init__(self, responses):
        self.responses = responses
        self.seen = []
        stub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                stub.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                r = stub.responses[min(len(stub.seen) - 1, len(stub.responses) - 1)]
                if callable(r):
                    return r(self)
                status, obj, headers = (r + ({},))[:3]
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reset(h):
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    h.connection.close()
    h.close_connection = True


def sse(text):
    def write(h):
        raw = text.encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)
    return write


class RetryTest(unittest.TestCase):
    def stub(self, responses):
        s = Stub(responses)
        self.addCleanup(s.close)
        return s

    def test_503_then_200_honours_retry_after(self):
        s = self.stub([BUSY, (200, RESULT)])
        vx = vmexec.Client(s.url, retry_base=3600, retry_cap=3600)  # only Retry-After: 0 lets this finish
        self.assertEqual(vx.exec("python", "print(1)", agent_id="a")["stdout"], "ok\n")
        self.assertEqual(len(s.seen), 2)
        self.assertEqual(s.seen[0]["body"], s.seen[1]["body"])

    def test_429_then_200(self):
        s = self.stub([(429, {"error": "queue full", "code": "busy"}), (200, RESULT)])
        self.assertEqual(vmexec.Client(s.url, retry_base=0.001).exec("bash", "true", agent_id="a")["verdict"], "ok")
        self.assertEqual(len(s.seen), 2)

    def test_failed_program_not_retried(self):
        s = self.stub([(200, dict(RESULT, exit_code=1, verdict="nonzero_exit")), (200, RESULT)])
        r = vmexec.Client(s.url, retry_base=0.001).exec("bash", "exit 1", agent_id="a")
        self.assertEqual(r["exit_code"], 1)
        self.assertEqual(len(s.seen), 1)

    def test_other_statuses_not_retried(self):
        for status, code in [(500, "internal"), (504, "timeout"), (400, "bad_request"), (409, "conflict")]:
            with self.subTest(status):
                s = self.stub([(status, {"error": "no", "code": code}), (200, RESULT)])
                with self.assertRaises(vmexec.VmexecError) as cm:
                    vmexec.Client(s.url, retry_base=0.001).exec("bash", "x", agent_id="a")
                self.assertEqual((cm.exception.status, cm.exception.code), (status, code))
                self.assertEqual(len(s.seen), 1)

    def test_gives_up_after_max_retries(self):
        s = self.stub([BUSY])
        with self.assertRaises(vmexec.VmexecError) as cm:
            vmexec.Client(s.url, max_retries=2, retry_base=0.001).health()
        self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.retryable), (503, "limit", True))
        self.assertEqual(len(s.seen), 3)

    def test_reset_before_response_retried(self):
        s = self.stub([reset, (200, RESULT)])
        self.assertEqual(vmexec.Client(s.url, retry_base=0.001).exec("bash", "true", agent_id="a")["verdict"], "ok")
        self.assertEqual(len(s.seen), 2)

    def test_refused(self):
        with self.assertRaises(vmexec.ConnectionFailed) as cm:
            vmexec.Client(f"http://127.0.0.1:{free_port()}", max_retries=2, retry_base=0.001).health()
        self.assertEqual((cm.exception.code, cm.exception.status, cm.exception.retryable), ("connection_error", 0, True))

    def test_timeout_not_retried(self):
        s = self.stub([lambda h: __import__("time").sleep(2), (200, RESULT)])
        with self.assertRaises(vmexec.Timeout):
            vmexec.Client(s.url, timeout=0.3, retry_base=0.001).health()
        self.assertEqual(len(s.seen), 1)

    def test_backoff(self):
        hi = lambda: 0.999999  # noqa: E731
        self.assertEqual([round(vmexec.backoff_delay(a, 0.1, 1.0, rand=hi), 3) for a in range(1, 7)], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual(vmexec.backoff_delay(1, 0.1, retry_after=2.5), 2.5)

    def test_bearer_and_body(self):
        s = self.stub([(200, RESULT)])
        vmexec.Client(s.url, api_key="sk-test").exec("python", "print(1)", agent_id="a", metadata={"n": 1, "x": None})
        h = {k.lower(): v for k, v in s.seen[0]["headers"].items()}
        self.assertEqual(h["authorization"], "Bearer sk-test")
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(json.loads(s.seen[0]["body"]), {"language": "python", "code": "print(1)", "agent_id": "a", "metadata": {"n": 1, "x": None}})

    def test_stream_from_stub(self):
        wire = (": stream open\r\n\r\nretry: 3000\r\nevent: stdout\r\ndata: {\"data\":\"h\\u00e9\\n\"}\r\n\r\n"
                ":keep-alive\n\nevent: stderr\ndata: {\"data\":\ndata: \"e\"}\n\n"
                f"event: result\ndata: {json.dumps(RESULT)}\n\n")
        s = self.stub([sse(wire)])
        events = list(vmexec.Client(s.url).stream("bash", "x", agent_id="a"))
        self.assertEqual([(e.type, e.text) for e in events[:2]], [("stdout", "hé\n"), ("stderr", "e")])
        self.assertEqual(events[-1].data, RESULT)
        self.assertEqual(s.seen[0]["headers"].get("Accept"), "text/event-stream")

    def test_stream_error_event(self):
        s = self.stub([sse('event: error\ndata: {"error":"no sandbox","code":"not_found"}\n\n')])
        with self.assertRaises(vmexec.VmexecError) as cm:
            list(vmexec.Client(s.url, retry_base=0.001).stream("bash", "x", sandbox_id="sb-x"))
        self.assertEqual((cm.exception.code, cm.exception.status), ("not_found", 404))
        self.assertEqual(s.seen[0]["path"], "/v1/sandboxes/sb-x/exec")
        self.assertEqual(len(s.seen), 1)

    def test_stream_refused_before_run_is_retried(self):
        s = self.stub([sse('event: error\ndata: {"error":"queue full","code":"busy"}\n\n'),
                       sse(f'event: stdout\ndata: {{"data":"1\\n"}}\n\nevent: result\ndata: {json.dumps(RESULT)}\n\n')])
        events = list(vmexec.Client(s.url, retry_base=0.001).stream("bash", "echo 1", agent_id="a"))
        self.assertEqual([e.type for e in events], ["stdout", "result"])
        self.assertEqual(len(s.seen), 2)

    def test_stream_without_result_is_an_error(self):
        s = self.stub([sse('event: stdout\ndata: {"data":"partial"}\n\n')])
        with self.assertRaises(vmexec.ConnectionFailed):
            list(vmexec.Client(s.url, retry_base=0.001).stream("bash", "x", agent_id="a"))
        self.assertEqual(len(s.seen), 1)


if __name__ == "__main__":
    unittest.main()
