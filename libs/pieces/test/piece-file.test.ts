import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';

import { PieceBuffers } from '../src/buffers.js';
import { isDiskFull } from '../src/disk.js';
import { COALESCE_BYTES, PieceFile, WRITE_MAX_BYTES } from '../src/piece-file.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'piece-file-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A piece file whose gathered writes are recorded (bytes per write). */
async function watched(
  name: string,
  heldBytes: number,
  buffers?: PieceBuffers,
): Promise<{ file: PieceFile; writes: number[] }> {
  const file = await PieceFile.create(join(dir, name), {
    algorithm: 'sha256',
    heldBytes,
    buffers,
  });
  const writes: number[] = [];
  const { handle } = file;
  const writev = handle.writev.bind(handle);
  handle.writev = (buffers, position) => {
    writes.push(buffers.reduce((sum, b) => sum + b.byteLength, 0));
    return writev(buffers, position);
  };
  return { file, writes };
}

/** Counts the bytes read through `handle` from now on: `() => bytes so far`. */
function countReads(handle: FileHandle): () => number {
  let bytes = 0;
  const read = handle.read.bind(handle);
  handle.read = ((buffer: Buffer, offset: number, length: number, position: number) => {
    bytes += length;
    return read(buffer, offset, length, position);
  }) as typeof handle.read;
  return () => bytes;
}

/**
 * Puts `blob` into `file` in order, a pooled copy of each piece, moving the verified prefix
 * over it; `each` runs after every piece.
 */
async function putInOrder(
  file: PieceFile,
  blob: Buffer,
  pool: PieceBuffers,
  pieceBytes: number,
  each: () => void = () => undefined,
): Promise<void> {
  for (let start = 0; start < blob.length; start += pieceBytes) {
    const piece = blob.subarray(start, Math.min(blob.length, start + pieceBytes));
    const copy = pool.take(piece.length);
    piece.copy(copy);
    await file.put(start, copy, true);
    file.advance(start + piece.length);
    each();
  }
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

describe('PieceFile', () => {
  it('gathers out-of-order pieces into writes of at least 1 MiB where they are contiguous', async () => {
    const pieceBytes = 64 * KiB;
    const blob = randomBytes(4 * MiB);
    const pool = new PieceBuffers(16 * MiB);
    const { file, writes } = await watched('out-of-order', 8 * MiB, pool);
    const count = blob.length / pieceBytes;
    // Every piece of each MiB, the MiBs in reverse order and each one's pieces shuffled.
    const order: number[] = [];
    for (let mib = 3; mib >= 0; mib--) {
      const first = (mib * MiB) / pieceBytes;
      const pieces = [...Array(MiB / pieceBytes).keys()].map((i) => first + i);
      pieces.sort(() => Math.random() - 0.5);
      order.push(...pieces);
    }
    assert.equal(order.length, count);
    const have = new Set<number>();
    let prefix = 0;
    for (const index of order) {
      const copy = pool.take(pieceBytes);
      blob.copy(copy, 0, index * pieceBytes, (index + 1) * pieceBytes);
      await file.put(index * pieceBytes, copy, true);
      have.add(index);
      while (have.has(prefix)) {
        prefix += 1;
      }
      file.advance(prefix * pieceBytes);
    }
    await file.flush();
    assert.ok(
      writes.every((bytes) => bytes >= COALESCE_BYTES),
      `every write is at least 1 MiB: ${writes.join(', ')}`,
    );
    assert.equal(
      writes.reduce((sum, bytes) => sum + bytes, 0),
      blob.length,
      'each byte written once',
    );
    assert.equal((await file.digest()).toString(), sha256(blob));
    await file.commit(join(dir, 'out-of-order.done'));
    assert.deepEqual(await readFile(join(dir, 'out-of-order.done')), blob);
    await file.close();
  });

  it('reads pieces not written yet from memory, and hashes from memory only', async () => {
    const blob = randomBytes(512 * KiB);
    const { file, writes } = await watched('unwritten', 8 * MiB);
    await file.put(256 * KiB, blob.subarray(256 * KiB), false);
    await file.put(0, blob.subarray(0, 256 * KiB), false);
    assert.deepEqual(writes, [], 'half a MiB waits for more');
    assert.equal(file.unwritten, blob.length);
    // A read across both pieces, partly from each.
    const middle = Buffer.alloc(100 * KiB);
    assert.equal(await file.readFully(middle, 200 * KiB), true);
    assert.deepEqual(middle, blob.subarray(200 * KiB, 300 * KiB));
    file.advance(blob.length);
    assert.equal((await file.digest()).toString(), sha256(blob));
    await file.flush();
    assert.deepEqual(writes, [blob.length]);
    assert.equal(file.unwritten, 0);
    await file.discard();
    await assert.rejects(stat(join(dir, 'unwritten')), { code: 'ENOENT' });
  });

  it('appends socket-sized chunks in order: hashed at once, written in 1 MiB writes', async () => {
    const blob = randomBytes(3 * MiB + 1000);
    // Nothing kept once written: only the write being gathered is in memory.
    const { file, writes } = await watched('appended', 0);
    for (let offset = 0; offset < blob.length; offset += 64 * KiB) {
      await file.append(blob.subarray(offset, offset + 64 * KiB), false);
      assert.equal(file.verified, Math.min(blob.length, offset + 64 * KiB));
      assert.ok(file.unwritten < COALESCE_BYTES);
    }
    await file.flush();
    assert.deepEqual(writes, [COALESCE_BYTES, COALESCE_BYTES, COALESCE_BYTES, 1000]);
    assert.equal(file.heldAt(0), undefined, 'written bytes are not kept');
    assert.equal((await file.digest()).toString(), sha256(blob));
    await file.close();
  });

  it('cuts writes of 2 MiB or more into 1 MiB calls, whole pieces, gathered runs and writes-through alike', async () => {
    // One call of 2 MiB or more would fill the page cache with 2 MiB folios (see WRITE_MAX_BYTES).
    const blob = randomBytes(4 * MiB + 3 * 768 * KiB + 4 * MiB);
    const { file, writes } = await watched('cut', 16 * MiB);
    await file.put(0, blob.subarray(0, 4 * MiB), false);
    assert.deepEqual(writes, [MiB, MiB, MiB, MiB], 'a 4 MiB piece in four calls');
    // Three 768 KiB pieces out of order: the middle one joins them into a 2.25 MiB run, cut
    // after 1 MiB, its last 1.25 MiB in one call.
    const at = (i: number): number => 4 * MiB + i * 768 * KiB;
    for (const i of [0, 2, 1]) {
      await file.put(at(i), blob.subarray(at(i), at(i + 1)), false);
    }
    assert.deepEqual(writes.slice(4), [MiB, MiB + 256 * KiB]);
    // Written through: 1.5 MiB in one call, 2.5 MiB in 1 MiB then 1.5 MiB.
    await file.writeThrough(at(3), blob.subarray(at(3), at(3) + 1536 * KiB));
    await file.writeThrough(at(3) + 1536 * KiB, blob.subarray(at(3) + 1536 * KiB));
    assert.deepEqual(writes.slice(6), [1536 * KiB, MiB, 1536 * KiB]);
    assert.equal(WRITE_MAX_BYTES, MiB);
    file.advance(blob.length);
    assert.equal((await file.digest()).toString(), sha256(blob));
    await file.commit(join(dir, 'cut.done'));
    assert.deepEqual(await readFile(join(dir, 'cut.done')), blob);
    await file.close();
  });

  it('stays within its hold budget, reading back for the hash what it dropped', async () => {
    const pieceBytes = 256 * KiB;
    const blob = randomBytes(8 * MiB + 100);
    const pool = new PieceBuffers(4 * MiB);
    const { file, writes } = await watched('budget', MiB, pool);
    const count = Math.ceil(blob.length / pieceBytes);
    // Back to front: nothing joins the prefix until the very end.
    for (let index = count - 1; index >= 0; index--) {
      const piece = blob.subarray(
        index * pieceBytes,
        Math.min(blob.length, (index + 1) * pieceBytes),
      );
      const copy = pool.take(piece.length);
      piece.copy(copy);
      await file.put(index * pieceBytes, copy, true);
    }
    file.advance(blob.length);
    assert.equal((await file.digest()).toString(), sha256(blob));
    await file.flush();
    assert.equal(
      writes.reduce((sum, bytes) => sum + bytes, 0),
      blob.length,
    );
    const back = Buffer.alloc(blob.length);
    assert.equal(await file.readFully(back, 0), true);
    assert.deepEqual(back, blob);
    await file.close();
  });

  it('with the hash deferred, hashes nothing until asked, then reads back what it dropped', async () => {
    const pieceBytes = 256 * KiB;
    const blob = randomBytes(6 * MiB + 100);
    const pool = new PieceBuffers(4 * MiB);
    const { file } = await watched('deferred', MiB, pool);
    const readBack = countReads(file.handle);
    file.deferHash();
    await putInOrder(file, blob, pool, pieceBytes);
    await file.flush();
    assert.equal(readBack(), 0, 'nothing read back while the hash is deferred');
    // The prefix readers passed went first: the budget holds.
    assert.equal(file.heldAt(0), undefined);
    assert.equal((await file.digest()).toString(), sha256(blob));
    assert.ok(readBack() >= blob.length - MiB, 'asked for, the digest reads back what was dropped');
    await file.close();
  });

  it('with the hash held behind the prefix, hashes all but that much, and the rest when asked', async () => {
    const pieceBytes = 256 * KiB;
    const lag = 2 * MiB;
    const blob = randomBytes(6 * MiB + 100);
    const pool = new PieceBuffers(4 * MiB);
    const { file } = await watched('lagging', MiB, pool);
    const readBack = countReads(file.handle);
    file.lagHash(lag);
    await putInOrder(file, blob, pool, pieceBytes, () =>
      assert.ok(file.held <= MiB, `within the hold budget: ${file.held}`),
    );
    await file.flush();
    // The hash goes on in the background up to `lag` short of the prefix, and no further.
    const deadline = Date.now() + 5000;
    while (readBack() < blob.length - lag - MiB && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.ok(readBack() >= blob.length - lag - MiB, `hashed as it went: ${readBack()}`);
    assert.ok(readBack() <= blob.length - lag, `stayed ${lag} behind: ${readBack()}`);
    // Asked for, the digest reads back the rest, and only the rest.
    const before = readBack();
    assert.equal((await file.digest()).toString(), sha256(blob));
    assert.ok(readBack() - before <= lag + MiB, `read back ${readBack() - before} at the end`);
    await file.close();
  });

  it('fails the write, not the process, when the disk refuses it', async () => {
    const { file } = await watched('refused', 8 * MiB);
    const { handle } = file;
    handle.writev = () => Promise.reject(Object.assign(new Error('no space'), { code: 'ENOSPC' }));
    await assert.rejects(file.put(0, randomBytes(2 * MiB), false), { code: 'ENOSPC' });
    await file.discard();
  });

  it('keeps the bytes of a write that failed for want of disk room, and writes them again on flush', async () => {
    // A real filesystem that really fills (root only, as the integration tests' small disks).
    const disk = await mkdtemp(join(tmpdir(), 'piece-file-disk-'));
    const run = promisify(execFile);
    await run('mount', ['-t', 'tmpfs', '-o', `size=${2 * MiB}`, 'tmpfs', disk]);
    try {
      const filler = join(disk, 'filler');
      await writeFile(filler, Buffer.alloc(MiB + MiB / 2));
      const file = await PieceFile.create(join(disk, 'blob'), {
        algorithm: 'sha256',
        heldBytes: 0,
      });
      const blob = randomBytes(COALESCE_BYTES);
      await assert.rejects(file.append(blob, false), (error: unknown) => isDiskFull(error));
      assert.equal(file.unwritten, blob.length, 'the bytes are still held');
      // Room made: the same bytes go to the same place.
      await rm(filler);
      await file.flush();
      assert.equal(file.unwritten, 0);
      assert.equal(sha256(await readFile(join(disk, 'blob'))), sha256(blob));
      assert.equal((await file.digest()).toString(), sha256(blob));
      await file.close();
    } finally {
      await run('umount', ['-l', disk]);
      await rm(disk, { recursive: true, force: true });
    }
  });
});
