import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';

import { digestOf } from '@shoal/proto';

import { DiskHeadroom, isDiskFull } from '../src/cache/disk-headroom.js';
import { ContentMismatchError } from '../src/cache/download.js';
import { passThroughCursor, type LentBody } from '../src/mirror/pass-through.js';
import type { ByteRange } from '../src/mirror/range.js';

/** The blob cut into chunks of `chunk` bytes, as an origin body. */
function body(bytes: Buffer, chunk: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += chunk) {
    parts.push(bytes.subarray(i, i + chunk));
  }
  return Readable.from(parts);
}

/** Reads a cursor to its end with a buffer of `size` bytes; returns the bytes and the calls. */
async function drain(
  read: (b: Buffer) => Promise<number>,
  size: number,
): Promise<{ bytes: Buffer; reads: number[] }> {
  const buffer = Buffer.alloc(size);
  const out: Buffer[] = [];
  const reads: number[] = [];
  for (;;) {
    const n = await read(buffer);
    if (n === 0) {
      return { bytes: Buffer.concat(out), reads };
    }
    reads.push(n);
    out.push(Buffer.from(buffer.subarray(0, n)));
  }
}

describe('passThroughCursor', () => {
  const blob = randomBytes(100_000);
  const digest = digestOf(blob);

  it('gives the whole blob, its last byte alone after verification', async () => {
    for (const chunk of [1, 999, 65_536, 200_000]) {
      const cursor = passThroughCursor(body(blob, chunk), digest, blob.length, undefined);
      const { bytes, reads } = await drain((b) => cursor.read(b), 4096);
      assert.ok(bytes.equals(blob), `chunks of ${chunk}`);
      assert.equal(reads.at(-1), 1, 'the last byte comes by itself');
    }
  });

  it('gives exactly the bytes of a range, whatever the chunking', async () => {
    const ranges: ByteRange[] = [
      { start: 0, end: 0 },
      { start: 5, end: 70_000 },
      { start: 99_999, end: 99_999 },
      { start: 65_530, end: 65_541 },
    ];
    for (const range of ranges) {
      for (const chunk of [7, 65_536]) {
        const cursor = passThroughCursor(body(blob, chunk), digest, blob.length, range);
        const { bytes } = await drain((b) => cursor.read(b), 1000);
        assert.ok(bytes.equals(blob.subarray(range.start, range.end + 1)), JSON.stringify(range));
      }
    }
  });

  it('gives the bytes of a range from lent blocks that are filled again', async () => {
    // The block reader's way: one block, overwritten with the next bytes as soon as the next
    // block is asked for; cancelled when the cursor closes.
    const lent = (bytes: Buffer, size: number): { body: LentBody; cancelled: () => boolean } => {
      const block = Buffer.alloc(size);
      let cancelled = false;
      async function* blocks(): AsyncGenerator<Buffer> {
        for (let at = 0; at < bytes.length; at += size) {
          await Promise.resolve();
          yield block.subarray(0, bytes.copy(block, 0, at, at + size));
        }
        block.fill(0);
      }
      return {
        body: {
          blocks: blocks(),
          cancel: () => {
            cancelled = true;
          },
        },
        cancelled: () => cancelled,
      };
    };
    for (const range of [undefined, { start: 5, end: 70_000 }, { start: 65_530, end: 65_541 }]) {
      const { body: blocks, cancelled } = lent(blob, 4096);
      const cursor = passThroughCursor(blocks, digest, blob.length, range);
      const { bytes, reads } = await drain((b) => cursor.read(b), 1000);
      const expected = range === undefined ? blob : blob.subarray(range.start, range.end + 1);
      assert.ok(bytes.equals(expected), JSON.stringify(range));
      assert.equal(reads.at(-1), 1, 'the last byte comes by itself, after verification');
      cursor.close();
      assert.ok(cancelled());
    }
  });

  it('withholds the last byte of a blob that does not match its digest', async () => {
    const bad = Buffer.from(blob);
    bad[500] = (bad[500] ?? 0) ^ 0xff;
    const cursor = passThroughCursor(body(bad, 4096), digest, blob.length, { start: 0, end: 999 });
    const buffer = Buffer.alloc(4096);
    let given = 0;
    await assert.rejects(
      async () => {
        for (;;) {
          const n = await cursor.read(buffer);
          if (n === 0) {
            return;
          }
          given += n;
        }
      },
      (error: unknown) => error instanceof ContentMismatchError && error.code === 'DIGEST_MISMATCH',
    );
    assert.equal(given, 999, 'everything but the last byte of the range');
  });

  it('throws on a short body and on a long one', async () => {
    const short = passThroughCursor(
      body(blob.subarray(0, 50_000), 4096),
      digest,
      blob.length,
      undefined,
    );
    await assert.rejects(
      drain((b) => short.read(b), 4096),
      (error: unknown) => error instanceof ContentMismatchError && error.code === 'SIZE_MISMATCH',
    );
    const long = passThroughCursor(
      body(Buffer.concat([blob, Buffer.from('x')]), 4096),
      digest,
      blob.length,
      undefined,
    );
    await assert.rejects(
      drain((b) => long.read(b), 4096),
      (error: unknown) => error instanceof ContentMismatchError && error.code === 'SIZE_MISMATCH',
    );
  });

  it('checks an empty blob against its digest too', async () => {
    const empty = passThroughCursor(
      body(Buffer.alloc(0), 1),
      digestOf(Buffer.alloc(0)),
      0,
      undefined,
    );
    assert.equal((await drain((b) => empty.read(b), 16)).bytes.length, 0);
    const wrong = passThroughCursor(body(Buffer.alloc(0), 1), digest, 0, undefined);
    await assert.rejects(
      drain((b) => wrong.read(b), 16),
      ContentMismatchError,
    );
  });
});

describe('DiskHeadroom', () => {
  it('is tight below the minimum free space, reading it at most once per interval', async () => {
    let now = 0;
    let free = 10_000;
    let reads = 0;
    const disk = new DiskHeadroom('/cache', {
      minFreeBytes: 5000,
      statIntervalMs: 1000,
      now: () => now,
      freeBytes: () => {
        reads += 1;
        return Promise.resolve(free);
      },
    });
    assert.equal(await disk.tight(), undefined);
    free = 100;
    now = 999;
    assert.equal(await disk.tight(), undefined, 'the reading is trusted for an interval');
    now = 1000;
    assert.equal(await disk.tight(), 'low-free-space');
    assert.equal(reads, 2);
  });

  it('is tight for the cooldown after a disk-full error, and only for such errors', async () => {
    let now = 0;
    const disk = new DiskHeadroom('/cache', {
      minFreeBytes: 0,
      cooldownMs: 60_000,
      now: () => now,
      freeBytes: () => Promise.reject(new Error('never read when the minimum is 0')),
    });
    assert.equal(disk.noteFailure(new Error('peer went away')), false);
    assert.equal(await disk.tight(), undefined);
    const enospc = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    assert.equal(disk.noteFailure(new Error('download failed', { cause: enospc })), true);
    assert.equal(await disk.tight(), 'write-failed');
    now = 60_000;
    assert.equal(await disk.tight(), undefined);
  });

  it('counts a failed free-space reading as room: the write will tell', async () => {
    const disk = new DiskHeadroom('/cache', {
      minFreeBytes: 1,
      freeBytes: () => Promise.reject(new Error('EACCES')),
    });
    assert.equal(await disk.tight(), undefined);
    assert.equal(isDiskFull(Object.assign(new Error('quota'), { code: 'EDQUOT' })), true);
    assert.equal(isDiskFull('ENOSPC'), false);
  });
});
