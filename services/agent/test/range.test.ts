import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MirrorError } from '../src/mirror/errors.js';
import { parseRange } from '../src/mirror/range.js';

function assertUnsatisfiable(header: string, size: number): void {
  assert.throws(
    () => parseRange(header, size),
    (error: unknown) => {
      assert.ok(error instanceof MirrorError, `${header} should throw a MirrorError`);
      assert.equal(error.code, 'RANGE_INVALID', header);
      assert.equal(error.status, 416, header);
      assert.deepEqual(error.detail, { size }, header);
      return true;
    },
  );
}

describe('parseRange', () => {
  it('returns undefined without a header', () => {
    assert.equal(parseRange(undefined, 100), undefined);
    assert.equal(parseRange(undefined, 0), undefined);
  });

  it('parses bytes=a-b as an inclusive range', () => {
    assert.deepEqual(parseRange('bytes=0-0', 100), { start: 0, end: 0 });
    assert.deepEqual(parseRange('bytes=10-19', 100), { start: 10, end: 19 });
    assert.deepEqual(parseRange('bytes=0-99', 100), { start: 0, end: 99 });
    assert.deepEqual(parseRange('bytes=99-99', 100), { start: 99, end: 99 });
  });

  it('ignores surrounding white space', () => {
    assert.deepEqual(parseRange('  bytes=5-6 ', 100), { start: 5, end: 6 });
  });

  it('parses an open-ended range to the last byte', () => {
    assert.deepEqual(parseRange('bytes=0-', 100), { start: 0, end: 99 });
    assert.deepEqual(parseRange('bytes=40-', 100), { start: 40, end: 99 });
    assert.deepEqual(parseRange('bytes=99-', 100), { start: 99, end: 99 });
  });

  it('parses a suffix range as the last n bytes', () => {
    assert.deepEqual(parseRange('bytes=-1', 100), { start: 99, end: 99 });
    assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
    assert.deepEqual(parseRange('bytes=-100', 100), { start: 0, end: 99 });
  });

  it('serves the whole blob for a suffix longer than it', () => {
    assert.deepEqual(parseRange('bytes=-101', 100), { start: 0, end: 99 });
    assert.deepEqual(parseRange('bytes=-999999999999', 100), { start: 0, end: 99 });
  });

  it('clamps the end to the last byte', () => {
    assert.deepEqual(parseRange('bytes=0-100', 100), { start: 0, end: 99 });
    assert.deepEqual(parseRange('bytes=50-1000000', 100), { start: 50, end: 99 });
    assert.deepEqual(parseRange('bytes=0-99999999999999999999999', 100), { start: 0, end: 99 });
  });

  it('refuses a start at or past the end of the blob', () => {
    assertUnsatisfiable('bytes=100-', 100);
    assertUnsatisfiable('bytes=100-200', 100);
    assertUnsatisfiable('bytes=5000-5001', 100);
  });

  it('refuses an end before the start', () => {
    assertUnsatisfiable('bytes=10-9', 100);
    assertUnsatisfiable('bytes=99-0', 100);
  });

  it('refuses an empty suffix', () => {
    assertUnsatisfiable('bytes=-0', 100);
    assertUnsatisfiable('bytes=-00', 100);
  });

  it('refuses garbage', () => {
    for (const header of [
      '',
      'bytes',
      'bytes=',
      'bytes=-',
      'bytes=a-b',
      'bytes=1-2-3',
      'bytes=1.5-2',
      'bytes=+1-2',
      'bytes=-1-2',
      'bytes = 1-2',
      '1-2',
      'bytes=0x10-0x20',
    ]) {
      assertUnsatisfiable(header, 100);
    }
  });

  it('refuses multiple ranges', () => {
    assertUnsatisfiable('bytes=0-1,3-4', 100);
    assertUnsatisfiable('bytes=0-1, 3-4', 100);
    assertUnsatisfiable('bytes=0-1,-5', 100);
  });

  it('refuses units other than bytes', () => {
    assertUnsatisfiable('items=0-1', 100);
    assertUnsatisfiable('bits=0-7', 100);
    assertUnsatisfiable('none', 100);
  });

  it('refuses every range of a zero-size blob', () => {
    for (const header of ['bytes=0-', 'bytes=0-0', 'bytes=0-10', 'bytes=-1', 'bytes=-10']) {
      assertUnsatisfiable(header, 0);
    }
  });
});

describe('parseRange past 4 GiB', () => {
  // Sizes and offsets beyond 32 bits: a 5 GiB layer (model weights, CUDA images) and a range
  // containerd asks for when it resumes near its end.
  const size = 5 * 2 ** 30 + 12_345;

  it('keeps offsets beyond 2^32 exact', () => {
    assert.deepEqual(parseRange('bytes=4294967296-', size), { start: 2 ** 32, end: size - 1 });
    assert.deepEqual(parseRange(`bytes=${size - 1}-${size + 10}`, size), {
      start: size - 1,
      end: size - 1,
    });
    assert.deepEqual(parseRange('bytes=-4294967297', size), {
      start: size - 2 ** 32 - 1,
      end: size - 1,
    });
    assertUnsatisfiable(`bytes=${size}-`, size);
  });
});
