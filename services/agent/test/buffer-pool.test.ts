import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { BufferPool } from '../src/cache/buffer-pool.js';

const MiB = 1024 * 1024;

describe('BufferPool', () => {
  it('hands the same buffers out again, up to its size', () => {
    const pool = new BufferPool(2 * MiB);
    const taken = [pool.take(MiB), pool.take(MiB), pool.take(MiB)];
    for (const buffer of taken) {
      pool.give(buffer);
    }
    // The third did not fit: 2 MiB kept.
    assert.equal(pool.bytes, 2 * MiB);
    const again = pool.take(MiB);
    assert.ok(taken.includes(again));
    assert.equal(pool.bytes, MiB);
  });

  it('lets go of its free buffers only once it has been idle for a whole trim period', () => {
    const pool = new BufferPool(8 * MiB);
    const taken = [pool.take(MiB), pool.take(MiB), pool.take(MiB)];
    for (const buffer of taken) {
      pool.give(buffer);
    }
    // Buffers were taken since the last trim: the pool is in use and keeps them.
    pool.trimIdle(0);
    assert.equal(pool.bytes, 3 * MiB);
    // Nothing taken since: idle, down to what it is told to keep.
    pool.trimIdle(MiB);
    assert.equal(pool.bytes, MiB);
    pool.trimIdle(0);
    assert.equal(pool.bytes, 0);
    // Empty, it allocates anew and still takes buffers back.
    const fresh = pool.take(MiB);
    assert.ok(!taken.includes(fresh));
    pool.give(fresh);
    assert.equal(pool.bytes, MiB);
  });
});
