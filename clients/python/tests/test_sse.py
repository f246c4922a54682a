"""The SSE parser as the HTML standard says, fed in chunks split at every byte."""

import json
import unittest

from vmexec import SSEParser


def parse_all(chunks):
    p = SSEParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    out += p.close()
    return [(e.type, e.data) for e in out]


CASES = [
    ("one event", "event: stdout\ndata: {\"data\":\"x\"}\n\n", [("stdout", {"data": "x"})]),
    ("default event name", "data: x\n\n", [("message", "x")]),
    ("multi-line data joined with LF", "data: a\ndata: b\ndata:\n\n", [("message", "a\nb\n")]),
    ("multi-line JSON", "event: r\ndata: {\"a\":\ndata: 1}\n\n", [("r", {"a": 1})]),
    ("comments ignored", ": hello\n:keep-alive\ndata: x\n\n", [("message", "x")]),
    ("retry, id and unknown fields ignored", "retry: 10\nid: 7\nfoo: bar\ndata: x\n\n", [("message", "x")]),
    ("CRLF line ends", "event: e\r\ndata: x\r\n\r\n", [("e", "x")]),
    ("CR line ends", "event: e\rdata: x\r\r", [("e", "x")]),
    ("only one leading space is stripped", "data:  two\n\n", [("message", " two")]),
    ("no space after the colon", "data:x\n\n", [("message", "x")]),
    ("a field without a colon", "data\n\n", [("message", "")]),
    ("an event without data is not dispatched", "event: e\n\n", []),
    ("the event name resets after dispatch", "event: a\ndata: 1\n\ndata: 2\n\n", [("a", 1), ("message", 2)]),
    ("an unterminated last event is dropped", "data: 1\n\ndata: 2", [("message", 1)]),
    ("a leading BOM is skipped", "\ufeffdata: x\n\n", [("message", "x")]),
    ("multi-byte characters", "data: {\"data\":\"日本語 é 🎉\"}\n\n", [("message", {"data": "日本語 é 🎉"})]),
]


class SSEParserTest(unittest.TestCase):
    def test_cases(self):
        for name, wire, want in CASES:
            raw = wire.encode()
            with self.subTest(name):
                self.assertEqual(parse_all([raw]), want, "whole")
                for i in range(1, len(raw)):
                    self.assertEqual(parse_all([raw[:i], raw[i:]]), want, f"split at {i}")
                self.assertEqual(parse_all([bytes([b]) for b in raw]), want, "byte by byte")

    def test_event_text_and_block(self):
        p = SSEParser()
        [ev] = p.feed(b'event: stdout\ndata: ' + json.dumps({"data": "hi\n", "block": 2}).encode() + b"\n\n")
        self.assertEqual((ev.type, ev.text, ev.block), ("stdout", "hi\n", 2))


if __name__ == "__main__":
    unittest.main()
