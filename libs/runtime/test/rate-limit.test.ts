import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { RateLimiter } from '../src/index.js';

describe('RateLimiter', () => {
  it('lets everything through at rate 0', async () => {
    let waits = 0;
    const limiter = new RateLimiter(0, () => (waits += 1));
    for (let i = 0; i < 100; i++) {
      await limiter.take(1_000_000);
    }
    assert.equal(waits, 0);
  });

  it('makes callers wait once the burst is spent, and reports each wait', async () => {
    const waited: number[] = [];
    const limiter = new RateLimiter(1_000_000, (ms) => waited.push(ms));
    await limiter.take(1_000_000); // the burst
    const started = performance.now();
    await limiter.take(200_000);
    await limiter.take(200_000);
    const elapsed = performance.now() - started;
    assert.equal(waited.length, 2);
    // 400 kB at 1 MB/s needs about 400 ms; allow for timer slack both ways.
    assert.ok(elapsed >= 350, `waited ${elapsed} ms`);
    assert.ok(waited.reduce((a, b) => a + b, 0) >= 350);
  });

  it('applies a new rate at once', async () => {
    const limiter = new RateLimiter(1, () => undefined);
    limiter.setRate(0);
    const started = performance.now();
    await limiter.take(10_000_000);
    assert.ok(performance.now() - started < 100);
  });
});
