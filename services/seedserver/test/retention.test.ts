import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { StoredBlob } from '@shoal/blobstore';

import { expiredBlobs } from '../src/seeding/retention.js';

const DAY = 24 * 3600 * 1000;

function blob(name: string, size: number, storedAt: number): StoredBlob {
  return { digest: `sha256:${name.padEnd(64, '0')}`, size, storedAt };
}

const digests = (blobs: StoredBlob[]): string[] => blobs.map((b) => b.digest.slice(7, 8));

describe('expiredBlobs', () => {
  const now = 100 * DAY;
  const blobs = [
    blob('a', 100, now - 40 * DAY),
    blob('b', 200, now - 10 * DAY),
    blob('c', 300, now - 2 * DAY),
    blob('d', 400, now - 1 * DAY),
  ];

  it('keeps everything when the policy is off', () => {
    assert.deepEqual(expiredBlobs(blobs, { maxAgeMs: 0, maxBytes: 0 }, now), []);
  });

  it('deletes blobs older than the age limit, and only those', () => {
    assert.deepEqual(digests(expiredBlobs(blobs, { maxAgeMs: 30 * DAY, maxBytes: 0 }, now)), ['a']);
    assert.deepEqual(digests(expiredBlobs(blobs, { maxAgeMs: 5 * DAY, maxBytes: 0 }, now)), [
      'a',
      'b',
    ]);
  });

  it('deletes the oldest blobs until the rest fits the size limit', () => {
    // 1000 bytes in all: down to 700 takes a and b (700 left); down to 699 also c.
    assert.deepEqual(digests(expiredBlobs(blobs, { maxAgeMs: 0, maxBytes: 700 }, now)), ['a', 'b']);
    assert.deepEqual(digests(expiredBlobs(blobs, { maxAgeMs: 0, maxBytes: 699 }, now)), [
      'a',
      'b',
      'c',
    ]);
    assert.deepEqual(expiredBlobs(blobs, { maxAgeMs: 0, maxBytes: 1000 }, now), []);
  });

  it('applies the age limit first, then the size limit to what is left', () => {
    const expired = expiredBlobs([...blobs].reverse(), { maxAgeMs: 30 * DAY, maxBytes: 450 }, now);
    // a by age; then of b, c, d (900 bytes) the oldest until <= 450: b and c.
    assert.deepEqual(digests(expired), ['a', 'b', 'c']);
  });
});
