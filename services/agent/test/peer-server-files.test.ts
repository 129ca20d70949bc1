import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { digestOf, pieceCount, pieceSizeFor, type Digest } from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { OpenCacheFiles } from '../src/swarm/peer-server.js';

const MiB = 1024 * 1024;
const IDLE_MS = 100;

let root: string;
let store: FsContentStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'shoal-peer-files-'));
  store = new FsContentStore(join(root, 'cache'), 1024 ** 3);
  await store.init();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function commitBytes(bytes: Buffer): Promise<Digest> {
  const digest = digestOf(bytes);
  const temp = await store.createTemp();
  await temp.handle.writeFile(bytes);
  await temp.handle.close();
  await store.commit(temp.path, digest, bytes.length);
  return digest;
}

/** The files this process has open that lie in the store's directory. */
async function openStoreFiles(): Promise<number> {
  let count = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(root)) {
      count += 1;
    }
  }
  return count;
}

const alloc = (size: number): Buffer => Buffer.allocUnsafe(size);

describe('OpenCacheFiles', () => {
  it('reads every piece of a cached blob through one open file, closed once idle', async () => {
    // 3 MiB and a bit: 256 KiB pieces, the last one short.
    const blob = randomBytes(3 * MiB + 1234);
    const digest = await commitBytes(blob);
    const files = new OpenCacheFiles(store, IDLE_MS);
    const count = pieceCount(blob.length, pieceSizeFor(blob.length));
    assert.equal(await openStoreFiles(), 0);

    const pieces: Buffer[] = [];
    for (let index = 0; index < count; index += 1) {
      const piece = await files.readPiece(digest, index, alloc);
      assert.ok(piece !== undefined, `piece ${index}`);
      pieces.push(piece);
      // The same file stays open from one piece to the next.
      assert.equal(files.size, 1);
      assert.equal(await openStoreFiles(), 1);
    }
    assert.deepEqual(Buffer.concat(pieces), blob);
    assert.equal(await files.readPiece(digest, count, alloc), undefined);

    await sleep(IDLE_MS * 3);
    assert.equal(files.size, 0);
    assert.equal(await openStoreFiles(), 0);
  });

  it('does not remember a blob that is not cached yet', async () => {
    const blob = randomBytes(300_000);
    const digest = digestOf(blob);
    const files = new OpenCacheFiles(store, IDLE_MS);
    assert.equal(await files.readPiece(digest, 0, alloc), undefined);
    await sleep(1);
    assert.equal(files.size, 0);
    // Cached now (a download completed): served at once, not after the idle time.
    await commitBytes(blob);
    assert.deepEqual(await files.readPiece(digest, 1, alloc), blob.subarray(256 * 1024));
    await files.close();
    assert.equal(await openStoreFiles(), 0);
  });

  it('keeps an open blob from eviction until its file closes', async () => {
    const small = new FsContentStore(join(root, 'small'), 2 * MiB);
    await small.init();
    store = small;
    const firstDigest = await commitBytes(randomBytes(MiB + 1));
    const files = new OpenCacheFiles(small, IDLE_MS);
    assert.ok((await files.readPiece(firstDigest, 0, alloc)) !== undefined);
    // Past the quota while the first blob's file is open: eviction passes it over.
    await commitBytes(randomBytes(MiB + 1));
    assert.ok(small.has(firstDigest));
    assert.ok((await files.readPiece(firstDigest, 4, alloc)) !== undefined);
    // Closed once idle: now the least recently used blob goes when room is needed.
    await sleep(IDLE_MS * 3);
    assert.equal(files.size, 0);
    const third = await commitBytes(randomBytes(MiB + 1));
    assert.equal(small.has(firstDigest), false);
    assert.ok(small.has(third));
  });
});
