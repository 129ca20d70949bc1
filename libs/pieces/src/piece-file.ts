/**
 * A blob's file being filled, the core that the agent's downloads and the seed server's
 * ingest share.
 *
 * Bytes come in as extents at their offsets: in order (a stream from the origin, cut into
 * pieces by the seed) or out of order (verified pieces from the swarm). Each extent is held in
 * memory and written only once it belongs to a contiguous run of unwritten extents of at least
 * `coalesceBytes` (or on `flush`), with one gathered write: a socket chunk or a small piece
 * costs a copy at most, never a thread-pool round trip of its own.
 *
 * The caller moves a verified prefix forward (`advance`); the whole-blob digest is fed from
 * that prefix as it grows, from the extents still in memory, reading back from the file only
 * what was dropped (pieces that arrived far out of order). Held extents are readable
 * (`heldAt`, `read`), so readers following the prefix copy from memory too.
 *
 * Memory: at most the hold budget of extents, past which written extents go (hashed ones
 * first, oldest first; then the newest), and unwritten runs are written first when nothing
 * else can go. Completion is crash-safe: the caller writes to a temporary path, and `commit`
 * flushes, fsyncs and renames it into place only once the bytes verified.
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';

import { DigestHasher, type Digest } from '@shoal/proto';

import type { PieceBuffers } from './buffers.js';

/** The smallest write of a contiguous run, in bytes (unless flushed). */
export const COALESCE_BYTES = 1024 * 1024;
/** Extents gathered into one write at most (well under IOV_MAX, 1024 on Linux). */
const MAX_CHUNKS_PER_WRITE = 256;
/**
 * The most bytes one write system call takes. Linux (6.x, ext4 and others with large folios)
 * sizes the page-cache folios of a buffered write by the bytes the call writes: 2 MiB or more
 * get 2 MiB folios, which come from the free blocks the kernel has handed back to the host of
 * a virtual machine (free page reporting), and every first touch of those pages costs a
 * fault on the host. Writing a 4 MiB piece in one call cost the agent's thread pool 8 ms per
 * piece against 0.1 ms per MiB written 1 MiB at a time (bench/README.md, issue 9).
 */
export const WRITE_MAX_BYTES = 1024 * 1024;
/** The smallest write cut into `WRITE_MAX_BYTES` calls: smaller ones get smaller folios already. */
const CUT_FROM_BYTES = 2 * 1024 * 1024;
/** Bytes read back per step when hashing a prefix whose bytes were dropped from memory. */
const HASH_CHUNK_BYTES = 1024 * 1024;

interface Extent {
  readonly start: number;
  readonly end: number;
  readonly bytes: Buffer;
  /** Goes back to the buffer pool when dropped. */
  readonly owned: boolean;
  state: 'pending' | 'writing' | 'written';
}

export interface PieceFileOptions {
  /** The algorithm of the whole-blob digest. */
  readonly algorithm: Digest['algorithm'];
  /** Bytes of extents kept in memory at most (see `holdBudget`). */
  readonly heldBytes: number;
  /** Where owned extents' buffers go back to once dropped. */
  readonly buffers?: PieceBuffers | undefined;
  /** The smallest write of a contiguous run, in bytes (default `COALESCE_BYTES`). */
  readonly coalesceBytes?: number;
}

export class PieceFile {
  readonly handle: FileHandle;
  #path: string;
  readonly #buffers: PieceBuffers | undefined;
  readonly #coalesceBytes: number;
  #heldBudget: number;
  /** Extents in memory, by start offset, oldest first. */
  readonly #held = new Map<number, Extent>();
  #heldBytes = 0;
  /** Pending extents by their end offset: a run is found walking back from an extent. */
  readonly #pendingByEnd = new Map<number, Extent>();
  /** Bytes held and not yet on disk (pending or being written). */
  #unwritten = 0;
  /** Writes under way. */
  readonly #writes = new Set<Promise<void>>();
  readonly #hasher: DigestHasher;
  /** Bytes of the verified prefix. */
  #verified = 0;
  /** Bytes of the prefix fed to the whole-blob hash. */
  #hashed = 0;
  /** A read-back of dropped bytes for the hash is under way (`#hashing` settles with it). */
  #hashBusy = false;
  #hashing: Promise<void> = Promise.resolve();
  #hashError: Error | undefined;
  /** The whole-blob hash is fed only when `digest` is asked for (see `deferHash`). */
  #deferred = false;
  /** Bytes the whole-blob hash stays behind the prefix (see `lagHash`). */
  #hashLag = 0;
  #closed = false;

  constructor(handle: FileHandle, path: string, options: PieceFileOptions) {
    this.handle = handle;
    this.#path = path;
    this.#buffers = options.buffers;
    this.#coalesceBytes = options.coalesceBytes ?? COALESCE_BYTES;
    this.#heldBudget = options.heldBytes;
    this.#hasher = new DigestHasher(options.algorithm);
  }

  /** A new, empty file at `path` (a temporary path: `commit` moves it into place). */
  static async create(path: string, options: PieceFileOptions): Promise<PieceFile> {
    return new PieceFile(await open(path, 'w+'), path, options);
  }

  /** The file's path (the temporary one until `commit`). */
  get path(): string {
    return this.#path;
  }

  /** Bytes of the verified prefix. */
  get verified(): number {
    return this.#verified;
  }

  /** Bytes fed to the whole-blob hash so far (from memory or read back from the file). */
  get hashed(): number {
    return this.#hashed;
  }

  /** Bytes of extents held in memory, written or not. */
  get held(): number {
    return this.#heldBytes;
  }

  /** Bytes held and not yet on disk. */
  get unwritten(): number {
    return this.#unwritten;
  }

  /** Changes the hold budget, in bytes (an in-order stream needs far less than pieces). */
  holdBudget(bytes: number): void {
    this.#heldBudget = bytes;
  }

  /**
   * Stops feeding the whole-blob hash as the prefix advances: `digest` then hashes the prefix
   * when asked, from the extents still held and reading the rest back from the file. For a
   * caller that may not need the digest at all (an agent whose pieces the seed server's
   * signed record vouches for); one that does pays a read-back instead of nothing. The bytes
   * hashed before the call are kept.
   */
  deferHash(): void {
    this.#deferred = true;
  }

  /**
   * Keeps the whole-blob hash `bytes` behind the verified prefix (0: at it, the default). For
   * a caller that expects to stop the hash soon (`deferHash`, once the seed's record vouches
   * for the blob): what the prefix covers by then was never hashed, and should the digest be
   * needed after all, `digest` has at most `bytes` left to hash, so the last byte waits for
   * no more than that. The bytes it stays behind are read back from the file when hashed,
   * not kept in memory.
   */
  lagHash(bytes: number): void {
    this.#hashLag = Math.max(0, bytes);
    if (!this.#deferred) {
      this.#feedHash();
    }
  }

  /** How far along the prefix the hash goes now: `lagHash` bytes short of it. */
  #hashLimit(): number {
    return this.#verified - this.#hashLag;
  }

  /**
   * Ends `deferHash` and `lagHash` (for `digest`): the prefix so far is hashed now (from
   * memory, else read back in the background), and the hash follows the prefix again as it
   * advances.
   */
  #resumeHash(): void {
    if (this.#deferred || this.#hashLag > 0) {
      this.#deferred = false;
      this.#hashLag = 0;
      this.#feedHash();
    }
  }

  /**
   * Takes `bytes` at `offset`: held, and written once a contiguous run of unwritten extents
   * reaches the coalescing size. The extent must not overlap one taken before. `owned`: the
   * buffer came from the pool and goes back to it once dropped (the caller must not touch it
   * again); otherwise it is only referenced until then. Rejects when a write fails.
   */
  async put(offset: number, bytes: Buffer, owned: boolean): Promise<void> {
    const extent = this.#take(offset, bytes, owned);
    if (extent !== undefined) {
      await this.#place(extent);
    }
  }

  /**
   * Takes `bytes` right after the verified prefix and moves the prefix over them (bytes that
   * arrive in order, verified by the whole-blob digest at the end): hashed from memory at
   * once, then written as `put` writes.
   */
  async append(bytes: Buffer, owned: boolean): Promise<void> {
    const start = this.#verified;
    const extent = this.#take(start, bytes, owned);
    this.advance(start + bytes.length);
    if (extent !== undefined) {
      await this.#place(extent);
    }
  }

  /** Writes `bytes` at `offset` at once, holding nothing (large blocks, written as they come). */
  async writeThrough(offset: number, bytes: Uint8Array): Promise<void> {
    await writeFully(this.handle, [bytes], offset);
  }

  /** Writes every extent not on disk yet, and waits for the writes under way. */
  async flush(): Promise<void> {
    const pending = [...this.#held.values()]
      .filter((e) => e.state === 'pending')
      .sort((a, b) => a.start - b.start);
    let run: Extent[] = [];
    const writes: Promise<void>[] = [];
    for (const extent of pending) {
      const last = run.at(-1);
      if (last !== undefined && (last.end !== extent.start || run.length >= MAX_CHUNKS_PER_WRITE)) {
        writes.push(this.#write(run));
        run = [];
      }
      run.push(extent);
    }
    if (run.length > 0) {
      writes.push(this.#write(run));
    }
    await Promise.all([...writes, ...this.#writes]);
  }

  /**
   * Moves the verified prefix to `verified` bytes (all taken, and verified by the caller) and
   * feeds the new bytes to the whole-blob hash: from memory at once, or read back from the file
   * (in the background) where they were dropped.
   */
  advance(verified: number): void {
    if (verified <= this.#verified) {
      return;
    }
    this.#verified = verified;
    if (!this.#deferred) {
      this.#feedHash();
    }
  }

  /** Feeds the hash what the prefix holds beyond it: from memory, else in the background. */
  #feedHash(): void {
    if (!this.#hashBusy) {
      this.#hashHeld();
      if (this.#hashed < this.#hashLimit() && !this.#closed) {
        this.#hashBusy = true;
        this.#hashing = this.#hashFromFile();
      }
    }
  }

  /** The digest of the verified prefix, once every byte of it has been fed to the hash. */
  async digest(): Promise<Digest> {
    // Asked for after all: hashed from here on as if it never was deferred.
    this.#resumeHash();
    while (this.#hashBusy) {
      await this.#hashing;
    }
    if (this.#hashError !== undefined) {
      throw this.#hashError;
    }
    if (this.#hashed < this.#verified) {
      throw new Error(`${this.#path}: the hash stopped at ${this.#hashed} of ${this.#verified}`);
    }
    return this.#hasher.digest();
  }

  /** The extent in memory that holds the byte at `position`, if any. */
  heldAt(position: number): { start: number; bytes: Buffer } | undefined {
    for (const extent of this.#held.values()) {
      if (position >= extent.start && position < extent.end) {
        return extent;
      }
    }
    return undefined;
  }

  /**
   * Reads up to `length` bytes at `position` into `buffer` at `at`: from memory when held,
   * else from the file (stopping where a held extent begins, which may not be on disk yet).
   * Returns the bytes read; 0 only past the end of the file.
   */
  async read(buffer: Buffer, at: number, length: number, position: number): Promise<number> {
    const held = this.heldAt(position);
    if (held !== undefined) {
      const from = position - held.start;
      return held.bytes.copy(buffer, at, from, Math.min(held.bytes.length, from + length));
    }
    const { bytesRead } = await this.handle.read(
      buffer,
      at,
      this.#untilHeld(position, length),
      position,
    );
    return bytesRead;
  }

  /** Fills `buffer` from `position`; false when the file ends first. */
  async readFully(buffer: Buffer, position: number): Promise<boolean> {
    let done = 0;
    while (done < buffer.length) {
      const read = await this.read(buffer, done, buffer.length - done, position + done);
      if (read === 0) {
        return false;
      }
      done += read;
    }
    return true;
  }

  /** Makes every byte durable: flushes and fsyncs. */
  async sync(): Promise<void> {
    await this.flush();
    await this.handle.sync();
  }

  /**
   * Completes the file: durable (flush, fsync), then `beforeRename` (say, a manifest written
   * beside it), then renamed to `finalPath`. A crash before the rename leaves only the
   * temporary file, which is never served.
   */
  async commit(finalPath: string, beforeRename?: () => Promise<void>): Promise<void> {
    await this.sync();
    await beforeRename?.();
    await rename(this.#path, finalPath);
    this.#path = finalPath;
  }

  /** Drops every extent from memory (owned buffers go back to the pool). */
  dropHeld(): void {
    for (const extent of this.#held.values()) {
      // A buffer being written stays with the write; the collector takes it afterwards.
      if (extent.state !== 'writing') {
        this.#release(extent.bytes, extent.owned);
      }
    }
    this.#held.clear();
    this.#pendingByEnd.clear();
    this.#heldBytes = 0;
    this.#unwritten = 0;
  }

  /** Closes the file (idempotent); nothing is written or hashed afterwards. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.dropHeld();
      await Promise.all([...this.#writes].map((w) => w.catch(() => undefined)));
      // A read-back for the hash stops at its next block (closed); none may outlive the handle.
      await this.#hashing;
      await this.handle.close();
    }
  }

  /** Closes the file and removes it. */
  async discard(): Promise<void> {
    await this.close();
    await unlink(this.#path).catch(() => undefined);
  }

  /** Holds a new extent, or nothing (undefined) for no bytes or bytes held already. */
  #take(offset: number, bytes: Buffer, owned: boolean): Extent | undefined {
    if (this.#closed) {
      this.#release(bytes, owned);
      throw new Error(`${this.#path} is closed`);
    }
    if (bytes.length === 0 || this.#held.get(offset)?.bytes.length === bytes.length) {
      // Nothing, or the same verified bytes taken twice (two copies of a piece): kept once.
      this.#release(bytes, owned);
      return undefined;
    }
    const extent: Extent = {
      start: offset,
      end: offset + bytes.length,
      bytes,
      owned,
      state: 'pending',
    };
    this.#held.set(offset, extent);
    this.#heldBytes += bytes.length;
    this.#pendingByEnd.set(extent.end, extent);
    this.#unwritten += bytes.length;
    return extent;
  }

  /** Writes the run a new extent completes, if large enough; then keeps within the budget. */
  async #place(extent: Extent): Promise<void> {
    const run = this.#runAround(extent);
    if (run.bytes >= this.#coalesceBytes || run.extents.length >= MAX_CHUNKS_PER_WRITE) {
      await this.#write(run.extents);
    }
    await this.#makeRoom();
  }

  /** The contiguous run of pending extents that `extent` is part of, in order, and its bytes. */
  #runAround(extent: Extent): { extents: Extent[]; bytes: number } {
    const before: Extent[] = [];
    let bytes = extent.bytes.length;
    let previous = this.#pendingByEnd.get(extent.start);
    while (previous !== undefined && before.length < MAX_CHUNKS_PER_WRITE) {
      before.push(previous);
      bytes += previous.bytes.length;
      previous = this.#pendingByEnd.get(previous.start);
    }
    const extents = before.reverse();
    extents.push(extent);
    let next = this.#held.get(extent.end);
    while (next?.state === 'pending' && extents.length < MAX_CHUNKS_PER_WRITE) {
      extents.push(next);
      bytes += next.bytes.length;
      next = this.#held.get(next.end);
    }
    return { extents, bytes };
  }

  /** Writes a run of pending extents with one gathered write; they stay held, as written. */
  #write(run: readonly Extent[]): Promise<void> {
    const first = run[0];
    if (first === undefined) {
      return Promise.resolve();
    }
    for (const extent of run) {
      extent.state = 'writing';
      this.#pendingByEnd.delete(extent.end);
    }
    const write = writeFully(
      this.handle,
      run.map((e) => e.bytes),
      first.start,
    ).then(
      () => {
        for (const extent of run) {
          extent.state = 'written';
          if (this.#held.get(extent.start) === extent) {
            this.#unwritten -= extent.bytes.length;
          }
        }
      },
      (error: unknown) => {
        // A failed write (a full disk) leaves its bytes held and pending: once the caller has
        // made room, `flush` writes them again at the same offset.
        for (const extent of run) {
          if (extent.state === 'writing' && this.#held.get(extent.start) === extent) {
            extent.state = 'pending';
            this.#pendingByEnd.set(extent.end, extent);
          }
        }
        throw error;
      },
    );
    this.#writes.add(write);
    const forget = (): void => {
      this.#writes.delete(write);
    };
    write.then(forget, forget);
    return write;
  }

  /**
   * Keeps the extents within the hold budget: drops written ones whose bytes were hashed
   * (oldest first), then written ones furthest from the prefix (the hash reads them back when
   * the prefix gets there); when the unwritten bytes alone pass the budget, writes them early.
   */
  async #makeRoom(): Promise<void> {
    if (this.#heldBytes <= this.#heldBudget) {
      return;
    }
    for (const extent of this.#held.values()) {
      if (this.#heldBytes <= this.#heldBudget) {
        return;
      }
      // With the hash deferred or behind, the bytes readers have passed (the verified prefix)
      // go first, as the hashed ones do otherwise: the hash may never need them, and when it
      // does it reads them back from the file.
      if (
        extent.state === 'written' &&
        extent.end <= (this.#deferred || this.#hashLag > 0 ? this.#verified : this.#hashed)
      ) {
        this.#drop(extent);
      }
    }
    this.#dropFurthest();
    // Unwritten bytes past the budget (pieces that join no run yet) are written early; an
    // in-order stream never gets here, its run being written at the coalescing size.
    if (this.#unwritten <= Math.max(this.#heldBudget, this.#coalesceBytes)) {
      return;
    }
    await this.flush();
    this.#dropFurthest();
  }

  /** Drops written extents, furthest from the start first, until within the budget. */
  #dropFurthest(): void {
    const written = [...this.#held.values()]
      .filter((e) => e.state === 'written')
      .sort((a, b) => b.start - a.start);
    for (const extent of written) {
      if (this.#heldBytes <= this.#heldBudget) {
        return;
      }
      this.#drop(extent);
    }
  }

  #drop(extent: Extent): void {
    this.#held.delete(extent.start);
    this.#heldBytes -= extent.bytes.length;
    this.#release(extent.bytes, extent.owned);
  }

  #release(bytes: Buffer, owned: boolean): void {
    if (owned) {
      this.#buffers?.give(bytes);
    }
  }

  /** Feeds the hash from the extents in memory, as far along the prefix as they reach. */
  #hashHeld(): void {
    const limit = this.#hashLimit();
    while (this.#hashed < limit) {
      const held = this.heldAt(this.#hashed);
      if (held === undefined) {
        return;
      }
      const from = this.#hashed - held.start;
      const to = Math.min(held.bytes.length, limit - held.start);
      this.#hasher.update(held.bytes.subarray(from, to));
      this.#hashed += to - from;
    }
  }

  /** Feeds the hash the rest of the prefix, reading back from the file what is not held. */
  async #hashFromFile(): Promise<void> {
    // One buffer for all the reading back of this round (one round runs at a time).
    let scratch: Buffer | undefined;
    try {
      // Deferred meanwhile: stop reading back (`digest` resumes it if it is needed after all).
      while (this.#hashed < this.#hashLimit() && !this.#closed && !this.#deferred) {
        this.#hashHeld();
        if (this.#hashed >= this.#hashLimit()) {
          break;
        }
        const length = this.#untilHeld(
          this.#hashed,
          Math.min(this.#hashLimit() - this.#hashed, HASH_CHUNK_BYTES),
        );
        scratch ??= this.#buffers?.take(HASH_CHUNK_BYTES) ?? Buffer.allocUnsafe(HASH_CHUNK_BYTES);
        const { bytesRead } = await this.handle.read(scratch, 0, length, this.#hashed);
        if (bytesRead === 0) {
          throw new Error(`short read at ${this.#hashed} while hashing ${this.#path}`);
        }
        this.#hasher.update(scratch.subarray(0, bytesRead));
        this.#hashed += bytesRead;
      }
    } catch (error) {
      this.#hashError ??= error instanceof Error ? error : new Error(String(error));
    } finally {
      // Cleared with no await after the last check, so an `advance` from now on starts anew.
      this.#hashBusy = false;
      if (scratch !== undefined) {
        this.#buffers?.give(scratch);
      }
    }
  }

  /** `length`, shortened so that `[position, position + length)` ends where a held extent begins. */
  #untilHeld(position: number, length: number): number {
    let end = position + length;
    for (const start of this.#held.keys()) {
      if (start > position && start < end) {
        end = start;
      }
    }
    return end - position;
  }
}

/**
 * Writes `buffers` back to back at `position`, going on after short writes: in one call if they
 * hold less than `CUT_FROM_BYTES`, otherwise `WRITE_MAX_BYTES` per call.
 */
async function writeFully(
  handle: FileHandle,
  buffers: readonly Uint8Array[],
  position: number,
): Promise<void> {
  let rest = buffers.filter((b) => b.length > 0);
  let at = position;
  while (rest.length > 0) {
    const left = rest.reduce((sum, b) => sum + b.length, 0);
    const call = left < CUT_FROM_BYTES ? rest : upTo(rest, WRITE_MAX_BYTES);
    const { bytesWritten } = await handle.writev(call, at);
    at += bytesWritten;
    // Go on from the first byte not written (a short write is rare on a regular file; a long
    // one is cut at `WRITE_MAX_BYTES`).
    let skip = bytesWritten;
    while (rest.length > 0 && skip >= (rest[0]?.length ?? 0)) {
      skip -= rest[0]?.length ?? 0;
      rest = rest.slice(1);
    }
    if (skip > 0 && rest[0] !== undefined) {
      rest = [rest[0].subarray(skip), ...rest.slice(1)];
    }
  }
}

/** The first `maxBytes` of `buffers` (all of them if they hold less), without copying. */
function upTo(buffers: readonly Uint8Array[], maxBytes: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let left = maxBytes;
  for (const buffer of buffers) {
    if (left <= 0) {
      break;
    }
    out.push(buffer.length <= left ? buffer : buffer.subarray(0, left));
    left -= buffer.length;
  }
  return out;
}
