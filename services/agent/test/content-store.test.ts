import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { digestOf, type Digest } from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';

const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

/**
 * Pause between operations whose order the LRU must see: it orders entries by wall-clock
 * milliseconds.
 */
const TICK_MS = 5;

let root: string;

beforeEach(async () => {
  root = join(await mkdtemp(join(tmpdir(), 'shoal-content-store-')), 'cache');
});

afterEach(async () => {
  await rm(join(root, '..'), { recursive: true, force: true });
});

function blobPath(digest: Digest): string {
  return join(root, 'blobs', digest.algorithm, digest.hex);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Writes `bytes` to a temp file of the store and commits it as its own digest. */
async function commitBytes(
  store: FsContentStore,
  bytes: Uint8Array,
  algorithm: 'sha256' | 'sha512' = 'sha256',
): Promise<Digest> {
  const digest = digestOf(bytes, algorithm);
  const temp = await store.createTemp();
  await temp.handle.writeFile(bytes);
  await temp.handle.close();
  await store.commit(temp.path, digest, bytes.length);
  return digest;
}

async function readOpened(store: FsContentStore, digest: Digest): Promise<Buffer | undefined> {
  const opened = await store.open(digest);
  if (opened === undefined) {
    return undefined;
  }
  try {
    const buffer = Buffer.alloc(opened.size);
    const { bytesRead } = await opened.handle.read(buffer, 0, opened.size, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await opened.release();
  }
}

describe('FsContentStore', () => {
  describe('init', () => {
    it('creates the blob and temp folders', async () => {
      const store = new FsContentStore(root, 1024);
      await store.init();
      for (const dir of ['tmp', 'blobs/sha256', 'blobs/sha512']) {
        assert.ok((await stat(join(root, dir))).isDirectory(), dir);
      }
      assert.equal(store.totalBytes, 0);
    });

    it('removes what interrupted downloads left in tmp', async () => {
      await mkdir(join(root, 'tmp', 'nested'), { recursive: true });
      await writeFile(join(root, 'tmp', 'partial'), randomBytes(100));
      await writeFile(join(root, 'tmp', 'nested', 'partial'), randomBytes(100));
      const store = new FsContentStore(root, 1024);
      await store.init();
      assert.deepEqual(await readdir(join(root, 'tmp')), []);
      assert.equal(store.totalBytes, 0);
    });

    it('removes files it cannot name as a digest and keeps the rest', async () => {
      const content = randomBytes(300);
      const digest = digestOf(content);
      const dir256 = join(root, 'blobs', 'sha256');
      const dir512 = join(root, 'blobs', 'sha512');
      await mkdir(dir256, { recursive: true });
      await mkdir(dir512, { recursive: true });
      await writeFile(join(dir256, digest.hex), content);
      await writeFile(join(dir256, `${digest.hex}.type`), MANIFEST_TYPE);
      const strays = [
        join(dir256, 'garbage'),
        join(dir256, digest.hex.slice(1)),
        join(dir256, digest.hex.toUpperCase()),
        join(dir256, `${digest.hex}.partial`),
        join(dir512, digest.hex),
      ];
      for (const stray of strays) {
        await writeFile(stray, randomBytes(10));
      }
      await mkdir(join(dir256, 'junk', 'deeper'), { recursive: true });

      const store = new FsContentStore(root, 1024);
      await store.init();

      assert.deepEqual((await readdir(dir256)).sort(), [digest.hex, `${digest.hex}.type`].sort());
      assert.deepEqual(await readdir(dir512), []);
      assert.equal(store.totalBytes, 300);
      const small = await store.getSmall(digest, 4 * 1024 * 1024);
      assert.deepEqual(small?.bytes, content);
      assert.equal(small.mediaType, MANIFEST_TYPE);
    });

    it('re-indexes the content a previous run committed, with its size', async () => {
      const first = new FsContentStore(root, 10_000);
      await first.init();
      const a = await commitBytes(first, randomBytes(1000));
      const b = await commitBytes(first, randomBytes(2345), 'sha512');

      const second = new FsContentStore(root, 10_000);
      await second.init();
      assert.equal(second.totalBytes, 3345);
      assert.equal(second.sizeOf(a), 1000);
      assert.equal(second.sizeOf(b), 2345);
      assert.ok(second.has(a));
      assert.ok(second.has(b));
      assert.equal((await readOpened(second, b))?.length, 2345);
    });

    it('takes the modification time of re-indexed content as its last use', async () => {
      const first = new FsContentStore(root, 10_000);
      await first.init();
      const older = await commitBytes(first, randomBytes(100));
      const newer = await commitBytes(first, randomBytes(100));
      const past = new Date(Date.now() - 3_600_000);
      await utimes(blobPath(older), past, past);

      const evicted: number[] = [];
      const second = new FsContentStore(root, 250, {
        onEvict: (_digest, size) => evicted.push(size),
      });
      await second.init();
      const added = await commitBytes(second, randomBytes(100));
      assert.equal(second.has(older), false);
      assert.ok(second.has(newer));
      assert.ok(second.has(added));
      assert.deepEqual(evicted, [100]);
    });
  });

  describe('commit and open', () => {
    it('moves the temp file into the cache and serves its bytes', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const content = randomBytes(4096);
      const digest = await commitBytes(store, content);

      assert.deepEqual(await readdir(join(root, 'tmp')), []);
      assert.deepEqual(await readFile(blobPath(digest)), content);
      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), 4096);
      assert.equal(store.totalBytes, 4096);

      const opened = await store.open(digest);
      assert.ok(opened !== undefined);
      assert.equal(opened.size, 4096);
      const { buffer } = await opened.handle.read(Buffer.alloc(4096), 0, 4096, 0);
      assert.deepEqual(buffer, content);
      await opened.release();
      // A second release is harmless and does not unpin anything twice.
      await opened.release();
      assert.equal(store.totalBytes, 4096);
    });

    it('answers undefined for content it does not hold', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const digest = digestOf(Buffer.from('never stored'));
      assert.equal(store.has(digest), false);
      assert.equal(store.sizeOf(digest), undefined);
      assert.equal(await store.open(digest), undefined);
      assert.equal(await store.getSmall(digest, 4 * 1024 * 1024), undefined);
    });

    it('forgets content removed from disk behind its back', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const kept = await commitBytes(store, randomBytes(10));
      const removed = await commitBytes(store, randomBytes(20));
      await unlink(blobPath(removed));
      assert.equal(await store.open(removed), undefined);
      assert.equal(store.has(removed), false);
      assert.equal(store.totalBytes, 10);
      assert.ok(store.has(kept));
    });

    it('counts content committed twice once', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const content = randomBytes(500);
      await commitBytes(store, content);
      const digest = await commitBytes(store, content);
      assert.equal(store.totalBytes, 500);
      assert.deepEqual(await readOpened(store, digest), content);
    });
  });

  describe('damaged content', () => {
    /** A store that records what it found damaged, as `kind digest: reason`. */
    async function watchedStore(): Promise<{ store: FsContentStore; corrupt: string[] }> {
      const corrupt: string[] = [];
      const store = new FsContentStore(root, 10_000_000, {
        onCorrupt: (digest, kind, reason) =>
          corrupt.push(`${kind} ${digest.toString()}: ${reason}`),
      });
      await store.init();
      return { store, corrupt };
    }

    it('drops a blob whose bytes changed on disk, for open and for readPiece, once', async () => {
      const { store, corrupt } = await watchedStore();
      const content = randomBytes(3 * 1024 * 1024 + 5);
      const digest = await commitBytes(store, content);
      const changed = Buffer.from(content);
      changed[1234] = (changed[1234] ?? 0) ^ 1;
      await writeFile(blobPath(digest), changed);

      // Concurrent opens share one check and report the damage once.
      const [opened, piece] = await Promise.all([store.open(digest), store.readPiece(digest, 0)]);
      assert.equal(opened, undefined);
      assert.equal(piece, undefined);
      assert.equal(corrupt.length, 1);
      assert.match(corrupt[0] ?? '', /^blob sha256:[0-9a-f]{64}: its bytes have digest sha256:/);
      assert.equal(store.has(digest), false);
      assert.equal(store.totalBytes, 0);
      assert.equal(await exists(blobPath(digest)), false, 'the damaged file is removed');
      // Fetched again and committed, it is served.
      await commitBytes(store, content);
      assert.deepEqual(await readOpened(store, digest), content);
    });

    it('drops a truncated blob without hashing it', async () => {
      const { store, corrupt } = await watchedStore();
      const digest = await commitBytes(store, randomBytes(1000));
      await writeFile(blobPath(digest), randomBytes(10));
      assert.equal(await store.open(digest), undefined);
      assert.deepEqual(corrupt, [`blob ${digest.toString()}: its file holds 10 bytes, not 1000`]);
    });

    it('keeps a blob whose file was touched but still holds its bytes', async () => {
      const { store, corrupt } = await watchedStore();
      const content = randomBytes(2000);
      const digest = await commitBytes(store, content);
      const later = new Date(Date.now() + 60_000);
      await utimes(blobPath(digest), later, later);
      assert.deepEqual(await readOpened(store, digest), content);
      assert.deepEqual(await readOpened(store, digest), content);
      assert.deepEqual(corrupt, []);
    });

    it('checks content found at start-up before it serves it', async () => {
      const first = new FsContentStore(root, 10_000_000);
      await first.init();
      const good = randomBytes(4000);
      const goodDigest = await commitBytes(first, good);
      const bad = randomBytes(4000);
      const badDigest = await commitBytes(first, bad);
      // Damaged while no agent ran, with the file's times put back as they were.
      const { atime, mtime } = await stat(blobPath(badDigest));
      const changed = Buffer.from(bad);
      changed[0] = (changed[0] ?? 0) ^ 0x80;
      await writeFile(blobPath(badDigest), changed);
      await utimes(blobPath(badDigest), atime, mtime);

      const { store, corrupt } = await watchedStore();
      assert.equal(store.totalBytes, 8000);
      assert.deepEqual(await readOpened(store, goodDigest), good);
      assert.equal(await store.readPiece(badDigest, 0), undefined);
      assert.equal(corrupt.length, 1);
      assert.equal(store.totalBytes, 4000);
      // The good file is the one its kept fingerprint names: only the changed one was hashed.
      assert.equal(store.hashChecks, 1);
    });

    it('serves content found at start-up at once when its kept fingerprint matches, and hashes the rest', async () => {
      const first = new FsContentStore(root, 100_000_000);
      await first.init();
      const kept = randomBytes(3 * 1024 * 1024 + 5);
      const keptDigest = await commitBytes(first, kept);
      const bare = randomBytes(5000);
      const bareDigest = await commitBytes(first, bare);
      // A cache from before fingerprints were kept, or a crash between commit and the write.
      await rm(`${blobPath(bareDigest)}.checked`);

      const { store, corrupt } = await watchedStore();
      const piece = await store.readPiece(keptDigest, 0);
      assert.ok(piece !== undefined && piece.length > 0);
      assert.deepEqual(piece, kept.subarray(0, piece.length));
      assert.equal(store.hashChecks, 0, 'no hash before the first piece');
      assert.deepEqual(await readOpened(store, bareDigest), bare);
      assert.equal(store.hashChecks, 1, 'the file with no fingerprint is hashed');
      assert.deepEqual(corrupt, []);

      // Checked now, its fingerprint is kept: the next start trusts it too.
      const third = new FsContentStore(root, 100_000_000);
      await third.init();
      assert.deepEqual(await readOpened(third, bareDigest), bare);
      assert.equal(third.hashChecks, 0);
    });

    it('catches a file replaced while the agent was down, its fingerprint file copied along', async () => {
      const first = new FsContentStore(root, 10_000_000);
      await first.init();
      const content = randomBytes(4000);
      const digest = await commitBytes(first, content);
      // Same size and times, other bytes, the old fingerprint left in place: the inode or
      // change time differs, which no utimes can put back.
      const { atime, mtime } = await stat(blobPath(digest));
      const other = randomBytes(4000);
      await writeFile(`${blobPath(digest)}.new`, other);
      await rename(`${blobPath(digest)}.new`, blobPath(digest));
      await utimes(blobPath(digest), atime, mtime);

      const { store, corrupt } = await watchedStore();
      assert.equal(await store.readPiece(digest, 0), undefined);
      assert.equal(store.hashChecks, 1);
      assert.equal(corrupt.length, 1);
      assert.equal(await exists(`${blobPath(digest)}.checked`), false, 'its fingerprint goes too');
    });
  });

  describe('putSmall and getSmall', () => {
    it('stores small content with its media type', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE }));
      const digest = digestOf(manifest);
      await store.putSmall(digest, manifest, MANIFEST_TYPE);

      assert.ok(store.has(digest));
      assert.equal(store.sizeOf(digest), manifest.length);
      assert.equal(store.totalBytes, manifest.length);
      const small = await store.getSmall(digest, 4 * 1024 * 1024);
      assert.deepEqual(small?.bytes, manifest);
      assert.equal(small.mediaType, MANIFEST_TYPE);
      assert.deepEqual(await readdir(join(root, 'tmp')), []);
    });

    it('stores small content without a media type', async () => {
      const store = new FsContentStore(root, 10_000);
      await store.init();
      const bytes = Buffer.from('{}');
      const digest = digestOf(bytes);
      await store.putSmall(digest, bytes, undefined);
      const small = await store.getSmall(digest, 4 * 1024 * 1024);
      assert.deepEqual(small?.bytes, bytes);
      assert.equal(small.mediaType, undefined);
    });

    it('drops a cached manifest changed on disk instead of serving it', async () => {
      const corrupt: string[] = [];
      const store = new FsContentStore(root, 10_000, {
        onCorrupt: (digest, kind) => corrupt.push(`${kind} ${digest.toString()}`),
      });
      await store.init();
      const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE }));
      const digest = digestOf(manifest);
      await store.putSmall(digest, manifest, MANIFEST_TYPE);
      // A bit flipped on disk behind the agent's back (a bad sector, a stray write).
      const path = join(root, 'blobs', digest.algorithm, digest.hex);
      const changed = Buffer.from(manifest);
      changed[changed.length - 2] = 0x20;
      await writeFile(path, changed);

      assert.equal(await store.getSmall(digest, 4 * 1024 * 1024), undefined);
      assert.deepEqual(corrupt, [`manifest ${digest.toString()}`]);
      assert.equal(store.has(digest), false);
      assert.equal(store.totalBytes, 0);
      await assert.rejects(stat(path), { code: 'ENOENT' });
      await assert.rejects(stat(`${path}.type`), { code: 'ENOENT' });
      // Stored again (read from the registry once more), it is served.
      await store.putSmall(digest, manifest, MANIFEST_TYPE);
      assert.deepEqual((await store.getSmall(digest, 4 * 1024 * 1024))?.bytes, manifest);
    });
  });

  describe('eviction', () => {
    /** A store of `maxBytes` that lists the sizes it evicts. */
    async function recordingStore(
      maxBytes: number,
    ): Promise<{ store: FsContentStore; evicted: number[] }> {
      const evicted: number[] = [];
      const store = new FsContentStore(root, maxBytes, {
        onEvict: (_digest, size) => evicted.push(size),
      });
      await store.init();
      return { store, evicted };
    }

    it('evicts the least recently used content past the quota, reporting sizes', async () => {
      const { store, evicted } = await recordingStore(300);
      const a = await commitBytes(store, randomBytes(100));
      await sleep(TICK_MS);
      const b = await commitBytes(store, randomBytes(120));
      await sleep(TICK_MS);
      const c = await commitBytes(store, randomBytes(70));
      assert.deepEqual(evicted, []);
      assert.equal(store.totalBytes, 290);

      await sleep(TICK_MS);
      const d = await commitBytes(store, randomBytes(50));
      assert.deepEqual(evicted, [100]);
      assert.equal(store.has(a), false);
      assert.equal(await exists(blobPath(a)), false);
      assert.equal(store.totalBytes, 240);

      await sleep(TICK_MS);
      const e = await commitBytes(store, randomBytes(200));
      // 440 bytes: b (120) then c (70) go, which leaves 250.
      assert.deepEqual(evicted, [100, 120, 70]);
      assert.deepEqual(
        [a, b, c, d, e].map((digest) => store.has(digest)),
        [false, false, false, true, true],
      );
      assert.equal(store.totalBytes, 250);
      assert.equal(await exists(blobPath(b)), false);
      assert.equal(await exists(blobPath(c)), false);
    });

    it('counts downloads in progress against the quota, until committed or released', async () => {
      const { store, evicted } = await recordingStore(300);
      const a = await commitBytes(store, randomBytes(100));
      await sleep(TICK_MS);
      const b = await commitBytes(store, randomBytes(100));
      // A 150-byte download starts: a, the least recently used, makes room for it now.
      const incoming = randomBytes(150);
      const digest = digestOf(incoming);
      await store.reserve(digest, 150);
      assert.deepEqual(evicted, [100]);
      assert.equal(store.has(a), false);
      assert.equal(store.reservedBytes, 150);
      // Another one fails: its reservation goes, nothing more is evicted.
      const failed = digestOf(randomBytes(10));
      await store.reserve(failed, 40);
      store.release(failed);
      assert.equal(store.reservedBytes, 150);
      assert.deepEqual(evicted, [100]);
      // The first commits: its bytes now count as content, not twice.
      const temp = join(root, 'tmp', 'incoming');
      await writeFile(temp, incoming);
      await store.commit(temp, digest, incoming.length);
      assert.equal(store.reservedBytes, 0);
      assert.equal(store.totalBytes, 250);
      assert.deepEqual(evicted, [100]);
      assert.equal(store.has(b), true);
      store.release(digest);
      assert.equal(store.reservedBytes, 0);
    });

    it('removes the media type of evicted content', async () => {
      const store = new FsContentStore(root, 150);
      await store.init();
      const manifest = randomBytes(100);
      const digest = digestOf(manifest);
      await store.putSmall(digest, manifest, MANIFEST_TYPE);
      await sleep(TICK_MS);
      await commitBytes(store, randomBytes(100));
      assert.equal(store.has(digest), false);
      assert.equal(await exists(`${blobPath(digest)}.type`), false);
      assert.equal(await store.getSmall(digest, 4 * 1024 * 1024), undefined);
    });

    it('counts opening an entry as a use', async () => {
      const store = new FsContentStore(root, 250);
      await store.init();
      const a = await commitBytes(store, randomBytes(100));
      await sleep(TICK_MS);
      const b = await commitBytes(store, randomBytes(100));
      await sleep(TICK_MS);
      assert.equal((await readOpened(store, a))?.length, 100);
      await sleep(TICK_MS);
      const c = await commitBytes(store, randomBytes(100));
      assert.ok(store.has(a));
      assert.equal(store.has(b), false);
      assert.ok(store.has(c));
    });

    it('counts reading small content as a use', async () => {
      const store = new FsContentStore(root, 250);
      await store.init();
      const manifest = randomBytes(100);
      const a = digestOf(manifest);
      await store.putSmall(a, manifest, MANIFEST_TYPE);
      await sleep(TICK_MS);
      const b = await commitBytes(store, randomBytes(100));
      await sleep(TICK_MS);
      assert.deepEqual((await store.getSmall(a, 4 * 1024 * 1024))?.bytes, manifest);
      await sleep(TICK_MS);
      await commitBytes(store, randomBytes(100));
      assert.ok(store.has(a));
      assert.equal(store.has(b), false);
    });

    it('never evicts content that is open, and evicts it once released', async () => {
      const evicted: number[] = [];
      const store = new FsContentStore(root, 200, {
        onEvict: (_digest, size) => evicted.push(size),
      });
      await store.init();
      const pinnedBytes = randomBytes(100);
      const pinned = await commitBytes(store, pinnedBytes);
      const opened = await store.open(pinned);
      assert.ok(opened !== undefined);
      await sleep(TICK_MS);
      const b = await commitBytes(store, randomBytes(60));
      await sleep(TICK_MS);
      const c = await commitBytes(store, randomBytes(70));
      // 230 bytes: the open entry is the oldest, but b goes.
      assert.deepEqual(evicted, [60]);
      assert.ok(store.has(pinned));
      assert.equal(store.has(b), false);
      assert.ok(store.has(c));

      await sleep(TICK_MS);
      const d = await commitBytes(store, randomBytes(90));
      // 260 bytes: c (70) is the only entry that may go; 190 remain.
      assert.deepEqual(evicted, [60, 70]);
      assert.ok(store.has(pinned));
      assert.ok(store.has(d));
      const { buffer } = await opened.handle.read(Buffer.alloc(100), 0, 100, 0);
      assert.deepEqual(buffer, pinnedBytes);

      await opened.release();
      await sleep(TICK_MS);
      const e = await commitBytes(store, randomBytes(50));
      assert.deepEqual(evicted, [60, 70, 100]);
      assert.equal(store.has(pinned), false);
      assert.ok(store.has(d));
      assert.ok(store.has(e));
      assert.equal(store.totalBytes, 140);
    });

    it('evicts content just committed when everything else is open', async () => {
      const store = new FsContentStore(root, 150);
      await store.init();
      const pinned = await commitBytes(store, randomBytes(100));
      const opened = await store.open(pinned);
      assert.ok(opened !== undefined);
      const added = await commitBytes(store, randomBytes(100));
      assert.ok(store.has(pinned));
      assert.equal(store.has(added), false);
      assert.equal(store.totalBytes, 100);
      await opened.release();
    });

    it('does not keep content pinned when it is committed again while open', async () => {
      // A second download of the same blob may commit while a client reads the first copy.
      const evicted: number[] = [];
      const store = new FsContentStore(root, 150, {
        onEvict: (_digest, size) => evicted.push(size),
      });
      await store.init();
      const content = randomBytes(100);
      const digest = await commitBytes(store, content);
      const opened = await store.open(digest);
      assert.ok(opened !== undefined);
      await commitBytes(store, content);
      await opened.release();

      await sleep(TICK_MS);
      const newer = await commitBytes(store, randomBytes(100));
      assert.equal(store.has(digest), false, 'the released, older entry should be evicted');
      assert.ok(store.has(newer), 'the newer entry should be kept');
      assert.deepEqual(evicted, [100]);
    });
  });
});
