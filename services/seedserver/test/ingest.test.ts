/**
 * The pieces of one pass on a real file: gathered writes of at least 1 MiB, pieces ready only
 * once on disk, hashes and digest computed once; the cache's least-recently-used order; and
 * the streamed copy to the object gateway, given up when the gateway takes no bytes.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import type { BlobStore } from '@shoal/blobstore';

import { parseDigest, pieceBounds } from '@shoal/proto';
import { makeTempDir, waitFor } from '@shoal/testkit';

import { COALESCE_BYTES, GatewayTee, PieceCutter } from '../src/seeding/ingest.js';
import { IDLE_CLOSE_MS, SeedBlob } from '../src/seeding/seed-blob.js';
import { SeedCache } from '../src/seeding/seed-cache.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('PieceCutter', () => {
  it('writes socket-sized chunks as few large writes, and marks pieces ready once on disk', async () => {
    const dir = await makeTempDir('seed-ingest');
    try {
      // 3 MiB and a bit: 256 KiB pieces, the last one short.
      const bytes = randomBytes(3 * MiB + 1000);
      const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      const blob = await SeedBlob.create(digest, bytes.length, join(dir.path, 'blob'));
      // Watch the writes the file gets (passed through unchanged).
      const writes: number[] = [];
      const { handle } = blob.writer;
      const writev = handle.writev.bind(handle);
      handle.writev = (buffers, position) => {
        writes.push(buffers.reduce((sum, b) => sum + b.byteLength, 0));
        return writev(buffers, position);
      };
      // However slow this machine is, pieces wait for the full write.
      const cutter = new PieceCutter(blob, digest.algorithm, { holdMs: Infinity });
      let firstReady = -1;
      for (let offset = 0; offset < bytes.length; offset += 64 * KiB) {
        await cutter.push(bytes.subarray(offset, offset + 64 * KiB));
        if (firstReady < 0 && blob.ready > 0) {
          firstReady = cutter.received;
        }
        // Nothing is ready before it has been written.
        assert.ok(blob.ready * blob.pieceSize <= Math.max(0, cutter.received));
      }
      assert.equal(await cutter.finish(), digest.toString());
      // 49 chunks of 64 KiB in four writes: the first piece alone and at once (agents wait on
      // it), two of 1 MiB, then the rest.
      assert.deepEqual(writes, [256 * KiB, COALESCE_BYTES, COALESCE_BYTES, 768 * KiB + 1000]);
      assert.equal(firstReady, 256 * KiB);
      assert.equal(blob.ready, blob.count);
      for (let i = 0; i < blob.count; i++) {
        const { start, end } = pieceBounds(i, blob.size, blob.pieceSize);
        const piece = bytes.subarray(start, end);
        assert.equal(blob.hashes[i], createHash('sha256').update(piece).digest('hex'));
        assert.deepEqual(await blob.readPiece(i, Buffer.alloc(blob.pieceSize)), piece);
      }
      await blob.close();
    } finally {
      await dir.remove();
    }
  });

  it('writes a complete piece that waited too long for a full write', async () => {
    const dir = await makeTempDir('seed-ingest');
    try {
      const bytes = randomBytes(2 * MiB);
      const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      const blob = await SeedBlob.create(digest, bytes.length, join(dir.path, 'blob'));
      const cutter = new PieceCutter(blob, digest.algorithm, { holdMs: 20 });
      // The first piece (256 KiB) is written at once; a slow origin: the second piece and a
      // bit, then a pause.
      await cutter.push(bytes.subarray(0, 256 * KiB + 10));
      assert.equal(blob.ready, 1);
      await cutter.push(bytes.subarray(256 * KiB + 10, 512 * KiB + 10));
      assert.equal(blob.ready, 1);
      await new Promise((resolve) => setTimeout(resolve, 30));
      await cutter.push(bytes.subarray(512 * KiB + 10, 512 * KiB + 20));
      assert.equal(blob.ready, 2);
      assert.deepEqual(await blob.readPiece(0), bytes.subarray(0, 256 * KiB));
      assert.deepEqual(await blob.readPiece(1), bytes.subarray(256 * KiB, 512 * KiB));
      await cutter.push(bytes.subarray(512 * KiB + 20));
      assert.equal(await cutter.finish(), digest.toString());
      assert.equal(blob.ready, blob.count);
      await blob.close();
    } finally {
      await dir.remove();
    }
  });

  it('cuts an empty blob into one empty piece', async () => {
    const dir = await makeTempDir('seed-ingest');
    try {
      const digest = parseDigest(`sha256:${createHash('sha256').digest('hex')}`);
      const blob = await SeedBlob.create(digest, 0, join(dir.path, 'blob'));
      const cutter = new PieceCutter(blob, digest.algorithm);
      assert.equal(await cutter.finish(), digest.toString());
      assert.deepEqual(blob.hashes, [createHash('sha256').digest('hex')]);
      await blob.close();
    } finally {
      await dir.remove();
    }
  });

  it('refuses bytes past the size', async () => {
    const dir = await makeTempDir('seed-ingest');
    try {
      const digest = parseDigest(`sha256:${'0'.repeat(64)}`);
      const blob = await SeedBlob.create(digest, 10, join(dir.path, 'blob'));
      const cutter = new PieceCutter(blob, digest.algorithm);
      await assert.rejects(cutter.push(Buffer.alloc(11)), RangeError);
      await blob.discard();
    } finally {
      await dir.remove();
    }
  });
});

describe('SeedBlob', () => {
  it("keeps a complete blob's file open between piece requests, and closes it once idle a moment", async () => {
    const dir = await makeTempDir('seed-blob');
    try {
      const bytes = randomBytes(MiB + 123);
      const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      const blob = await SeedBlob.create(digest, bytes.length, join(dir.path, 'blob'));
      const cutter = new PieceCutter(blob, digest.algorithm);
      await cutter.push(bytes);
      assert.equal(await cutter.finish(), digest.toString());
      await blob.commit(join(dir.path, 'committed'));
      // Agents of a cold pull are fetching its pieces now: the file stays open.
      assert.equal(blob.open, true, 'open right after the commit');
      let idleSince = 0;
      for (let i = 0; i < blob.count; i++) {
        const { start, end } = pieceBounds(i, blob.size, blob.pieceSize);
        assert.ok(blob.acquire());
        assert.deepEqual(await blob.readPiece(i), bytes.subarray(start, end));
        idleSince = performance.now();
        blob.release();
        // Between two requests: not closed, to be opened again by the next one.
        assert.equal(blob.open, true, `open after piece ${i}`);
      }
      await waitFor('the idle file closed', () => Promise.resolve(!blob.open), {
        timeoutMs: 30_000,
        intervalMs: 20,
      });
      assert.ok(performance.now() - idleSince >= IDLE_CLOSE_MS - 50, 'not before the pause');
      // The next request opens it again.
      assert.ok(blob.acquire());
      assert.deepEqual(await blob.readPiece(0), bytes.subarray(0, blob.pieceSize));
      blob.release();
      assert.equal(blob.open, true);
      await blob.close();
      assert.equal(blob.open, false);
    } finally {
      await dir.remove();
    }
  });
});

describe('SeedCache', () => {
  it('keeps blobs least recently used first and counts their bytes', async () => {
    const dir = await makeTempDir('seed-cache');
    try {
      const make = (n: number, size: number): Promise<SeedBlob> =>
        SeedBlob.create(
          parseDigest(`sha256:${String(n).repeat(64)}`),
          size,
          join(dir.path, String(n)),
        );
      const [one, two, three] = [await make(1, 100), await make(2, 200), await make(3, 300)];
      const cache = new SeedCache(1000);
      cache.add(one);
      cache.add(two);
      cache.add(three);
      assert.equal(cache.bytes, 600);
      assert.equal(cache.use(one.digest.toString()), one);
      assert.deepEqual(cache.oldestFirst(), [two, three, one]);
      // peek does not count as a use.
      cache.peek(two.digest.toString());
      assert.deepEqual(cache.oldestFirst(), [two, three, one]);
      assert.equal(cache.delete(two), true);
      assert.equal(cache.delete(two), false);
      assert.equal(cache.bytes, 400);
      // A newer copy of a blob replaces the older one, and only the newer one can be deleted.
      const again = await make(3, 300);
      cache.add(again);
      assert.equal(cache.bytes, 400);
      assert.equal(cache.delete(three), false);
      assert.deepEqual(cache.oldestFirst(), [one, again]);
      for (const blob of [one, two, three, again]) {
        await blob.close();
      }
    } finally {
      await dir.remove();
    }
  });
});

describe('GatewayTee', () => {
  // The tee's timers do not keep a process up (a seed server has its servers for that).
  let keepUp: NodeJS.Timeout | undefined;
  before(() => {
    keepUp = setInterval(() => undefined, 1000);
  });
  after(() => {
    clearInterval(keepUp);
  });

  /** A gateway whose `write` takes bytes only while `taking` says so, and never ends. */
  const gateway = (taking: () => boolean): { store: BlobStore; took: () => number } => {
    let took = 0;
    const store = {
      write: async (_digest: string, body: Readable): Promise<void> => {
        for await (const chunk of body) {
          took += (chunk as Buffer).length;
          while (!taking() && !body.destroyed) {
            await sleep(10);
          }
        }
        // The upload's completion never comes, as from a gateway gone quiet.
        await new Promise(() => undefined);
      },
    } as unknown as BlobStore;
    return { store, took: () => took };
  };

  it('leaves behind a gateway that takes no bytes for its wait: the seed goes on, done rejects at once', async () => {
    const waitMs = 200;
    let taking = true;
    const { store, took } = gateway(() => taking);
    const tee = new GatewayTee(store, 'sha256:ab', 8 * MiB, new AbortController().signal, waitMs);
    await tee.push(Buffer.alloc(MiB));
    taking = false;
    const startedAt = performance.now();
    // The pipe fills (1 MiB), the gateway takes nothing more: one push waits, then gives up.
    for (let i = 0; i < 6; i += 1) {
      await tee.push(Buffer.alloc(MiB));
    }
    const waited = performance.now() - startedAt;
    assert.ok(waited >= waitMs, `the pushes waited ${String(waited)} ms`);
    assert.ok(waited < 20 * waitMs, `the pushes waited ${String(waited)} ms`);
    assert.equal(tee.leftBehind, true);
    const tookThen = took();
    // Left behind: later pushes are dropped at once, and done rejects with the reason though
    // the store's write never settles.
    await tee.push(Buffer.alloc(MiB));
    await assert.rejects(tee.done(), /took no bytes for 200 ms/);
    taking = true;
    await sleep(50);
    assert.ok(took() <= tookThen + MiB, 'nothing more handed to the gateway');
  });

  it('keeps waiting on a gateway slower than the seed while it takes bytes', async () => {
    const waitMs = 200;
    let took = 0;
    const store = {
      write: async (_digest: string, body: Readable): Promise<void> => {
        // 64 KiB every 50 ms: the pipe takes far longer than the wait to drain.
        for (;;) {
          const chunk = body.read(64 * KiB) as Buffer | null;
          if (chunk !== null) {
            took += chunk.length;
            await sleep(50);
          } else if (body.readableEnded) {
            return;
          } else {
            await Promise.race([once(body, 'readable'), once(body, 'end')]);
          }
        }
      },
    } as unknown as BlobStore;
    const chunks = 40;
    const tee = new GatewayTee(
      store,
      'sha256:ab',
      chunks * 64 * KiB,
      new AbortController().signal,
      waitMs,
    );
    const startedAt = performance.now();
    for (let i = 0; i < chunks; i += 1) {
      await tee.push(Buffer.alloc(64 * KiB));
    }
    tee.end();
    await tee.done();
    const tookMs = performance.now() - startedAt;
    assert.equal(tee.leftBehind, false);
    assert.equal(took, chunks * 64 * KiB);
    assert.ok(tookMs > 4 * waitMs, `the seed kept the gateway's pace: ${String(tookMs)} ms`);
  });

  it("settles done within its wait once aborted, though the store's abort does not come", async () => {
    const waitMs = 200;
    // A gateway whose write never settles, as one gone quiet (its upload's abort with it).
    const store = {
      write: (_digest: string, body: Readable): Promise<void> => {
        body.on('error', () => undefined);
        return new Promise<void>(() => undefined);
      },
    } as unknown as BlobStore;
    const tee = new GatewayTee(store, 'sha256:ab', 8 * MiB, new AbortController().signal, waitMs);
    await tee.push(Buffer.alloc(1024));
    const startedAt = performance.now();
    tee.abort(new Error('the digest did not match'));
    await assert.rejects(tee.done(), /the digest did not match/);
    const waited = performance.now() - startedAt;
    assert.ok(waited >= waitMs * 0.9 && waited < 20 * waitMs, `done after ${String(waited)} ms`);
    assert.equal(tee.leftBehind, false, 'an abort is not the gateway left behind');
  });

  it('waits on a gateway that is behind but taking bytes', async () => {
    let taking = false;
    const { store, took } = gateway(() => taking);
    const tee = new GatewayTee(store, 'sha256:ab', 8 * MiB, new AbortController().signal, 500);
    // Taking again after a pause shorter than the wait.
    setTimeout(() => {
      taking = true;
    }, 150);
    for (let i = 0; i < 4; i += 1) {
      await tee.push(Buffer.alloc(MiB));
    }
    tee.end();
    await waitFor('every byte handed on', () => Promise.resolve(took() === 4 * MiB), {
      timeoutMs: 5_000,
      intervalMs: 20,
    });
    const settled = await Promise.race([
      tee.done().then(
        () => 'stored',
        () => 'failed',
      ),
      sleep(100).then(() => 'pending'),
    ]);
    assert.equal(settled, 'pending', 'not given up: its completion is still awaited');
  });
});
