// The guard itself (lib/guard.mjs): a connection to a host that is not loopback is
// refused before any DNS lookup, and recorded, so a suite whose SDK was pointed at
// E2B's cloud fails instead of sending it anything.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { violations, pointAt } from '../lib/guard.mjs';

describe('the loopback guard', () => {
  it('refuses E2B\'s cloud, whatever the SDK is told', async () => {
    pointAt('http://127.0.0.1:9', 'e2b_' + '0'.repeat(40));
    const { Sandbox } = await import('e2b');
    await assert.rejects(Sandbox.create({ apiUrl: 'https://api.e2b.app' }));
    await assert.rejects(fetch('https://sandbox.e2b.app/health'));
    assert.deepEqual(violations(), ['api.e2b.app', 'sandbox.e2b.app']);
  });
});
