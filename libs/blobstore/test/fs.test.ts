/** The conformance suite on FsBlobStore, and what is particular to a directory. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';

import { makeTempDir } from '@shoal/testkit';

import { FsBlobStore } from '../src/index.js';
import { runBlobStoreConformance } from './conformance.js';

runBlobStoreConformance('FsBlobStore', async () => {
  const dir = await makeTempDir('blobstore-fs');
  const root = join(dir.path, 'store');
  const store = new FsBlobStore(root);
  await store.init();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await dir.remove();
    },
    leftovers: () => readdir(join(root, 'tmp')),
  };
});

describe('FsBlobStore', () => {
  it('keeps blobs and metadata at the documented paths', async () => {
    const dir = await makeTempDir('blobstore-fs');
    try {
      const store = new FsBlobStore(dir.path);
      await store.init();
      const bytes = Buffer.from('layout');
      const hex = createHash('sha256').update(bytes).digest('hex');
      await store.write(`sha256:${hex}`, Readable.from([bytes]), bytes.byteLength);
      await store.putMeta(`sha256:${hex}`, 'pieces', Buffer.from('p'));
      assert.deepEqual(await readFile(join(dir.path, 'blobs', 'sha256', hex)), bytes);
      assert.deepEqual(
        await readFile(join(dir.path, 'meta', 'sha256', hex, 'pieces')),
        Buffer.from('p'),
      );
      assert.deepEqual(await readdir(join(dir.path, 'tmp')), []);
    } finally {
      await dir.remove();
    }
  });

  it('removes the writes a crash left in tmp/ on init, and keeps the blobs', async () => {
    const dir = await makeTempDir('blobstore-fs');
    try {
      const store = new FsBlobStore(dir.path);
      await store.init();
      const bytes = Buffer.from('survivor');
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      await store.write(digest, Readable.from([bytes]), bytes.byteLength);
      await mkdir(join(dir.path, 'tmp', 'nested'), { recursive: true });
      await writeFile(join(dir.path, 'tmp', 'sha256-half-written'), 'partial');
      await new FsBlobStore(dir.path).init();
      assert.deepEqual(await readdir(join(dir.path, 'tmp')), []);
      assert.deepEqual(await store.stat(digest), { size: bytes.byteLength });
    } finally {
      await dir.remove();
    }
  });

  it('links a verified file into place without copying it, and checks its size', async () => {
    const dir = await makeTempDir('blobstore-fs');
    try {
      const store = new FsBlobStore(join(dir.path, 'store'));
      await store.init();
      const bytes = Buffer.from('linked once');
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      const source = join(dir.path, 'verified');
      await writeFile(source, bytes);
      await assert.rejects(store.linkVerified(digest, source, bytes.byteLength + 1), {
        code: 'SIZE_MISMATCH',
      });
      assert.equal(await store.stat(digest), undefined);
      assert.equal(await store.linkVerified(digest, source, bytes.byteLength), true);
      // One inode, two names: no second copy of the bytes.
      assert.equal((await stat(source)).nlink, 2);
      // Linking it again replaces it in place; the source may then go.
      assert.equal(await store.linkVerified(digest, source, bytes.byteLength), true);
      await unlink(source);
      const chunks: Buffer[] = [];
      for await (const chunk of await store.read(digest)) {
        chunks.push(chunk as Buffer);
      }
      assert.deepEqual(Buffer.concat(chunks), bytes);
      assert.deepEqual(await readdir(join(dir.path, 'store', 'tmp')), []);
    } finally {
      await dir.remove();
    }
  });
});
