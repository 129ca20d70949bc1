/**
 * The pieces of one pass on a real file: gathered writes of at least 1 MiB, pieces ready only
 * once on disk, hashes and digest computed once; the cache's least-recently-used order; and
 * the copy streamed to the object gateway from the file, at the gateway's pace.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';

import type { BlobStore } from '@shoal/blobstore';

import { parseDigest, pieceBounds } from '@shoal/proto';
import { makeTempDir, waitFor } from '@shoal/testkit';

import { COALESCE_BYTES, GatewayUpload, PieceCutter } from '../src/seeding/ingest.js';
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

describe('GatewayUpload', () => {
  /** A blob of `bytes` being written, and the cutter that writes it. */
  const ingestOf = async (
    dir: string,
    bytes: Buffer,
  ): Promise<{ blob: SeedBlob; cutter: PieceCutter; digest: string }> => {
    const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
    const blob = await SeedBlob.create(digest, bytes.length, join(dir, 'blob'));
    return { blob, cutter: new PieceCutter(blob, digest.algorithm), digest: digest.toString() };
  };

  /**
   * A gateway that takes 256 KiB every `stepMs` and keeps what it took; nothing before `opened`
   * (when given) resolves.
   */
  const slowGateway = (
    stepMs: number,
    opened?: Promise<void>,
  ): { store: BlobStore; took: () => Buffer; written: () => string | undefined } => {
    const chunks: Buffer[] = [];
    let written: string | undefined;
    const store = {
      write: async (digest: string, body: Readable, size: number): Promise<void> => {
        await opened;
        let taken = 0;
        for await (const chunk of body) {
          const bytes = chunk as Buffer;
          // Kept as a copy: the body owes the gateway nothing once it asks for the next.
          chunks.push(Buffer.from(bytes));
          taken += bytes.length;
          await sleep((stepMs * bytes.length) / (256 * KiB));
        }
        assert.equal(taken, size);
        written = digest;
      },
    } as unknown as BlobStore;
    return { store, took: () => Buffer.concat(chunks), written: () => written };
  };

  it('streams the blob to the gateway from its file as the pieces land, never holding up the ingest', async () => {
    const dir = await makeTempDir('seed-upload');
    try {
      const bytes = randomBytes(4 * MiB + 777);
      const { blob, cutter, digest } = await ingestOf(dir.path, bytes);
      // A gateway that takes nothing until the ingest is over, then 256 KiB every 5 ms.
      let open: () => void = () => undefined;
      const opened = new Promise<void>((resolve) => {
        open = resolve;
      });
      const gateway = slowGateway(5, opened);
      const upload = new GatewayUpload(gateway.store, blob, new AbortController().signal);
      assert.equal(blob.users, 1, 'the blob is in use while its upload runs');
      for (let offset = 0; offset < bytes.length; offset += 64 * KiB) {
        await cutter.push(bytes.subarray(offset, offset + 64 * KiB));
      }
      assert.equal(await cutter.finish(), digest);
      // The whole blob went in while the gateway took nothing: the ingest never waited on it.
      assert.equal(gateway.took().length, 0);
      open();
      await upload.done();
      assert.ok(gateway.took().equals(bytes), 'the gateway got every byte, in order');
      assert.equal(gateway.written(), digest);
      assert.equal(blob.users, 0, 'released once the upload ended');
      await blob.close();
    } finally {
      await dir.remove();
    }
  });

  it('ends the upload when the seed fails, and when the blob is dropped: the gateway stores nothing', async () => {
    const dir = await makeTempDir('seed-upload');
    try {
      const bytes = randomBytes(2 * MiB);
      for (const end of ['abort', 'drop'] as const) {
        const { blob, cutter } = await ingestOf(dir.path, bytes);
        const gateway = slowGateway(1);
        const upload = new GatewayUpload(gateway.store, blob, new AbortController().signal);
        await cutter.push(bytes.subarray(0, MiB));
        await cutter.flush();
        await waitFor(
          'the first pieces at the gateway',
          () => Promise.resolve(gateway.took().length > 0),
          { timeoutMs: 5_000, intervalMs: 10 },
        );
        if (end === 'abort') {
          await upload.abort(new Error('the digest did not match'), 5_000);
          await assert.rejects(upload.done(), /the digest did not match/);
          await blob.discard();
        } else {
          await blob.discard();
          await assert.rejects(upload.done(), /was dropped/);
        }
        assert.equal(gateway.written(), undefined, `${end}: nothing stored`);
        assert.ok(gateway.took().length <= MiB, `${end}: nothing past what had landed`);
      }
    } finally {
      await dir.remove();
    }
  });

  it("ends the upload with the seed's signal", async () => {
    const dir = await makeTempDir('seed-upload');
    try {
      const bytes = randomBytes(MiB);
      const { blob } = await ingestOf(dir.path, bytes);
      const gateway = slowGateway(1);
      const stopping = new AbortController();
      const upload = new GatewayUpload(gateway.store, blob, stopping.signal);
      // Nothing has landed: the upload waits for the first piece, until the seed stops.
      stopping.abort(new Error('shutting down'));
      await assert.rejects(upload.done(), /shutting down/);
      assert.equal(gateway.written(), undefined);
      await blob.discard();
    } finally {
      await dir.remove();
    }
  });
});
