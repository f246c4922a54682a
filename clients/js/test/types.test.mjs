// index.d.ts is checked by the TypeScript compiler (pinned in package.json, installed
// by `npm ci`) against an example that uses every surface: tsc --noEmit.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('..', import.meta.url));
const tsc = `${dir}node_modules/typescript/bin/tsc`;

it('tsc --noEmit accepts examples/typed.ts against index.d.ts', { skip: existsSync(tsc) ? false : 'typescript is not installed: run `npm ci` in clients/js' }, () => {
  try {
    execFileSync(process.execPath, [tsc, '--noEmit', '-p', 'test/tsconfig.json'], { cwd: dir, encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});
