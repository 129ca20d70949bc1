/** The waits of a consume loop with a backoff: spread at random, growing, capped. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { retryDelay } from '../src/consume.js';

describe('retryDelay', () => {
  it('is the fixed delay without a backoff', () => {
    assert.equal(retryDelay({ retryDelayMs: 5000 }, 7), 5000);
  });

  it('draws below a ceiling that doubles per failure in a row, up to the cap', () => {
    const top = { retryDelayMs: 1000, backoff: { maxDelayMs: 6000, random: () => 0.999999 } };
    assert.deepEqual(
      [1, 2, 3, 4, 5, 60].map((n) => retryDelay(top, n)),
      [999, 1999, 3999, 5999, 5999, 5999],
    );
    const bottom = { retryDelayMs: 1000, backoff: { maxDelayMs: 6000, random: () => 0 } };
    assert.equal(retryDelay(bottom, 3), 0);
    const half = { retryDelayMs: 1000, backoff: { maxDelayMs: 6000, random: () => 0.5 } };
    assert.equal(retryDelay(half, 2), 1000);
  });
});
