/** Retry-After parsing and the holds it starts, on a clock the test moves. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MAX_HOLD_MS, RateLimitHolds, retryAfterMs } from '../src/index.js';

describe('retryAfterMs', () => {
  it('reads delay-seconds and HTTP dates, capped, and nothing else', () => {
    const now = Date.parse('Mon, 30 Nov 2026 21:00:00 GMT');
    assert.equal(retryAfterMs('7', now), 7000);
    assert.equal(retryAfterMs(' 0 ', now), 0);
    assert.equal(retryAfterMs('Mon, 30 Nov 2026 21:00:30 GMT', now), 30_000);
    assert.equal(retryAfterMs('Mon, 30 Nov 2026 20:59:00 GMT', now), 0, 'a date past is now');
    assert.equal(retryAfterMs('99999999', now), MAX_HOLD_MS);
    assert.equal(retryAfterMs(undefined, now), undefined);
    assert.equal(retryAfterMs('soon', now), undefined);
    assert.equal(retryAfterMs('-5', now), undefined);
  });
});

describe('RateLimitHolds', () => {
  it('holds the same registry, method and credential until the Retry-After has passed', () => {
    let now = 1_000_000;
    const holds = new RateLimitHolds(() => now);
    assert.equal(holds.note('docker.io', 'GET', 'Bearer a', 200, '5'), undefined);
    assert.equal(holds.note('docker.io', 'GET', 'Bearer a', 429, undefined), undefined);
    assert.equal(holds.held('docker.io', 'GET', 'Bearer a'), undefined);
    assert.equal(holds.note('docker.io', 'GET', 'Bearer a', 429, '5'), 5000);
    assert.deepEqual(holds.held('docker.io', 'GET', 'Bearer a'), { retryAfterS: 5 });
    assert.equal(holds.held('docker.io', 'HEAD', 'Bearer a'), undefined, 'HEADs are free');
    assert.equal(holds.held('docker.io', 'GET', 'Bearer b'), undefined, 'another account');
    assert.equal(holds.held('docker.io', 'GET', undefined), undefined, 'anonymous');
    assert.equal(holds.held('ghcr.io', 'GET', 'Bearer a'), undefined, 'another registry');
    now += 3_500;
    assert.deepEqual(holds.held('docker.io', 'GET', 'Bearer a'), { retryAfterS: 2 });
    now += 1_499;
    assert.deepEqual(holds.held('docker.io', 'GET', 'Bearer a'), { retryAfterS: 1 });
    now += 1;
    assert.equal(holds.held('docker.io', 'GET', 'Bearer a'), undefined);
  });
});
