import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PieceBuffers } from '../src/buffers.js';

const KiB = 1024;

describe('PieceBuffers', () => {
  it('hands out buffers of the exact size asked, reusing blocks given back', () => {
    const pool = new PieceBuffers(8 * 1024 * KiB);
    const first = pool.take(300 * KiB);
    assert.equal(first.length, 300 * KiB);
    first.fill(7);
    pool.give(first);
    assert.equal(pool.bytes, 512 * KiB, 'a 300 KiB piece lives in a 512 KiB block');
    // The odd last piece of another blob reuses the same block.
    const second = pool.take(400 * KiB);
    assert.equal(second.length, 400 * KiB);
    assert.equal(second.buffer, first.buffer);
    assert.equal(pool.bytes, 0);
  });

  it('ignores buffers it did not allocate, and a second give of one it did', () => {
    const pool = new PieceBuffers(8 * 1024 * KiB);
    pool.give(Buffer.allocUnsafeSlow(256 * KiB));
    pool.give(Buffer.alloc(0));
    assert.equal(pool.bytes, 0);
    const taken = pool.take(256 * KiB);
    pool.give(taken);
    pool.give(taken);
    assert.equal(pool.bytes, 256 * KiB);
    // A view past the start of a block is not the block.
    const again = pool.take(256 * KiB);
    pool.give(again.subarray(1));
    assert.equal(pool.bytes, 0);
  });

  it('keeps at most its budget of free blocks', () => {
    const pool = new PieceBuffers(1024 * KiB);
    const buffers = [pool.take(1024 * KiB), pool.take(1024 * KiB)];
    for (const buffer of buffers) {
      pool.give(buffer);
    }
    assert.equal(pool.bytes, 1024 * KiB);
  });

  it('lets go of its free blocks only once it has been idle for a whole trim period', () => {
    const pool = new PieceBuffers(8 * 1024 * KiB);
    const taken = [pool.take(1024 * KiB), pool.take(1024 * KiB), pool.take(1024 * KiB)];
    const blocks = taken.map((buffer) => buffer.buffer);
    for (const buffer of taken) {
      pool.give(buffer);
    }
    // Blocks were taken since the last trim: the pool is in use and keeps them.
    pool.trimIdle(0);
    assert.equal(pool.bytes, 3 * 1024 * KiB);
    // Nothing taken since: idle, down to what it is told to keep.
    pool.trimIdle(1024 * KiB);
    assert.equal(pool.bytes, 1024 * KiB);
    pool.trimIdle(0);
    assert.equal(pool.bytes, 0);
    // Empty, it allocates anew and still takes blocks back.
    const fresh = pool.take(1024 * KiB);
    assert.ok(!blocks.includes(fresh.buffer));
    pool.give(fresh);
    assert.equal(pool.bytes, 1024 * KiB);
  });
});
