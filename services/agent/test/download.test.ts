import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { PieceBuffers } from '@shoal/pieces';
import { digestOf, type Digest } from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import {
  DownloadTable,
  type DownloadHooks,
  type Flight,
  type FlightStarter,
} from '../src/cache/download-table.js';
import {
  BlobDownload,
  ContentMismatchError,
  fillInOrder,
  HELD_BYTES,
  SourcesFailedError,
  type DownloadState,
  type RecordVouch,
  type OriginSource,
} from '../src/cache/download.js';
import type { UpstreamAnswer } from '@shoal/registry';

/** Larger than the 64 KiB a reader reads at a time, so blobs span several chunks. */
const BLOB_BYTES = 200_000;
/** Piece size for the swarm path: BLOB_BYTES is four pieces. */
const PIECE_BYTES = 50_000;

let root: string;
let store: FsContentStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'shoal-download-'));
  store = new FsContentStore(root, 1024 ** 3);
  await store.init();
});

afterEach(async () => {
  // A download still committing its file when a test ends must not fail the clean-up.
  await rm(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
});

/** What a reader received, and the error its stream ended with, if any. */
interface Received {
  readonly bytes: Buffer;
  readonly error: unknown;
}

/** Resolves when `stream` closes, whether it ended or failed. */
function closeOf(stream: Readable): Promise<void> {
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

/** Reads a stream to its end or its error, and waits for it to close. */
async function drain(stream: Readable): Promise<Received> {
  const chunks: Buffer[] = [];
  let error: unknown;
  const closed = closeOf(stream);
  try {
    for await (const chunk of stream) {
      chunks.push(chunk as Buffer);
    }
  } catch (caught) {
    error = caught;
  }
  await closed;
  return { bytes: Buffer.concat(chunks), error };
}

/** A reader that records what it received so far, for looking at mid-download. */
function watch(stream: Readable): {
  received: () => number;
  bytes: () => Buffer;
  ended: () => boolean;
  error: () => unknown;
} {
  const chunks: Buffer[] = [];
  let received = 0;
  let ended = false;
  let error: unknown;
  stream.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    received += chunk.length;
  });
  stream.on('end', () => {
    ended = true;
  });
  stream.on('error', (caught) => {
    error = caught;
  });
  return {
    received: () => received,
    bytes: () => Buffer.concat(chunks),
    ended: () => ended,
    error: () => error,
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      assert.fail(`timed out waiting until ${what}`);
    }
    await sleep(1);
  }
}

function openReader(download: BlobDownload, start = 0, end?: number): Readable {
  const stream = end === undefined ? download.openReader(start) : download.openReader(start, end);
  assert.ok(stream !== undefined, 'the download should still serve readers');
  return stream;
}

/** A download into a real temp file of the store, with its size set when one is given. */
async function newDownload(digest: Digest, size?: number): Promise<BlobDownload> {
  const download = new BlobDownload(digest, await store.createTemp());
  if (size !== undefined) {
    download.setSize(size);
  }
  return download;
}

function fill(download: BlobDownload, body: AsyncIterable<Uint8Array>): Promise<DownloadState> {
  return fillInOrder(download, body, store, () => undefined);
}

function assertMismatch(error: unknown, code: 'DIGEST_MISMATCH' | 'SIZE_MISMATCH'): void {
  assert.ok(
    error instanceof ContentMismatchError,
    `expected a ContentMismatchError: ${String(error)}`,
  );
  assert.equal(error.code, code);
}

async function assertNothingKept(digest: Digest): Promise<void> {
  assert.equal(store.has(digest), false);
  assert.equal(store.totalBytes, 0);
  assert.deepEqual(await readdir(join(root, 'tmp')), []);
  assert.deepEqual(await readdir(join(root, 'blobs', digest.algorithm)), []);
}

/** Feeds `bytes` to `body` in chunks of `chunkBytes`, yielding to readers in between. */
async function feed(body: PassThrough, bytes: Uint8Array, chunkBytes = 30_000): Promise<void> {
  for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
    body.write(bytes.subarray(offset, offset + chunkBytes));
    await sleep(1);
  }
}

/** Piece `index` of `blob`. */
function piece(blob: Buffer, index: number): Buffer {
  return blob.subarray(index * PIECE_BYTES, (index + 1) * PIECE_BYTES);
}

/** A copy of `bytes` with its last byte changed. */
function corrupted(bytes: Buffer): Buffer {
  const copy = Buffer.from(bytes);
  copy[copy.length - 1] = (copy.at(-1) ?? 0) ^ 0xff;
  return copy;
}

describe('BlobDownload', () => {
  describe('origin sources', () => {
    const registry = (host: string): OriginSource['registry'] => ({
      host,
      url: new URL(`http://${host}`),
    });
    const source = (host: string, name: string, authorization?: string): OriginSource => ({
      registry: registry(host),
      name,
      authorization,
    });

    it("keeps a reader's source only while it reads, newest first, each once", async () => {
      const download = await newDownload(digestOf(Buffer.from('x')));
      const a = download.offerSource(source('r1:5000', 'one/app', 'Basic a'));
      const b = download.offerSource(source('r2:5000', 'two/app', 'Basic b'));
      // A second reader with the same credential: the source stays until both have left.
      const b2 = download.offerSource(source('r2:5000', 'two/app', 'Basic b'));
      const described = (): string[] =>
        download.sources.map((s) => `${s.registry.host}/${s.name} ${s.authorization ?? '-'}`);
      assert.deepEqual(described(), ['r2:5000/two/app Basic b', 'r1:5000/one/app Basic a']);
      b.withdraw();
      assert.deepEqual(described(), ['r2:5000/two/app Basic b', 'r1:5000/one/app Basic a']);
      b2.withdraw();
      b2.withdraw();
      assert.deepEqual(described(), ['r1:5000/one/app Basic a'], 'both readers of b left');
      a.withdraw();
      assert.deepEqual(described(), []);
      // The same credential at another registry is another source.
      download.offerSource(source('r1:5000', 'one/app', 'Basic a'));
      download.offerSource(source('r2:5000', 'one/app', 'Basic a'));
      assert.equal(download.sources.length, 2);
      await download.fail(new Error('done'));
      assert.deepEqual(download.sources, [], 'none kept past the download');
      download.offerSource(source('r1:5000', 'one/app', 'Basic a'));
      assert.deepEqual(download.sources, [], 'none offered to a settled download');
    });

    it('answers each reader with the failure of its own source', () => {
      const answer = (realm: string, status = 401): UpstreamAnswer => ({
        status,
        headers: { 'www-authenticate': `Basic realm="${realm}"` },
        body: Buffer.from('{}'),
      });
      const error = new SourcesFailedError([
        { source: source('r1:5000', 'one/app', 'Basic a'), answer: answer('one') },
        { source: source('r2:5000', 'two/app', 'Basic b'), answer: answer('two') },
        { source: source('r4:5000', 'four/app', 'Basic d'), answer: answer('four', 503) },
        { source: source('r5:5000', 'five/app', 'Basic e'), answer: undefined },
        { source: source('r5:5000', 'five/app', 'Basic f'), answer: answer('five', 429) },
      ]);
      const realmOf = (s: OriginSource): string | undefined =>
        String(error.answerFor(s)?.headers['www-authenticate'] ?? '') || undefined;
      assert.equal(error.status, 502);
      assert.equal(realmOf(source('r1:5000', 'one/app', 'Basic a')), 'Basic realm="one"');
      assert.equal(realmOf(source('r2:5000', 'two/app', 'Basic b')), 'Basic realm="two"');
      assert.equal(
        realmOf(source('r2:5000', 'two/app', 'Basic c')),
        'Basic realm="two"',
        'a credential not tried: the answer for its registry and repository',
      );
      assert.equal(realmOf(source('r2:5000', 'three/app', 'Basic b')), undefined, 'none other');
      assert.equal(realmOf(source('r3:5000', 'one/app', 'Basic a')), undefined, 'none other');
      assert.equal(error.answerFor(source('r4:5000', 'four/app', 'Basic d'))?.status, 503);
      assert.equal(
        error.answerFor(source('r5:5000', 'five/app', 'Basic e')),
        undefined,
        'its registry did not answer it: no other credential’s answer',
      );
      assert.equal(error.answerFor(source('r5:5000', 'five/app', 'Basic f'))?.status, 429);
      assert.throws(() => new SourcesFailedError([]));
    });
    it('ends a read waiting for bytes when its cursor closes, with no progress to wake it', async () => {
      // A stalled swarm brings no progress: a reader that leaves must not wait for some.
      const download = await newDownload(digestOf(Buffer.from('stalled')), 7);
      const cursor = download.openCursor(0);
      assert.ok(cursor !== undefined);
      const reading = cursor.read(Buffer.alloc(4));
      await new Promise((resolve) => setImmediate(resolve));
      cursor.close();
      await assert.rejects(reading, /cursor closed/);
      await download.fail(new Error('done'));
    });
  });

  describe('size', () => {
    it('is unknown until set, and the first size set wins', async () => {
      const download = await newDownload(digestOf(Buffer.from('x')));
      assert.equal(download.size, undefined);
      download.setSize(10);
      download.setSize(20);
      assert.equal(download.size, 10);
      assert.equal(await download.sized, 10);
      await download.fail(new Error('done'));
    });

    it('resolves `sized` with the size set while the download runs', async () => {
      const blob = randomBytes(1000);
      const download = await newDownload(digestOf(blob));
      const sized = download.sized;
      download.setSize(blob.length);
      assert.equal(await sized, blob.length);
      assert.equal(await fill(download, Readable.from([blob])), 'verified');
      assert.equal(await download.sized, blob.length);
    });

    it('resolves `sized` with the bytes received when no size was announced', async () => {
      const blob = randomBytes(1000);
      const download = await newDownload(digestOf(blob));
      assert.equal(await fill(download, Readable.from([blob])), 'verified');
      assert.equal(download.size, blob.length);
      assert.equal(await download.sized, blob.length);
    });

    it('rejects `sized` when the download fails before a size was known', async () => {
      const download = await newDownload(digestOf(Buffer.from('x')));
      const sized = download.sized;
      const error = new Error('no seed and no origin');
      await download.fail(error);
      await assert.rejects(sized, (caught) => caught === error);
      assert.equal(download.error, error);
      assert.equal(download.size, undefined);
      assert.equal(await download.settled, 'failed');
    });

    it('keeps `sized` resolved when the download fails after its size was known', async () => {
      const download = await newDownload(digestOf(Buffer.from('x')), 1);
      await download.fail(new Error('connection reset'));
      assert.equal(await download.sized, 1);
    });
  });

  describe('from the origin (fillInOrder)', () => {
    it('streams every byte in order to a reader attached before the data arrives', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const body = new PassThrough();
      const reader = drain(openReader(download));
      let counted = 0;
      const run = fillInOrder(download, body, store, (n) => (counted += n));
      await feed(body, blob);
      body.end();

      assert.equal(await run, 'verified');
      const received = await reader;
      assert.equal(received.error, undefined);
      assert.equal(received.bytes.length, blob.length);
      assert.equal(digestOf(received.bytes).toString(), digest.toString());
      assert.equal(counted, blob.length);
      assert.equal(download.available, blob.length);
      assert.equal(download.state, 'verified');
      assert.equal(download.error, undefined);
      assert.equal(await download.settled, 'verified');
      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), blob.length);
      assert.deepEqual(await readdir(join(root, 'tmp')), []);
    });

    it('streams a blob whose size was not announced', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest);
      const body = new PassThrough();
      const reader = drain(openReader(download));
      const run = fill(download, body);
      await feed(body, blob);
      body.end();
      assert.equal(await run, 'verified');
      const received = await reader;
      assert.equal(received.error, undefined);
      assert.deepEqual(received.bytes, blob);
      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), blob.length);
    });

    it('streams an empty blob that matches its digest', async () => {
      const empty = Buffer.alloc(0);
      const digest = digestOf(empty);
      for (const size of [0, undefined]) {
        const download = await newDownload(digest, size);
        const reader = drain(openReader(download));
        assert.equal(await fill(download, Readable.from([])), 'verified', `size ${size}`);
        const received = await reader;
        assert.equal(received.error, undefined);
        assert.equal(received.bytes.length, 0);
        assert.equal(await download.sized, 0);
      }
      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), 0);
    });

    it('withholds the final byte until the blob is verified', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const body = new PassThrough();
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      const run = fill(download, body);

      // Every byte has arrived, but the upstream body has not ended: nothing is verified yet.
      await feed(body, blob);
      await until(() => download.available === blob.length, 'every byte is available');
      await until(() => reader.received() === blob.length - 1, 'all but the last byte are read');
      await sleep(50);
      assert.equal(download.state, 'running');
      assert.equal(reader.received(), blob.length - 1);
      assert.equal(reader.ended(), false);
      assert.equal(store.has(digest), false);

      body.end();
      assert.equal(await run, 'verified');
      await closed;
      assert.equal(reader.received(), blob.length);
      assert.equal(reader.ended(), true);
      assert.deepEqual(reader.bytes(), blob);
    });

    it('completes its readers once the digest matches, before the commit to the store ends', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      // A slow disk: the commit (fsync, rename) waits until the test lets it go.
      let release: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      const slowStore = Object.create(store) as FsContentStore;
      slowStore.commit = async (...args) => {
        await gate;
        return store.commit(...args);
      };
      await download.append(blob);
      const finished = download.finish(slowStore);
      await closed;
      assert.equal(reader.error(), undefined);
      assert.equal(reader.ended(), true);
      assert.deepEqual(reader.bytes(), blob);
      assert.equal(download.state, 'running');
      assert.equal(store.has(digest), false);
      release();
      assert.equal(await finished, 'verified');
      assert.equal(store.has(digest), true);
    });

    it('ends a reader that had every verified byte cleanly when the commit then fails', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      const brokenStore = Object.create(store) as FsContentStore;
      brokenStore.commit = async () => {
        // After the readers had their last byte, so that the failure comes after it.
        await until(() => reader.ended(), 'the reader has every byte');
        throw new Error('disk full');
      };
      await download.append(blob);
      assert.equal(await download.finish(brokenStore), 'failed');
      await closed;
      assert.equal(reader.error(), undefined);
      assert.deepEqual(reader.bytes(), blob);
      await assertNothingKept(digest);
    });

    it('withholds the last available byte until verification when the size is unknown', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest);
      const body = new PassThrough();
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      const run = fill(download, body);

      // Part way: the reader stays one byte behind what is available.
      await feed(body, blob.subarray(0, 100_000));
      await until(() => download.available === 100_000, 'the first half is available');
      await until(() => reader.received() === 99_999, 'all but the last available byte are read');
      await sleep(50);
      assert.equal(reader.received(), 99_999);
      assert.equal(download.size, undefined);

      // Everything: still one byte behind until the body ends and the digest matches.
      await feed(body, blob.subarray(100_000));
      await until(() => download.available === blob.length, 'every byte is available');
      await until(() => reader.received() === blob.length - 1, 'all but the last byte are read');
      await sleep(50);
      assert.equal(download.state, 'running');
      assert.equal(reader.received(), blob.length - 1);
      assert.equal(reader.ended(), false);

      body.end();
      assert.equal(await run, 'verified');
      await closed;
      assert.equal(reader.error(), undefined);
      assert.equal(reader.ended(), true);
      assert.deepEqual(reader.bytes(), blob);
    });

    it('withholds the final byte of a range until the blob is verified', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const download = await newDownload(digestOf(blob), blob.length);
      const body = new PassThrough();
      const stream = openReader(download, 1000, 5000);
      const reader = watch(stream);
      const closed = closeOf(stream);
      const run = fill(download, body);
      await feed(body, blob);
      await until(() => reader.received() === 3999, 'all but the last byte of the range are read');
      await sleep(50);
      assert.equal(reader.received(), 3999);
      assert.equal(reader.ended(), false);
      body.end();
      assert.equal(await run, 'verified');
      await closed;
      assert.equal(reader.received(), 4000);
      assert.deepEqual(reader.bytes(), blob.subarray(1000, 5000));
    });

    it('fails every reader on a digest mismatch and commits nothing', async () => {
      const expected = randomBytes(BLOB_BYTES);
      const digest = digestOf(expected);
      const served = corrupted(expected);
      const download = await newDownload(digest, served.length);
      const body = new PassThrough();
      const readers = [
        drain(openReader(download)),
        drain(openReader(download)),
        drain(openReader(download, 500, 1500)),
        drain(openReader(download, served.length - 1)),
      ];
      const run = fill(download, body);
      await feed(body, served);
      body.end();

      assert.equal(await run, 'failed');
      assertMismatch(download.error, 'DIGEST_MISMATCH');
      assert.equal(await download.settled, 'failed');
      for (const received of await Promise.all(readers)) {
        assertMismatch(received.error, 'DIGEST_MISMATCH');
      }
      const [whole, , range, last] = await Promise.all(readers);
      assert.ok((whole?.bytes.length ?? 0) < served.length);
      assert.ok((range?.bytes.length ?? 0) < 1000);
      assert.equal(last?.bytes.length, 0);
      await assertNothingKept(digest);
    });

    it('fails a reader that arrives after the mismatch, while others still read', async () => {
      const expected = randomBytes(BLOB_BYTES);
      const digest = digestOf(expected);
      const download = await newDownload(digest, expected.length);
      // A reader that has not consumed anything yet keeps the download's file open.
      const idle = openReader(download);
      assert.equal(await fill(download, Readable.from([randomBytes(BLOB_BYTES)])), 'failed');
      const late = await drain(openReader(download));
      assertMismatch(late.error, 'DIGEST_MISMATCH');
      assertMismatch((await drain(idle)).error, 'DIGEST_MISMATCH');
      await assertNothingKept(digest);
    });

    it('fails the reader of an announced empty body whose digest does not match', async () => {
      const digest = digestOf(Buffer.from('not empty'));
      const download = await newDownload(digest, 0);
      const body = new PassThrough();
      const reader = drain(openReader(download));
      const run = fill(download, body);
      body.end();
      assert.equal(await run, 'failed');
      assertMismatch(download.error, 'DIGEST_MISMATCH');
      const received = await reader;
      assert.equal(received.bytes.length, 0);
      assertMismatch(received.error, 'DIGEST_MISMATCH');
      await assertNothingKept(digest);
    });

    it('fails the reader of an unannounced empty body whose digest does not match', async () => {
      const digest = digestOf(Buffer.from('not empty'));
      const download = await newDownload(digest);
      const stream = openReader(download);
      const reader = drain(stream);
      // The reader waits for data rather than ending with nothing.
      await sleep(20);
      assert.equal(stream.readableEnded, false);
      assert.equal(await fill(download, Readable.from([])), 'failed');
      assertMismatch(download.error, 'DIGEST_MISMATCH');
      const received = await reader;
      assert.equal(received.bytes.length, 0);
      assertMismatch(received.error, 'DIGEST_MISMATCH');
      await assertNothingKept(digest);
    });

    it('fails when the body is shorter than announced', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const body = new PassThrough();
      const reader = drain(openReader(download));
      const run = fill(download, body);
      await feed(body, blob.subarray(0, blob.length - 10));
      body.end();

      assert.equal(await run, 'failed');
      assertMismatch(download.error, 'SIZE_MISMATCH');
      const received = await reader;
      assertMismatch(received.error, 'SIZE_MISMATCH');
      assert.ok(received.bytes.length <= blob.length - 10);
      await assertNothingKept(digest);
    });

    it('fails when the body is longer than announced, without reading it all', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const announced = blob.length - 10;
      const download = await newDownload(digest, announced);
      const reader = drain(openReader(download));
      let counted = 0;
      const chunks = [blob.subarray(0, 100_000), blob.subarray(100_000), randomBytes(BLOB_BYTES)];
      const run = fillInOrder(download, Readable.from(chunks), store, (n) => (counted += n));

      assert.equal(await run, 'failed');
      assertMismatch(download.error, 'SIZE_MISMATCH');
      assert.equal(counted, 100_000);
      const received = await reader;
      assertMismatch(received.error, 'SIZE_MISMATCH');
      assert.ok(received.bytes.length < announced);
      await assertNothingKept(digest);
    });

    it('gives ranged readers exactly their bytes', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const download = await newDownload(digestOf(blob), blob.length);
      const body = new PassThrough();
      const ranges: [number, number][] = [
        [0, 1],
        [0, 65_536],
        [1000, 70_000],
        [65_535, 131_073],
        [blob.length - 10, blob.length],
        [blob.length - 1, blob.length],
        [12_345, blob.length],
      ];
      const readers = ranges.map(([start, end]) => drain(openReader(download, start, end)));
      const whole = drain(openReader(download, 12_345));
      const run = fill(download, body);
      await feed(body, blob, 7_777);
      body.end();
      assert.equal(await run, 'verified');
      const received = await Promise.all(readers);
      ranges.forEach(([start, end], i) => {
        assert.equal(received[i]?.error, undefined, `${start}-${end}`);
        assert.deepEqual(received[i]?.bytes, blob.subarray(start, end), `${start}-${end}`);
      });
      assert.deepEqual((await whole).bytes, blob.subarray(12_345));
    });

    it('serves readers after verification while its file is open, and none once all closed', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const first = openReader(download);
      assert.equal(await fill(download, Readable.from([blob])), 'verified');

      const late = await drain(openReader(download, 10, 20));
      assert.equal(late.error, undefined);
      assert.deepEqual(late.bytes, blob.subarray(10, 20));
      const whole = await drain(first);
      assert.deepEqual(whole.bytes, blob);

      assert.equal(download.openReader(0), undefined);
      assert.equal(download.openReader(0, 10), undefined);
      assert.ok(store.has(digest));
    });

    it('serves no reader once it settled without any', async () => {
      const blob = randomBytes(1000);
      const download = await newDownload(digestOf(blob), blob.length);
      assert.equal(await fill(download, Readable.from([blob])), 'verified');
      assert.equal(download.openReader(0), undefined);

      const failed = await newDownload(digestOf(blob), blob.length);
      assert.equal(await fill(failed, Readable.from([randomBytes(1000)])), 'failed');
      assert.equal(failed.openReader(0), undefined);
    });

    it('releases its file when a reader is destroyed before reading', async () => {
      const blob = randomBytes(1000);
      const download = await newDownload(digestOf(blob), blob.length);
      const stream = openReader(download);
      const closed = closeOf(stream);
      stream.destroy();
      await closed;
      assert.equal(await fill(download, Readable.from([blob])), 'verified');
      assert.equal(download.openReader(0), undefined);
    });

    it('fails its readers when the body errors', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const body = new PassThrough();
      const reader = drain(openReader(download));
      const run = fill(download, body);
      await feed(body, blob.subarray(0, 50_000));
      body.destroy(new Error('connection reset'));
      assert.equal(await run, 'failed');
      assert.equal(download.error?.message, 'connection reset');
      const received = await reader;
      assert.ok(received.error instanceof Error);
      assert.equal(received.error.message, 'connection reset');
      await assertNothingKept(digest);
    });
  });

  describe('from the swarm (writeAt, advance, finish)', () => {
    /**
     * A swarm download holding all of `blob`, its prefix over every byte, its hash kept behind
     * the whole of it, not yet finished; `readBack` counts the bytes read from its file.
     */
    const filled = async (
      blob: Buffer,
      digest: Digest = digestOf(blob),
    ): Promise<{ download: BlobDownload; readBack: () => number }> => {
      const temp = await store.createTemp();
      let readBack = 0;
      const read = temp.handle.read.bind(temp.handle);
      temp.handle.read = ((buffer: Buffer, offset: number, length: number, position: number) => {
        readBack += length;
        return read(buffer, offset, length, position);
      }) as typeof temp.handle.read;
      const download = new BlobDownload(digest, temp);
      download.setSize(blob.length);
      download.lagDigest(blob.length);
      for (let index = 0; index * PIECE_BYTES < blob.length; index++) {
        await download.writeAt(index * PIECE_BYTES, piece(blob, index));
      }
      download.advance(blob.length);
      return { download, readBack: () => readBack };
    };

    /** A vouch whose record comes with `comes` on the next turn of the loop. */
    const recordNextTurn = (
      comes: () => boolean,
    ): { vouch: RecordVouch; checks: ('record' | 'digest')[] } => {
      let vouched = false;
      const checks: ('record' | 'digest')[] = [];
      const vouching = new Promise<void>((resolve) =>
        setImmediate(() => {
          vouched = comes();
          resolve();
        }),
      );
      return {
        vouch: { vouched: () => vouched, vouching, checked: (by) => checks.push(by) },
        checks,
      };
    };

    // 16 MiB, none of it hashed yet (the hash kept behind the whole blob): reading it back
    // takes far longer than a record that comes on the next turn of the loop.
    const BIG = 16 * 1024 * 1024;

    it('takes a record that comes before the hash is done, and stops hashing', async () => {
      const blob = randomBytes(BIG);
      const digest = digestOf(blob);
      const { download, readBack } = await filled(blob, digest);
      // As the swarm fetch does: the record defers the hash, then says it is trusted.
      const { vouch, checks } = recordNextTurn(() => {
        download.skipDigest();
        return true;
      });
      assert.equal(await download.finish(store, vouch), 'verified');
      assert.deepEqual(checks, ['record']);
      assert.ok(readBack() < blob.length / 2, `the hash stopped early: ${readBack()} read back`);
      const opened = await store.open(digest);
      assert.ok(opened !== undefined);
      const committed = Buffer.alloc(blob.length);
      await opened.handle.read(committed, 0, blob.length, 0);
      await opened.release();
      assert.deepEqual(committed, blob);
    });

    it('hashes on when the record deferred the hash yet does not vouch after all', async () => {
      const blob = randomBytes(BIG);
      const { download } = await filled(blob);
      const { vouch, checks } = recordNextTurn(() => {
        download.skipDigest();
        return false;
      });
      assert.equal(await download.finish(store, vouch), 'verified', String(download.error));
      assert.deepEqual(checks, ['digest']);
    });

    it('hashes the blob when the record never comes, and refuses bytes that do not match', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const never = new Promise<void>(() => undefined);
      const checks: string[] = [];
      const checked = (by: string): void => {
        checks.push(by);
      };
      const good = (await filled(blob)).download;
      assert.equal(
        await good.finish(store, { vouched: () => false, vouching: never, checked }),
        'verified',
      );

      // Wrong bytes under the digest: a vouching that settles without vouching changes nothing.
      const wrong = (await filled(randomBytes(BLOB_BYTES), digestOf(blob.subarray(1)))).download;
      const settled = Promise.resolve();
      assert.equal(
        await wrong.finish(store, { vouched: () => false, vouching: settled, checked }),
        'failed',
      );
      assertMismatch(wrong.error, 'DIGEST_MISMATCH');
      assert.deepEqual(checks, ['digest', 'digest']);
    });

    it('serves pieces written out of order only as far as the contiguous prefix', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);

      // Piece 2 arrives first: nothing before it is there, so nothing is readable.
      await download.writeAt(2 * PIECE_BYTES, piece(blob, 2));
      await sleep(20);
      assert.equal(download.available, 0);
      assert.equal(reader.received(), 0);

      // Piece 0: the prefix is piece 0 alone, although piece 2 is on disk too.
      await download.writeAt(0, piece(blob, 0));
      download.advance(PIECE_BYTES);
      assert.equal(download.available, PIECE_BYTES);
      await until(() => reader.received() === PIECE_BYTES, 'piece 0 is read');
      await sleep(20);
      assert.equal(reader.received(), PIECE_BYTES);

      // Piece 1 fills the gap: pieces 0 to 2 are readable.
      await download.writeAt(PIECE_BYTES, piece(blob, 1));
      download.advance(3 * PIECE_BYTES);
      await until(() => reader.received() === 3 * PIECE_BYTES, 'pieces 0 to 2 are read');

      // Moving the prefix back does nothing.
      download.advance(PIECE_BYTES);
      assert.equal(download.available, 3 * PIECE_BYTES);

      // The last piece: all but the final byte, until the blob verifies.
      await download.writeAt(3 * PIECE_BYTES, piece(blob, 3));
      download.advance(blob.length);
      await until(() => reader.received() === blob.length - 1, 'all but the last byte are read');
      await sleep(50);
      assert.equal(reader.received(), blob.length - 1);
      assert.equal(reader.ended(), false);
      assert.equal(download.state, 'running');
      assert.equal(store.has(digest), false);

      assert.equal(await download.finish(store), 'verified');
      await closed;
      assert.equal(reader.error(), undefined);
      assert.equal(reader.ended(), true);
      assert.deepEqual(reader.bytes(), blob);
      assert.equal(await download.settled, 'verified');
      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), blob.length);
      assert.deepEqual(await readdir(join(root, 'tmp')), []);
      // Finishing again changes nothing.
      assert.equal(await download.finish(store), 'verified');
    });

    it('verifies and commits a blob whose pieces all arrived before the prefix moved', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const reader = drain(openReader(download, 1000, 180_000));
      for (const index of [3, 1, 2, 0]) {
        await download.writeAt(index * PIECE_BYTES, piece(blob, index));
      }
      download.advance(blob.length);
      assert.equal(await download.finish(store), 'verified');
      const received = await reader;
      assert.equal(received.error, undefined);
      assert.deepEqual(received.bytes, blob.subarray(1000, 180_000));
      assert.ok(store.has(digest));
    });

    it('sets the size from the prefix when finishing without one', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest);
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      await download.writeAt(PIECE_BYTES, blob.subarray(PIECE_BYTES));
      await download.writeAt(0, piece(blob, 0));
      download.advance(blob.length);
      await until(() => reader.received() === blob.length - 1, 'all but the last byte are read');
      await sleep(20);
      assert.equal(reader.received(), blob.length - 1);
      assert.equal(await download.finish(store), 'verified');
      assert.equal(await download.sized, blob.length);
      await closed;
      assert.deepEqual(reader.bytes(), blob);
      assert.ok(store.has(digest));
    });

    it('fails the readers and commits nothing when the digest does not match', async () => {
      const expected = randomBytes(BLOB_BYTES);
      const digest = digestOf(expected);
      const served = corrupted(expected);
      const download = await newDownload(digest, served.length);
      const readers = [
        drain(openReader(download)),
        drain(openReader(download, 100, 200)),
        drain(openReader(download, served.length - 1)),
      ];
      await download.writeAt(2 * PIECE_BYTES, piece(served, 2));
      await download.writeAt(PIECE_BYTES, piece(served, 1));
      await download.writeAt(3 * PIECE_BYTES, piece(served, 3));
      await download.writeAt(0, piece(served, 0));
      download.advance(PIECE_BYTES);
      download.advance(served.length);

      assert.equal(await download.finish(store), 'failed');
      assertMismatch(download.error, 'DIGEST_MISMATCH');
      assert.equal(await download.settled, 'failed');
      const [whole, range, last] = await Promise.all(readers);
      assertMismatch(whole?.error, 'DIGEST_MISMATCH');
      assert.ok((whole?.bytes.length ?? 0) < served.length);
      // A range that ends before the final byte of the blob is complete, and still fails.
      assertMismatch(range?.error, 'DIGEST_MISMATCH');
      assert.ok((range?.bytes.length ?? 0) < 100);
      assertMismatch(last?.error, 'DIGEST_MISMATCH');
      assert.equal(last?.bytes.length, 0);
      await assertNothingKept(digest);
    });

    it('fails when finished before the whole blob is available', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const reader = drain(openReader(download));
      await download.writeAt(0, piece(blob, 0));
      await download.writeAt(2 * PIECE_BYTES, piece(blob, 2));
      download.advance(PIECE_BYTES);
      assert.equal(await download.finish(store), 'failed');
      assertMismatch(download.error, 'SIZE_MISMATCH');
      const received = await reader;
      assertMismatch(received.error, 'SIZE_MISMATCH');
      assert.ok(received.bytes.length <= PIECE_BYTES);
      await assertNothingKept(digest);
    });

    it('fails its readers with the error it failed with', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      const stream = openReader(download);
      const reader = watch(stream);
      const closed = closeOf(stream);
      await download.writeAt(0, piece(blob, 0));
      download.advance(PIECE_BYTES);
      await until(() => reader.received() === PIECE_BYTES, 'piece 0 is read');

      const error = new Error('every peer went away');
      await download.fail(error);
      await download.fail(new Error('a second failure'));
      await closed;
      assert.equal(reader.error(), error);
      assert.equal(reader.ended(), false);
      assert.equal(download.state, 'failed');
      assert.equal(download.error, error);
      assert.equal(await download.settled, 'failed');
      assert.equal(await download.finish(store), 'failed');
      await assertNothingKept(digest);
    });

    it('reads verified bytes only within the available prefix', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const digest = digestOf(blob);
      const download = await newDownload(digest, blob.length);
      assert.equal(await download.readVerified(0, 1), undefined);

      await download.writeAt(2 * PIECE_BYTES, piece(blob, 2));
      await download.writeAt(0, piece(blob, 0));
      download.advance(PIECE_BYTES);
      assert.deepEqual(await download.readVerified(0, PIECE_BYTES), piece(blob, 0));
      assert.deepEqual(await download.readVerified(100, 200), blob.subarray(100, 300));
      assert.deepEqual(
        await download.readVerified(PIECE_BYTES - 1, 1),
        blob.subarray(PIECE_BYTES - 1, PIECE_BYTES),
      );
      // Past the prefix, even when the bytes are on disk.
      assert.equal(await download.readVerified(PIECE_BYTES - 1, 2), undefined);
      assert.equal(await download.readVerified(PIECE_BYTES, 1), undefined);
      assert.equal(await download.readVerified(2 * PIECE_BYTES, PIECE_BYTES), undefined);

      await download.writeAt(PIECE_BYTES, piece(blob, 1));
      download.advance(3 * PIECE_BYTES);
      assert.deepEqual(await download.readVerified(2 * PIECE_BYTES, PIECE_BYTES), piece(blob, 2));
      assert.equal(await download.readVerified(3 * PIECE_BYTES, 1), undefined);

      await download.writeAt(3 * PIECE_BYTES, piece(blob, 3));
      download.advance(blob.length);
      assert.deepEqual(await download.readVerified(3 * PIECE_BYTES, PIECE_BYTES), piece(blob, 3));
      assert.equal(await download.readVerified(blob.length - 1, 2), undefined);
    });

    it('reads verified bytes of a verified download while a reader keeps its file open', async () => {
      const blob = randomBytes(BLOB_BYTES);
      const download = await newDownload(digestOf(blob), blob.length);
      const stream = openReader(download);
      await download.writeAt(0, blob);
      download.advance(blob.length);
      assert.equal(await download.finish(store), 'verified');
      assert.deepEqual(await download.readVerified(PIECE_BYTES, PIECE_BYTES), piece(blob, 1));
      assert.deepEqual((await drain(stream)).bytes, blob);
      // Its file released, the blob is read from the store.
      assert.equal(await download.readVerified(PIECE_BYTES, PIECE_BYTES), undefined);
    });

    it('reads no bytes of a failed download, even while a reader keeps its file open', async () => {
      const expected = randomBytes(BLOB_BYTES);
      const digest = digestOf(expected);
      const served = corrupted(expected);
      const download = await newDownload(digest, served.length);
      // A reader that has not consumed anything yet keeps the download's file open.
      const idle = openReader(download);
      assert.equal(await fill(download, Readable.from([served])), 'failed');
      assert.equal(download.available, served.length);
      // The content failed its digest and its temp file is gone: none of it may go to a peer.
      const whileOpen = await download.readVerified(0, PIECE_BYTES);
      assert.ok(
        whileOpen === undefined,
        `readVerified returned ${whileOpen?.length} bytes of a failed download`,
      );
      assertMismatch((await drain(idle)).error, 'DIGEST_MISMATCH');
      assert.equal(await download.readVerified(0, PIECE_BYTES), undefined);
      await assertNothingKept(digest);
    });
  });
});

describe('BlobDownload pieces in memory (writePiece)', () => {
  const MiB = 1024 * 1024;

  /** Writes `blob`'s pieces of `pieceBytes` in `order` as a swarm would, copies from `pool`. */
  async function writePieces(
    download: BlobDownload,
    blob: Buffer,
    pieceBytes: number,
    order: readonly number[],
    pool: PieceBuffers,
  ): Promise<void> {
    const have = new Set<number>();
    let prefix = 0;
    for (const index of order) {
      const bytes = blob.subarray(index * pieceBytes, (index + 1) * pieceBytes);
      const copy = pool.take(bytes.length);
      bytes.copy(copy);
      await download.writePiece(index * pieceBytes, copy);
      have.add(index);
      while (have.has(prefix)) {
        prefix += 1;
      }
      download.advance(Math.min(blob.length, prefix * pieceBytes));
      // Give readers and the hash a turn, as the event loop does between pieces.
      await sleep(0);
    }
  }

  it('verifies from the pieces in memory and gives their buffers back to the pool', async () => {
    const blob = randomBytes(4 * MiB + 12_345);
    const digest = digestOf(blob);
    const pool = new PieceBuffers(64 * MiB);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    download.setSize(blob.length);
    const reader = drain(openReader(download));
    const count = Math.ceil(blob.length / MiB);
    await writePieces(download, blob, MiB, [...Array(count).keys()], pool);
    assert.equal(await download.finish(store), 'verified');
    const received = await reader;
    assert.equal(received.error, undefined);
    assert.deepEqual(received.bytes, blob);
    assert.ok(pool.bytes >= 4 * MiB, `the pool holds ${pool.bytes} bytes of returned pieces`);
    assert.ok(store.has(digest));
  });

  it('reads back only what it could not keep: pieces far out of order still verify', async () => {
    // Twice the memory budget, written back to front: most pieces cannot be kept until the
    // prefix reaches them, and are hashed from the file.
    const pieceBytes = MiB;
    const count = (2 * HELD_BYTES) / pieceBytes;
    const blob = randomBytes(count * pieceBytes - 777);
    const digest = digestOf(blob);
    const pool = new PieceBuffers(8 * MiB);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    download.setSize(blob.length);
    const whole = drain(openReader(download));
    const range = drain(openReader(download, 3 * MiB + 5, 7 * MiB + 3));
    await writePieces(download, blob, pieceBytes, [...Array(count).keys()].reverse(), pool);
    assert.equal(await download.finish(store), 'verified');
    assert.deepEqual((await whole).bytes, blob);
    assert.deepEqual((await range).bytes, blob.subarray(3 * MiB + 5, 7 * MiB + 3));
  });

  it("fails the digest when a piece held in memory is not the blob's", async () => {
    const blob = randomBytes(3 * MiB);
    const digest = digestOf(blob);
    const served = Buffer.from(blob);
    served[MiB + 10] = (served[MiB + 10] ?? 0) ^ 0xff;
    const pool = new PieceBuffers(8 * MiB);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    download.setSize(served.length);
    const reader = drain(openReader(download));
    await writePieces(download, served, MiB, [0, 2, 1], pool);
    assert.equal(await download.finish(store), 'failed');
    assertMismatch(download.error, 'DIGEST_MISMATCH');
    const received = await reader;
    assertMismatch(received.error, 'DIGEST_MISMATCH');
    assert.ok(received.bytes.length < served.length);
    assert.equal(await download.readVerified(0, MiB), undefined);
    await assertNothingKept(digest);
  });

  /** A temp file for a download whose gathered writes are recorded (bytes per write). */
  async function watchedTemp(): Promise<{
    temp: Awaited<ReturnType<FsContentStore['createTemp']>>;
    writes: number[];
  }> {
    const temp = await store.createTemp();
    const writes: number[] = [];
    const writev = temp.handle.writev.bind(temp.handle);
    temp.handle.writev = (buffers, position) => {
      writes.push(buffers.reduce((sum, b) => sum + b.byteLength, 0));
      return writev(buffers, position);
    };
    return { temp, writes };
  }

  it('writes pieces that arrive out of order in gathered writes of 1 MiB, each byte once', async () => {
    const pieceBytes = 256 * 1024;
    const blob = randomBytes(4 * MiB);
    const digest = digestOf(blob);
    const pool = new PieceBuffers(16 * MiB);
    const { temp, writes } = await watchedTemp();
    const download = new BlobDownload(digest, temp, pool);
    download.setSize(blob.length);
    const reader = drain(openReader(download));
    // Within each MiB the pieces come last first; no piece is written on its own.
    const order = [...Array(16).keys()].map((i) => Math.floor(i / 4) * 4 + (3 - (i % 4)));
    await writePieces(download, blob, pieceBytes, order, pool);
    assert.equal(await download.finish(store), 'verified');
    assert.deepEqual((await reader).bytes, blob);
    assert.deepEqual(writes, [MiB, MiB, MiB, MiB]);
  });

  it('gathers socket-sized chunks appended in order into writes of 1 MiB', async () => {
    const blob = randomBytes(3 * MiB + 1000);
    const { temp, writes } = await watchedTemp();
    const download = new BlobDownload(digestOf(blob), temp);
    const chunks: Buffer[] = [];
    for (let offset = 0; offset < blob.length; offset += 64 * 1024) {
      chunks.push(Buffer.from(blob.subarray(offset, offset + 64 * 1024)));
    }
    const reader = drain(openReader(download));
    assert.equal(
      await fillInOrder(download, Readable.from(chunks), store, () => undefined),
      'verified',
    );
    assert.deepEqual((await reader).bytes, blob);
    assert.deepEqual(writes, [MiB, MiB, MiB, 1000]);
  });

  it('copies lent chunks (copyInto) into pool buffers that come back once written', async () => {
    const blob = randomBytes(5 * MiB + 1000);
    const pool = new PieceBuffers(16 * MiB);
    const download = new BlobDownload(digestOf(blob), await store.createTemp(), pool);
    download.setSize(blob.length);
    // One block lent again and again, as the origin's block reader does: overwritten with the
    // next bytes as soon as the next chunk is asked for, and with garbage at the end.
    const block = Buffer.alloc(MiB);
    async function* lent(): AsyncGenerator<Buffer> {
      for (let offset = 0; offset < blob.length; offset += MiB) {
        // The next bytes arrive from the socket.
        await sleep(0);
        const length = blob.copy(block, 0, offset, offset + MiB);
        yield block.subarray(0, length);
      }
      block.fill(0xee);
    }
    const blocks = new Set<ArrayBufferLike>();
    const take = pool.take.bind(pool);
    pool.take = (size: number): Buffer => {
      const buffer = take(size);
      blocks.add(buffer.buffer);
      return buffer;
    };
    const reader = drain(openReader(download));
    let counted = 0;
    const state = await fillInOrder(download, lent(), store, (n) => (counted += n), pool);
    assert.equal(state, 'verified');
    assert.equal(counted, blob.length);
    assert.deepEqual((await reader).bytes, blob);
    // Six copies, in blocks the pool had back once they were written and dropped: fewer blocks
    // than copies, and every one of them free in the pool at the end.
    assert.ok(blocks.size < 6, `${blocks.size} blocks for 6 copies`);
    assert.equal(
      pool.bytes,
      [...blocks].reduce((sum, b) => sum + b.byteLength, 0),
    );
  });

  it('hands out copies of pieces in memory, which stay intact when the buffer is reused', async () => {
    const blob = randomBytes(2 * MiB);
    const pool = new PieceBuffers(8 * MiB);
    const download = new BlobDownload(digestOf(blob), await store.createTemp(), pool);
    download.setSize(blob.length);
    await writePieces(download, blob, MiB, [1], pool);
    const ahead = await download.readAt(MiB, MiB);
    assert.deepEqual(ahead, blob.subarray(MiB));
    await writePieces(download, blob, MiB, [0], pool);
    download.advance(blob.length);
    const first = await download.readVerified(0, MiB);
    assert.deepEqual(first, blob.subarray(0, MiB));
    assert.equal(await download.finish(store), 'verified');
    // The pieces' buffers are back in the pool; overwriting them changes no copy handed out.
    pool.take(MiB).fill(0);
    pool.take(MiB).fill(0);
    assert.deepEqual(ahead, blob.subarray(MiB));
    assert.deepEqual(first, blob.subarray(0, MiB));
  });
});

/** Hooks that record what the table reports. */
function recordingHooks(): DownloadHooks & {
  started: BlobDownload[];
  settled: [BlobDownload, DownloadState][];
} {
  const hooks = {
    started: [] as BlobDownload[],
    settled: [] as [BlobDownload, DownloadState][],
    onStarted: (download: BlobDownload) => {
      hooks.started.push(download);
    },
    onSettled: (download: BlobDownload, state: DownloadState) => {
      hooks.settled.push([download, state]);
    },
  };
  return hooks;
}

/** What an origin fetcher does with a 200: a download filled in order from `body`. */
async function fromOrigin(
  digest: Digest,
  body: AsyncIterable<Uint8Array>,
  size: number | undefined,
  onBytes: (bytes: number) => void = () => undefined,
): Promise<Flight> {
  const download = await newDownload(digest, size);
  void fillInOrder(download, body, store, onBytes);
  return { kind: 'download', download };
}

function answer(status: number, text: string): Flight {
  const upstream: UpstreamAnswer = {
    status,
    headers: { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="x"' },
    body: Buffer.from(text),
  };
  return { kind: 'answer', answer: upstream };
}

function downloadOf(flight: Flight | undefined): BlobDownload {
  assert.equal(flight?.kind, 'download');
  return flight.download;
}

function answerOf(flight: Flight | undefined): UpstreamAnswer {
  assert.equal(flight?.kind, 'answer');
  return flight.answer;
}

/** A promise settled from outside. */
function deferred<T>(): {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: Error) => void;
} {
  let resolve: (value: T) => void = () => undefined;
  let reject: (error: Error) => void = () => undefined;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A start that fails the test if called. */
const mustNotStart: FlightStarter = () => Promise.reject(new Error('start should not be called'));

describe('DownloadTable', () => {
  it('fetches a blob once for many concurrent requests', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const body = new PassThrough();
    let fetches = 0;
    let bytes = 0;
    const start: FlightStarter = () => {
      fetches += 1;
      return fromOrigin(digest, body, blob.length, (n) => (bytes += n));
    };

    assert.equal(table.running(digest), undefined);
    const flights = await Promise.all(Array.from({ length: 20 }, () => table.join(digest, start)));
    assert.equal(fetches, 1);
    const download = downloadOf(flights[0]);
    for (const flight of flights) {
      assert.equal(downloadOf(flight), download);
    }
    assert.equal(table.active, 1);
    assert.equal(table.running(digest), download);
    assert.deepEqual(hooks.started, [download]);

    const readers = flights.map((flight) => drain(openReader(downloadOf(flight))));
    await feed(body, blob);
    body.end();
    for (const received of await Promise.all(readers)) {
      assert.equal(received.error, undefined);
      assert.deepEqual(received.bytes, blob);
    }
    assert.equal(await download.settled, 'verified');
    await until(() => hooks.settled.length === 1, 'the table reports the download settled');
    assert.deepEqual(hooks.settled, [[download, 'verified']]);
    assert.equal(bytes, blob.length);
    assert.equal(table.active, 0);
    assert.equal(table.running(digest), undefined);
    assert.ok(store.has(digest));
    assert.equal(fetches, 1);
  });

  it('calls start once for many joins while it is still starting', async () => {
    const blob = randomBytes(1000);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const starting = deferred<Flight>();
    let starts = 0;
    const start: FlightStarter = () => {
      starts += 1;
      return starting.promise;
    };
    const joins = Array.from({ length: 50 }, () => table.join(digest, start));
    await sleep(20);
    assert.equal(starts, 1);
    assert.equal(table.active, 0);
    assert.deepEqual(hooks.started, []);

    starting.resolve(await fromOrigin(digest, Readable.from([blob]), blob.length));
    const flights = await Promise.all(joins);
    const download = downloadOf(flights[0]);
    for (const flight of flights) {
      assert.equal(downloadOf(flight), download);
    }
    assert.equal(starts, 1);
    assert.deepEqual(hooks.started, [download]);
    assert.equal(await download.settled, 'verified');
  });

  it('joins a download in progress from a later request', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const table = new DownloadTable(recordingHooks());
    const body = new PassThrough();
    let fetches = 0;
    const start: FlightStarter = () => {
      fetches += 1;
      return fromOrigin(digest, body, blob.length);
    };
    const first = downloadOf(await table.join(digest, start));
    const firstReader = drain(openReader(first));
    await feed(body, blob.subarray(0, 100_000));
    const second = downloadOf(await table.join(digest, start));
    assert.equal(second, first);
    const secondReader = drain(openReader(second));
    await feed(body, blob.subarray(100_000));
    body.end();
    assert.deepEqual((await firstReader).bytes, blob);
    assert.deepEqual((await secondReader).bytes, blob);
    assert.equal(await first.settled, 'verified');
    assert.ok(store.has(digest));
    assert.equal(fetches, 1);
  });

  it('returns a running download without calling start', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    // A swarm download: running until its pieces arrive.
    const download = await newDownload(digest, blob.length);
    const first = downloadOf(
      await table.join(digest, () => Promise.resolve({ kind: 'download', download })),
    );
    assert.equal(first, download);
    assert.equal(table.running(digest), download);

    const joined = await Promise.all([
      table.join(digest, mustNotStart),
      table.join(digest, mustNotStart),
    ]);
    for (const flight of joined) {
      assert.equal(downloadOf(flight), download);
    }
    assert.deepEqual(hooks.started, [download]);

    await download.writeAt(0, blob);
    download.advance(blob.length);
    assert.equal(await download.finish(store), 'verified');
    await until(() => hooks.settled.length === 1, 'the table reports the download settled');
    assert.equal(table.running(digest), undefined);
  });

  it('gives an answer to the leader alone; a follower fetches for itself', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const calls: string[] = [];
    const leader = table.join(digest, async () => {
      calls.push('leader');
      await sleep(10);
      return answer(401, '{"errors":[{"code":"UNAUTHORIZED"}]}');
    });
    const follower = table.join(digest, () => {
      calls.push('follower');
      return fromOrigin(digest, Readable.from([blob]), blob.length);
    });

    const led = answerOf(await leader);
    assert.equal(led.status, 401);
    assert.equal(led.headers['www-authenticate'], 'Bearer realm="x"');
    assert.equal(led.body.toString(), '{"errors":[{"code":"UNAUTHORIZED"}]}');
    const followed = downloadOf(await follower);
    assert.deepEqual(calls, ['leader', 'follower']);
    assert.deepEqual((await drain(openReader(followed))).bytes, blob);
    assert.equal(await followed.settled, 'verified');
    assert.deepEqual(hooks.started, [followed]);
    assert.ok(store.has(digest));
  });

  it('lets one follower lead after the leader got an answer; the others join its download', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const calls: string[] = [];
    const starter = (name: string, flight: Promise<Flight>): FlightStarter => {
      return () => {
        calls.push(name);
        return flight;
      };
    };
    const leaderFlight = deferred<Flight>();
    const firstFlight = deferred<Flight>();

    // Two followers wait on the leader; its answer is its own, and one follower leads next.
    const leader = table.join(digest, starter('leader', leaderFlight.promise));
    const first = table.join(digest, starter('first', firstFlight.promise));
    const second = table.join(digest, mustNotStart);
    leaderFlight.resolve(answer(404, '{"errors":[{"code":"BLOB_UNKNOWN"}]}'));
    assert.equal(answerOf(await leader).status, 404);
    await until(() => calls.length === 2, 'the first follower starts');
    assert.deepEqual(calls, ['leader', 'first']);

    // A third request waits too; the first follower's download serves all three.
    const third = table.join(digest, mustNotStart);
    const download = await newDownload(digest, blob.length);
    firstFlight.resolve({ kind: 'download', download });
    assert.equal(downloadOf(await first), download);
    assert.equal(downloadOf(await second), download);
    assert.equal(downloadOf(await third), download);
    assert.equal(table.running(digest), download);
    assert.deepEqual(calls, ['leader', 'first']);
    assert.deepEqual(hooks.started, [download]);
    await download.fail(new Error('test over'));
  });

  it('lets a follower fetch for itself when the leader fetch throws', async () => {
    const blob = randomBytes(1000);
    const digest = digestOf(blob);
    const table = new DownloadTable(recordingHooks());
    const calls: string[] = [];
    const leader = table.join(digest, async () => {
      calls.push('leader');
      await sleep(10);
      throw new Error('connect ECONNREFUSED');
    });
    const follower = table.join(digest, () => {
      calls.push('follower');
      return fromOrigin(digest, Readable.from([blob]), blob.length);
    });
    await assert.rejects(leader, /ECONNREFUSED/);
    const followed = downloadOf(await follower);
    assert.deepEqual(calls, ['leader', 'follower']);
    assert.equal(await followed.settled, 'verified');
  });

  it('asks again once an answer was given', async () => {
    const digest = digestOf(Buffer.from('missing'));
    const table = new DownloadTable(recordingHooks());
    let fetches = 0;
    const start: FlightStarter = () => {
      fetches += 1;
      return Promise.resolve(answer(404, '{"errors":[{"code":"BLOB_UNKNOWN"}]}'));
    };
    assert.equal(answerOf(await table.join(digest, start)).status, 404);
    assert.equal(answerOf(await table.join(digest, start)).status, 404);
    assert.equal(fetches, 2);
    assert.equal(table.active, 0);
    assert.equal(table.running(digest), undefined);
  });

  it('starts a fresh download when the previous one failed', async () => {
    const blob = randomBytes(1000);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const bodies = [randomBytes(1000), blob];
    let fetches = 0;
    const start: FlightStarter = () => {
      const bytes = bodies[fetches] ?? Buffer.alloc(0);
      fetches += 1;
      return fromOrigin(digest, Readable.from([bytes]), bytes.length);
    };
    const first = downloadOf(await table.join(digest, start));
    assert.equal(await first.settled, 'failed');
    await until(() => hooks.settled.length === 1, 'the first download is reported');
    assert.deepEqual(hooks.settled, [[first, 'failed']]);
    assert.equal(table.running(digest), undefined);
    const second = downloadOf(await table.join(digest, start));
    assert.notEqual(second, first);
    assert.equal(await second.settled, 'verified');
    await until(() => hooks.settled.length === 2, 'the second download is reported');
    assert.deepEqual(hooks.started, [first, second]);
    assert.deepEqual(hooks.settled, [
      [first, 'failed'],
      [second, 'verified'],
    ]);
    assert.equal(fetches, 2);
    assert.ok(store.has(digest));
  });

  it('tracks downloads of different digests separately', async () => {
    const blobs = [randomBytes(1000), randomBytes(2000)];
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const flights = await Promise.all(
      blobs.map((blob) =>
        table.join(digestOf(blob), () => fromOrigin(digestOf(blob), new PassThrough(), undefined)),
      ),
    );
    const downloads = flights.map(downloadOf);
    assert.notEqual(downloads[0], downloads[1]);
    assert.equal(table.active, 2);
    blobs.forEach((blob, i) => assert.equal(table.running(digestOf(blob)), downloads[i]));
    await Promise.all(downloads.map((download) => download.fail(new Error('test over'))));
    await until(() => table.active === 0, 'both downloads are forgotten');
  });

  it('aborts downloads on close and waits for them to settle', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const hooks = recordingHooks();
    const table = new DownloadTable(hooks);
    const signals: AbortSignal[] = [];
    const body = new PassThrough();
    const flight = await table.join(digest, (signal) => {
      signals.push(signal);
      // As an HTTP client does, the body fails when the request is aborted.
      signal.addEventListener('abort', () => body.destroy(signal.reason as Error), { once: true });
      return fromOrigin(digest, body, blob.length);
    });
    const download = downloadOf(flight);
    const reader = drain(openReader(download));
    await feed(body, blob.subarray(0, 100_000));
    assert.deepEqual(
      signals.map((s) => s.aborted),
      [false],
    );

    await table.close();
    assert.deepEqual(
      signals.map((s) => s.aborted),
      [true],
    );
    assert.equal(download.state, 'failed');
    await until(() => table.active === 0, 'the table forgets the download');
    const received = await reader;
    assert.ok(received.error !== undefined, 'the reader should fail, not end');
    assert.ok(received.bytes.length < blob.length);
    await assertNothingKept(digest);
  });

  it('aborts a swarm download on close through the signal given to start', async () => {
    const blob = randomBytes(BLOB_BYTES);
    const digest = digestOf(blob);
    const table = new DownloadTable(recordingHooks());
    const download = downloadOf(
      await table.join(digest, async (signal) => {
        const swarm = await newDownload(digest, blob.length);
        signal.addEventListener('abort', () => void swarm.fail(signal.reason), { once: true });
        return { kind: 'download', download: swarm };
      }),
    );
    const sized = download.sized;
    const reader = drain(openReader(download));
    await download.writeAt(0, piece(blob, 0));
    download.advance(PIECE_BYTES);

    await table.close();
    assert.equal(download.state, 'failed');
    assert.equal(await sized, blob.length);
    const received = await reader;
    assert.ok(received.error !== undefined, 'the reader should fail, not end');
    assert.ok(received.bytes.length <= PIECE_BYTES);
    await assertNothingKept(digest);
  });

  it('closes at once when nothing runs', async () => {
    const table = new DownloadTable(recordingHooks());
    await table.close();
    assert.equal(table.active, 0);
  });
});
