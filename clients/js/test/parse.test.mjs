// The parsers that need no server: Server-Sent Events (as the HTML standard says) and
// the code blocks of an LLM reply (as the seed's client found them, without its misses).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SSEParser, extractCodeBlocks, canonicalLanguage } from '../vmexec.js';

function parseAll(chunks) {
  const p = new SSEParser();
  const out = [];
  for (const c of chunks) out.push(...p.push(typeof c === 'string' ? new TextEncoder().encode(c) : c));
  out.push(...p.end());
  return out.map(({ event, data }) => [event, data]);
}

describe('SSEParser', () => {
  const cases = [
    ['one event', 'event: stdout\ndata: x\n\n', [['stdout', 'x']]],
    ['default event name', 'data: x\n\n', [['message', 'x']]],
    ['multi-line data joined with LF', 'data: a\ndata: b\ndata:\n\n', [['message', 'a\nb\n']]],
    ['comments ignored', ': hello\n:keep-alive\ndata: x\n\n', [['message', 'x']]],
    ['retry, id and unknown fields ignored', 'retry: 10\nid: 7\nfoo: bar\ndata: x\n\n', [['message', 'x']]],
    ['CRLF line ends', 'event: e\r\ndata: x\r\n\r\n', [['e', 'x']]],
    ['CR line ends', 'event: e\rdata: x\r\r', [['e', 'x']]],
    ['only one leading space is stripped', 'data:  two\n\n', [['message', ' two']]],
    ['no space after the colon', 'data:x\n\n', [['message', 'x']]],
    ['a field without a colon', 'data\n\n', [['message', '']]],
    ['an event without data is not dispatched', 'event: e\n\n', []],
    ['the event name resets after dispatch', 'event: a\ndata: 1\n\ndata: 2\n\n', [['a', '1'], ['message', '2']]],
    ['an unterminated last event is dropped', 'data: 1\n\ndata: 2', [['message', '1']]],
    ['a leading BOM is skipped', '\ufeffdata: x\n\n', [['message', 'x']]],
  ];
  for (const [name, wire, want] of cases) {
    it(name, () => {
      assert.deepEqual(parseAll([wire]), want, 'whole');
      const bytes = new TextEncoder().encode(wire);
      for (let i = 1; i < bytes.length; i++) { // split at every byte, inside CRLFs and characters
        assert.deepEqual(parseAll([bytes.subarray(0, i), bytes.subarray(i)]), want, `split at ${i}`);
      }
      assert.deepEqual(parseAll([...bytes].map((b) => new Uint8Array([b]))), want, 'byte by byte');
    });
  }

  it('multi-byte characters split across chunks', () => {
    const bytes = new TextEncoder().encode('data: {"data":"日本語 é 🎉"}\n\n');
    for (let i = 1; i < bytes.length; i++) {
      const got = parseAll([bytes.subarray(0, i), bytes.subarray(i)]);
      assert.equal(JSON.parse(got[0][1]).data, '日本語 é 🎉', `split at ${i}`);
    }
  });
});

describe('extractCodeBlocks', () => {
  const cases = [
    ['a labeled fence', 'Run:\n```python\nprint(1)\n```\n', [['python', 'print(1)', true]]],
    ['document order across fence kinds', '```bash\necho 1\n```\n~~~js\nconsole.log(2)\n~~~\n```rust\nfn main(){}\n```',
      [['bash', 'echo 1', true], ['javascript', 'console.log(2)', true], ['rust', 'fn main(){}', true]]],
    ['aliases are canonical', '```py\nx\n```\n```sh\ny\n```\n```golang\nz\n```', [['python', 'x', true], ['bash', 'y', true], ['go', 'z', true]]],
    ['unlabeled defaults to python, as the seed did', '```\nprint(2+2)\n```', [['python', 'print(2+2)', true]]],
    ['a longer fence holds a shorter one', '````markdown\n```python\nx\n```\n````', [['markdown', '```python\nx\n```', true]]],
    ['CRLF', '```bash\r\necho hi\r\n```\r\n', [['bash', 'echo hi', true]]],
    ['an info string with attributes', '```python {title="a.py"}\nprint(1)\n```', [['python', 'print(1)', true]]],
    ['a truncated reply: the last fence is unclosed', 'x\n```python\nprint(1)\nprint(2', [['python', 'print(1)\nprint(2', false]]],
    ['inside a list item', '1. Do this:\n   ```bash\n   echo a\n   ```\n', [['bash', 'echo a', true]]],
    ['inside a block quote', '> ```bash\n> echo q\n> ```\n', [['bash', 'echo q', true]]],
    ['inline backticks are not a fence', 'use ```python``` inline', []],
    ['an unknown language is kept as written', '```cobol\nDISPLAY 1\n```', [['cobol', 'DISPLAY 1', true]]],
  ];
  for (const [name, text, want] of cases) {
    it(name, () => {
      const got = extractCodeBlocks(text);
      assert.deepEqual(got.map((b) => [b.language, b.code, b.closed]), want);
      got.forEach((b, i) => assert.equal(b.index, i));
    });
  }

  it('canonicalLanguage', () => {
    assert.equal(canonicalLanguage('Python3'), 'python');
    assert.equal(canonicalLanguage('nodejs'), 'javascript');
    assert.equal(canonicalLanguage('cobol'), null);
  });
});
