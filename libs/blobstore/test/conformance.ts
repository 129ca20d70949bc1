/**
 * The one conformance suite of the BlobStore interface, as spegel's storetest: the same cases
 * run against every implementation, so that a seed server behaves the same on a directory and
 * on a bucket.
 */
import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';

import { BlobNotFoundError, BlobStoreError, type BlobStore } from '../src/index.js';

/** A store under test, fresh and empty, with what the suite needs around it. */
export interface StoreUnderTest {
  readonly store: BlobStore;
  /** Releases and removes everything the store used. */
  readonly cleanup: () => Promise<void>;
  /**
   * What writes in progress left that readers cannot see (temporary files, multipart
   * uploads): after a failed or aborted write it must be empty.
   */
  readonly leftovers?: () => Promise<readonly string[]>;
}

const MiB = 1024 * 1024;
/** Over two 5 MiB parts plus an odd tail, so an S3 store sends three parts. */
const LARGE = 12 * MiB + 12_345;
const CHUNK = 64 * 1024;

/** A blob held in memory, for small cases. */
interface SmallBlob {
  readonly bytes: Buffer;
  readonly digest: string;
}

function small(size: number, seed: string, algorithm: 'sha256' | 'sha512' = 'sha256'): SmallBlob {
  const bytes = Buffer.concat([...generate(size, seed)]);
  return { bytes, digest: `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}` };
}

/** Deterministic pseudo-random bytes (AES-CTR over zeros) in chunks, never all in memory. */
function* generate(size: number, seed: string, chunkSize = CHUNK): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunkSize);
  for (let left = size; left > 0; left -= chunkSize) {
    yield cipher.update(zeros.subarray(0, Math.min(chunkSize, left)));
  }
}

function generatedDigest(size: number, seed: string): string {
  const hash = createHash('sha256');
  for (const chunk of generate(size, seed)) {
    hash.update(chunk);
  }
  return `sha256:${hash.digest('hex')}`;
}

/** A slice of a generated blob, regenerated rather than kept. */
function generatedSlice(size: number, seed: string, start: number, end: number): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  for (const chunk of generate(size, seed)) {
    const from = Math.max(start - offset, 0);
    const to = Math.min(end + 1 - offset, chunk.byteLength);
    if (from < to) {
      parts.push(chunk.subarray(from, to));
    }
    offset += chunk.byteLength;
  }
  return Buffer.concat(parts);
}

/** A stream of `bytes` in chunks of 1000 (never one chunk: stores must join chunks). */
function streamOf(bytes: Buffer): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.byteLength; i += 1000) {
    chunks.push(bytes.subarray(i, i + 1000));
  }
  return Readable.from(chunks);
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) {
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Hashes a stream without keeping it; returns its digest and size. */
async function digestStream(stream: Readable): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).byteLength;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

/** Asserts a BlobStoreError with `code`. */
function code(expected: string): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof BlobStoreError, `expected a BlobStoreError, got ${String(error)}`);
    assert.equal(error.code, expected);
    return true;
  };
}

export function runBlobStoreConformance(
  name: string,
  makeStore: () => Promise<StoreUnderTest>,
): void {
  /** Runs `body` against a fresh store and always cleans up. */
  async function withStore(body: (t: StoreUnderTest) => Promise<void>): Promise<void> {
    const target = await makeStore();
    try {
      await body(target);
    } finally {
      await target.cleanup();
    }
  }

  async function assertNothingStored(t: StoreUnderTest, digest: string): Promise<void> {
    assert.equal(await t.store.stat(digest), undefined, 'the blob must be absent');
    await assert.rejects(t.store.read(digest), BlobNotFoundError);
    assert.deepEqual((await t.leftovers?.()) ?? [], [], 'nothing may be left over');
  }

  describe(`BlobStore conformance: ${name}`, () => {
    it('writes, stats and reads back a blob, verified by its digest', async () => {
      await withStore(async ({ store }) => {
        const blob = small(100_000, 'round-trip');
        assert.equal(await store.stat(blob.digest), undefined);
        await store.write(blob.digest, streamOf(blob.bytes), blob.bytes.byteLength);
        assert.deepEqual(await store.stat(blob.digest), { size: 100_000 });
        const back = await readAll(await store.read(blob.digest));
        assert.equal(`sha256:${createHash('sha256').update(back).digest('hex')}`, blob.digest);
        assert.ok(back.equals(blob.bytes));
      });
    });

    it('lists the stored blobs with their sizes and times, not metadata or refused writes', async () => {
      await withStore(async ({ store }) => {
        const before = Date.now() - 5000;
        const a = small(1000, 'list-a');
        const b = small(2000, 'list-b', 'sha512');
        await store.write(a.digest, streamOf(a.bytes), 1000);
        await store.write(b.digest, streamOf(b.bytes), 2000);
        await store.putMeta(a.digest, 'pieces', Buffer.from('{}'));
        // Metadata of a blob that is not stored is not a blob either.
        await store.putMeta(small(10, 'list-meta-only').digest, 'pieces', Buffer.from('{}'));
        const refused = generatedDigest(3000, 'list-claimed');
        await assert.rejects(store.write(refused, Readable.from(generate(3000, 'x')), 3000));
        const listed = [];
        for await (const blob of store.list()) {
          listed.push(blob);
        }
        listed.sort((x, y) => x.size - y.size);
        assert.deepEqual(
          listed.map((l) => [l.digest, l.size]),
          [
            [a.digest, 1000],
            [b.digest, 2000],
          ],
        );
        for (const l of listed) {
          assert.ok(l.storedAt >= before && l.storedAt <= Date.now() + 5000, 'a plausible time');
        }
        await store.delete(a.digest);
        const after = [];
        for await (const blob of store.list()) {
          after.push(blob.digest);
        }
        assert.deepEqual(after, [b.digest]);
      });
    });

    it('stores sha512 blobs and the empty blob', async () => {
      await withStore(async ({ store }) => {
        const blob = small(5000, 'sha512', 'sha512');
        await store.write(blob.digest, streamOf(blob.bytes), blob.bytes.byteLength);
        assert.ok((await readAll(await store.read(blob.digest))).equals(blob.bytes));
        const empty = small(0, 'empty');
        await store.write(empty.digest, Readable.from([]), 0);
        assert.deepEqual(await store.stat(empty.digest), { size: 0 });
        assert.equal((await readAll(await store.read(empty.digest))).byteLength, 0);
      });
    });

    it('serves ranges: first byte, middle, last byte, clamped end, past the end', async () => {
      await withStore(async ({ store }) => {
        const blob = small(70_000, 'ranges');
        const size = blob.bytes.byteLength;
        await store.write(blob.digest, streamOf(blob.bytes), size);
        const range = async (start: number, end: number): Promise<Buffer> =>
          readAll(await store.read(blob.digest, { start, end }));
        assert.ok((await range(0, 0)).equals(blob.bytes.subarray(0, 1)));
        assert.ok((await range(1000, 33_999)).equals(blob.bytes.subarray(1000, 34_000)));
        assert.ok((await range(size - 1, size - 1)).equals(blob.bytes.subarray(size - 1)));
        assert.ok((await range(size - 10, size + 1000)).equals(blob.bytes.subarray(size - 10)));
        await assert.rejects(range(size, size + 10), code('RANGE_NOT_SATISFIABLE'));
        await assert.rejects(range(10, 5), code('INVALID_ARGUMENT'));
        await assert.rejects(range(-1, 5), code('INVALID_ARGUMENT'));
      });
    });

    it('streams in a 12 MiB blob from a generator and serves it whole and in ranges', async () => {
      await withStore(async ({ store, leftovers }) => {
        const digest = generatedDigest(LARGE, 'large');
        await store.write(digest, Readable.from(generate(LARGE, 'large')), LARGE);
        assert.deepEqual(await store.stat(digest), { size: LARGE });
        assert.deepEqual(await digestStream(await store.read(digest)), { digest, size: LARGE });
        // Across the boundary of the first 5 MiB part, and the tail.
        for (const [start, end] of [
          [5 * MiB - 100, 5 * MiB + 100],
          [LARGE - 12_345, LARGE - 1],
        ] as const) {
          const got = await readAll(await store.read(digest, { start, end }));
          assert.ok(got.equals(generatedSlice(LARGE, 'large', start, end)), `${start}-${end}`);
        }
        assert.deepEqual((await leftovers?.()) ?? [], []);
      });
    });

    for (const size of [10_000, LARGE]) {
      it(`refuses content that does not match its digest (${size} bytes)`, async () => {
        await withStore(async (t) => {
          const claimed = generatedDigest(size, 'claimed');
          const body = Readable.from(generate(size, 'other'));
          await assert.rejects(t.store.write(claimed, body, size), code('DIGEST_MISMATCH'));
          assert.ok(body.destroyed, 'the body is destroyed on failure');
          await assertNothingStored(t, claimed);
        });
      });

      it(`refuses content longer or shorter than announced (${size} bytes)`, async () => {
        await withStore(async (t) => {
          const digest = generatedDigest(size, 'sized');
          await assert.rejects(
            t.store.write(digest, Readable.from(generate(size, 'sized')), size - 1),
            code('SIZE_MISMATCH'),
          );
          await assertNothingStored(t, digest);
          await assert.rejects(
            t.store.write(digest, Readable.from(generate(size, 'sized')), size + 1),
            code('SIZE_MISMATCH'),
          );
          await assertNothingStored(t, digest);
        });
      });
    }

    it('reports an absent blob: stat undefined, read not found', async () => {
      await withStore(async ({ store }) => {
        const { digest } = small(10, 'absent');
        assert.equal(await store.stat(digest), undefined);
        await assert.rejects(store.read(digest), (error: unknown) => {
          assert.ok(error instanceof BlobNotFoundError);
          assert.equal(error.code, 'NOT_FOUND');
          assert.equal(error.digest, digest);
          return true;
        });
        await assert.rejects(store.read(digest, { start: 0, end: 0 }), BlobNotFoundError);
      });
    });

    it('keeps metadata documents beside a blob', async () => {
      await withStore(async ({ store }) => {
        const { digest } = small(10, 'meta');
        const other = small(10, 'meta-other').digest;
        assert.equal(await store.getMeta(digest, 'pieces'), undefined);
        await store.putMeta(digest, 'pieces', Buffer.from('first'));
        await store.putMeta(digest, 'pieces', new TextEncoder().encode('second'));
        await store.putMeta(digest, 'origin-1', Buffer.alloc(0));
        assert.deepEqual(await store.getMeta(digest, 'pieces'), Buffer.from('second'));
        assert.deepEqual(await store.getMeta(digest, 'origin-1'), Buffer.alloc(0));
        assert.equal(await store.getMeta(digest, 'absent'), undefined);
        assert.equal(await store.getMeta(other, 'pieces'), undefined);
        for (const bad of ['', 'Pieces', 'a/b', '../x', 'a.b', 'x'.repeat(65)]) {
          await assert.rejects(
            store.putMeta(digest, bad, Buffer.from('x')),
            code('INVALID_ARGUMENT'),
          );
          await assert.rejects(store.getMeta(digest, bad), code('INVALID_ARGUMENT'));
        }
      });
    });

    it('deletes a blob with its metadata, and an absent blob quietly', async () => {
      await withStore(async ({ store }) => {
        const blob = small(2000, 'delete');
        const kept = small(2000, 'kept');
        for (const b of [blob, kept]) {
          await store.write(b.digest, streamOf(b.bytes), b.bytes.byteLength);
          await store.putMeta(b.digest, 'pieces', Buffer.from('hashes'));
        }
        await store.delete(blob.digest);
        assert.equal(await store.stat(blob.digest), undefined);
        await assert.rejects(store.read(blob.digest), BlobNotFoundError);
        assert.equal(await store.getMeta(blob.digest, 'pieces'), undefined);
        assert.deepEqual(await store.stat(kept.digest), { size: 2000 });
        assert.deepEqual(await store.getMeta(kept.digest, 'pieces'), Buffer.from('hashes'));
        await store.delete(blob.digest);
      });
    });

    it('rejects input that is not a digest it can verify', async () => {
      await withStore(async ({ store }) => {
        const hex = 'a'.repeat(64);
        for (const bad of [
          '',
          hex,
          `sha256:${hex.toUpperCase()}`,
          `sha256:${hex.slice(1)}`,
          `md5:${'a'.repeat(32)}`,
          `sha256:../../${hex.slice(6)}`,
        ]) {
          await assert.rejects(store.stat(bad), code('DIGEST_INVALID'), bad);
          await assert.rejects(store.read(bad), code('DIGEST_INVALID'), bad);
          const body = Readable.from([Buffer.from('x')]);
          await assert.rejects(store.write(bad, body, 1), code('DIGEST_INVALID'), bad);
          assert.ok(body.destroyed);
          await assert.rejects(store.putMeta(bad, 'm', Buffer.from('x')), code('DIGEST_INVALID'));
          await assert.rejects(store.getMeta(bad, 'm'), code('DIGEST_INVALID'));
          await assert.rejects(store.delete(bad), code('DIGEST_INVALID'));
        }
        const body = Readable.from([Buffer.from('x')]);
        await assert.rejects(store.write(small(1, 'x').digest, body, -1), code('INVALID_ARGUMENT'));
      });
    });

    it('lets concurrent writes of the same blob all succeed with the right content', async () => {
      await withStore(async ({ store, leftovers }) => {
        const size = 6 * MiB + 1;
        const digest = generatedDigest(size, 'concurrent');
        await Promise.all(
          [1, 2, 3].map(() =>
            store.write(digest, Readable.from(generate(size, 'concurrent')), size),
          ),
        );
        assert.deepEqual(await digestStream(await store.read(digest)), { digest, size });
        assert.deepEqual((await leftovers?.()) ?? [], []);
      });
    });

    it('stores nothing when the signal aborts mid-write', async () => {
      await withStore(async (t) => {
        const digest = generatedDigest(LARGE, 'aborted');
        const controller = new AbortController();
        let sent = 0;
        // Sends 6 MiB (a whole S3 part and then some), then stalls until aborted, as a
        // stalled origin would.
        async function* stalling(): AsyncGenerator<Buffer> {
          for (const chunk of generate(LARGE, 'aborted')) {
            if (sent >= 6 * MiB) {
              setTimeout(() => controller.abort(), 200);
              await new Promise<void>((resolve) => {
                controller.signal.addEventListener('abort', () => resolve(), { once: true });
              });
              return;
            }
            sent += chunk.byteLength;
            yield chunk;
          }
        }
        await assert.rejects(
          t.store.write(digest, Readable.from(stalling()), LARGE, controller.signal),
          (error: unknown) => error === controller.signal.reason,
        );
        await assertNothingStored(t, digest);
        const again = new AbortController();
        again.abort();
        const blob = small(100, 'pre-aborted');
        await assert.rejects(
          t.store.write(blob.digest, streamOf(blob.bytes), 100, again.signal),
          (error: unknown) => error === again.signal.reason,
        );
        await assertNothingStored(t, blob.digest);
      });
    });

    it('ends a read stream when its signal aborts', async () => {
      await withStore(async ({ store }) => {
        const size = 4 * MiB;
        const digest = generatedDigest(size, 'read-abort');
        await store.write(digest, Readable.from(generate(size, 'read-abort')), size);
        const controller = new AbortController();
        const stream = await store.read(digest, undefined, controller.signal);
        let received = 0;
        await assert.rejects(
          (async () => {
            for await (const chunk of stream) {
              received += (chunk as Buffer).byteLength;
              controller.abort();
            }
          })(),
          (error: unknown) => error instanceof Error && error.name === 'AbortError',
        );
        assert.ok(received < size, 'the stream ended early');
        assert.ok(stream.destroyed);
      });
    });
  });
}
