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

  it('makes room for the size in use by dropping free blocks of a size no longer taken', () => {
    const MiB = 1024 * KiB;
    const pool = new PieceBuffers(8 * MiB);
    // A blob of 4 MiB pieces fills the pool.
    const big = [pool.take(4 * MiB), pool.take(4 * MiB)];
    for (const buffer of big) {
      pool.give(buffer);
    }
    assert.equal(pool.bytes, 8 * MiB);
    // Then 1 MiB pieces, for longer than a download holds: the 4 MiB blocks go as they come back.
    const blocks = new Set<ArrayBufferLike>();
    for (let i = 0; i < 300; i++) {
      const piece = pool.take(MiB);
      blocks.add(piece.buffer);
      pool.give(piece);
    }
    // Fresh blocks only until the 4 MiB size went stale; then one of its blocks made room for a
    // 1 MiB one, used again from then on (before: a fresh block for each of the 300).
    assert.ok(blocks.size <= 40, `${blocks.size} blocks allocated for 300 takes`);
    assert.equal(pool.bytes, 5 * MiB, 'one 4 MiB block dropped for the 1 MiB one');
  });

  it('keeps sizes in use at once, the pool full or not', () => {
    const pool = new PieceBuffers(1024 * KiB);
    const small = [pool.take(256 * KiB), pool.take(256 * KiB)];
    const large = pool.take(512 * KiB);
    for (const buffer of [...small, large]) {
      pool.give(buffer);
    }
    // Full: 2 x 256 KiB + 512 KiB. A recently taken size is not dropped for another.
    const extra = pool.take(512 * KiB);
    pool.give(pool.take(512 * KiB));
    pool.give(extra);
    assert.equal(pool.bytes, 1024 * KiB);
    assert.deepEqual(
      [pool.take(256 * KiB).length, pool.take(256 * KiB).length],
      [256 * KiB, 256 * KiB],
    );
    assert.equal(pool.bytes, 512 * KiB, 'both 256 KiB blocks were still there');
  });
});
