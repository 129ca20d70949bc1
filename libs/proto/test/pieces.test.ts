import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  decodePieceBitmap,
  encodePieceBitmap,
  MAX_PIECE_BITMAP_BYTES,
  pieceBounds,
  pieceCount,
  pieceRanges,
  pieceSizeFor,
  rangesInclude,
  rangesSize,
  toRanges,
} from '../src/index.js';

const MiB = 1024 * 1024;

describe('piece layout', () => {
  it('grows the piece size with the blob', () => {
    assert.equal(pieceSizeFor(0), 256 * 1024);
    assert.equal(pieceSizeFor(64 * MiB), 256 * 1024);
    assert.equal(pieceSizeFor(64 * MiB + 1), MiB);
    assert.equal(pieceSizeFor(256 * MiB), MiB);
    assert.equal(pieceSizeFor(1024 * MiB), 4 * MiB);
    assert.equal(pieceSizeFor(1024 * MiB + 1), 16 * MiB);
  });

  it('keeps between 1 and 256 pieces up to 1 GiB', () => {
    for (const size of [1, 1000, 64 * MiB, 200 * MiB, 256 * MiB, 1024 * MiB]) {
      const count = pieceCount(size, pieceSizeFor(size));
      assert.ok(count >= 1 && count <= 256, `${size}: ${count}`);
    }
  });

  it('covers every byte exactly once', () => {
    const size = 10 * MiB + 123;
    const pieceSize = pieceSizeFor(size);
    let next = 0;
    for (let i = 0; i < pieceCount(size, pieceSize); i++) {
      const { start, end } = pieceBounds(i, size, pieceSize);
      assert.equal(start, next);
      assert.ok(end > start);
      next = end;
    }
    assert.equal(next, size);
    assert.equal(pieceCount(0, pieceSizeFor(0)), 1);
  });

  it('lays out blobs beyond 4 GiB exactly (sizes past 32 bits)', () => {
    const size = 5 * 1024 * MiB + 12_345;
    const pieceSize = pieceSizeFor(size);
    const count = pieceCount(size, pieceSize);
    assert.equal(count, Math.ceil(size / pieceSize));
    assert.deepEqual(pieceBounds(count - 1, size, pieceSize), {
      start: (count - 1) * pieceSize,
      end: size,
    });
    // The piece holding byte 2^32 starts where plain arithmetic says, not wrapped to 0.
    const at = Math.floor(2 ** 32 / pieceSize);
    assert.equal(pieceBounds(at, size, pieceSize).start, at * pieceSize);
    assert.ok(pieceBounds(at, size, pieceSize).start > 0xffff_ffff - pieceSize);
  });
});

describe('piece ranges', () => {
  it('compacts indexes into valid ranges', () => {
    const ranges = toRanges([5, 1, 2, 3, 9, 8, 2]);
    assert.deepEqual(ranges, [
      [1, 4],
      [5, 6],
      [8, 10],
    ]);
    assert.ok(pieceRanges.safeParse(ranges).success);
    assert.equal(rangesSize(ranges), 6);
    assert.ok(rangesInclude(ranges, 9));
    assert.ok(!rangesInclude(ranges, 4));
    assert.deepEqual(toRanges([]), []);
  });
});

describe('piece bitmaps', () => {
  it('round-trips a set of pieces, in order, whatever order it was given in', () => {
    const pieces = [255, 0, 7, 8, 9, 130, 1000];
    const value = encodePieceBitmap(pieces);
    assert.match(value, /^[A-Za-z0-9_-]+$/, 'header-safe');
    // 1000 is bit 0 of byte 125: 126 bytes, 168 base64url characters.
    assert.equal(value.length, 168);
    assert.deepEqual(decodePieceBitmap(value), [0, 7, 8, 9, 130, 255, 1000]);
    assert.equal(encodePieceBitmap([]), '');
    assert.deepEqual(decodePieceBitmap(''), []);
  });

  it('leaves out what passes its size limit, and reads nothing from a missing, malformed or oversized value', () => {
    const last = MAX_PIECE_BITMAP_BYTES * 8 - 1;
    const full = encodePieceBitmap([3, last, last + 1, -1, 2.5]);
    assert.deepEqual(decodePieceBitmap(full), [3, last], 'the pieces within the limit');
    assert.equal(full.length, Math.ceil((MAX_PIECE_BITMAP_BYTES * 4) / 3));
    assert.deepEqual(decodePieceBitmap(undefined), []);
    assert.deepEqual(decodePieceBitmap('not base64!'), []);
    assert.deepEqual(decodePieceBitmap(`${full}A`), [], 'longer than any bitmap written');
  });
});
