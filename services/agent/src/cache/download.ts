/**
 * A blob being fetched into the cache, shared by every request for it.
 *
 * Whoever fills it (the origin, streaming in order, or the swarm, piece by piece in any
 * order) writes into one temp file and moves `available` forward: the length of the prefix
 * that is on disk and, for pieces, verified against its piece hash. Readers follow that prefix
 * as it grows, so memory is bounded by the chunks in flight whatever the blob size. The
 * prefix is also fed to a hash of the whole blob; the download is committed to the store only
 * if that digest matches.
 *
 * A verified piece is written with one write, and its bytes are kept in memory for a while
 * (at most `HELD_BYTES` per download): the whole-blob hash takes them from there when the
 * prefix reaches them, and readers following the prefix copy them from there, so a byte is
 * read back from the file only when it arrived out of order and its buffer was dropped, or
 * when a reader lags far behind.
 *
 * No response is completed with unverified bytes: until the whole blob has verified, a reader
 * withholds the last byte of its response, and if verification fails the reader throws, which
 * aborts the client's response instead of completing it.
 */
import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';

import type { PieceBuffers } from '@shoal/pieces';
import { DigestHasher, type Digest } from '@shoal/proto';
import { ShoalError } from '@shoal/runtime';

import type { FsContentStore } from './content-store.js';

/** Bytes per chunk of a stream made from a cursor. */
const READ_CHUNK_BYTES = 64 * 1024;
/** Bytes read back per step when hashing a prefix that was written out of order. */
const HASH_CHUNK_BYTES = 1024 * 1024;
/**
 * Piece bytes kept in memory per download after their write, for the whole-blob hash and for
 * readers. Pieces already hashed are dropped first (oldest first); a piece that does not fit
 * is not kept, and its bytes are read back from the file when needed.
 */
export const HELD_BYTES = 8 * 1024 * 1024;
/** Bytes appended in order (the origin path) gathered into one write. */
const APPEND_BLOCK_BYTES = 1024 * 1024;
/**
 * Appended blocks kept in memory, in bytes: readers follow an in-order download closely, and
 * the hash has them already, so the block being filled and the one before are enough.
 */
const APPEND_HELD_BYTES = 2 * APPEND_BLOCK_BYTES;

export type DownloadState = 'running' | 'verified' | 'failed';

/** Why a download failed: the content did not match its digest or announced size. */
export class ContentMismatchError extends ShoalError<'DIGEST_MISMATCH' | 'SIZE_MISMATCH'> {
  override readonly name = 'ContentMismatchError';
}

export class BlobDownload {
  readonly digest: Digest;
  #size: number | undefined;
  #state: DownloadState = 'running';
  /** The whole blob matched its digest (the commit to the store may still be running). */
  #matched = false;
  #error: Error | undefined;
  /** Bytes of the contiguous prefix readers may have. */
  #available = 0;
  /** Bytes of the prefix fed to the whole-blob hash. */
  #hashed = 0;
  #hashing: Promise<void> = Promise.resolve();
  /** Written, verified pieces still in memory, by offset, oldest first. */
  readonly #held = new Map<number, Buffer>();
  #heldBytes = 0;
  /** The block `append` is filling: readable from memory (it is in `#held`), not yet written. */
  #tail: { start: number; bytes: Buffer; filled: number } | undefined;
  readonly #hasher: DigestHasher;
  #waiters: (() => void)[] = [];
  #openReaders = 0;
  #handleClosed = false;
  readonly #handle: FileHandle;
  readonly #tempPath: string;
  /** Resolves once the download has settled, verified or failed. */
  readonly settled: Promise<DownloadState>;
  #settle: (state: DownloadState) => void = () => undefined;
  /** Resolves with the size once it is known; rejects if the download fails before that. */
  readonly sized: Promise<number>;
  #resolveSize: (size: number) => void = () => undefined;
  #rejectSize: (error: Error) => void = () => undefined;

  readonly #pool: PieceBuffers | undefined;

  /** `pool` takes back the piece buffers given to `writePiece` once they are dropped. */
  constructor(digest: Digest, temp: { path: string; handle: FileHandle }, pool?: PieceBuffers) {
    this.digest = digest;
    this.#pool = pool;
    this.#tempPath = temp.path;
    this.#handle = temp.handle;
    this.#hasher = new DigestHasher(digest.algorithm);
    this.settled = new Promise((resolve) => {
      this.#settle = resolve;
    });
    this.sized = new Promise((resolve, reject) => {
      this.#resolveSize = resolve;
      this.#rejectSize = reject;
    });
    // Nobody may be waiting for the size; a failure is still reported through `settled`.
    this.sized.catch(() => undefined);
  }

  get state(): DownloadState {
    return this.#state;
  }

  /** Size of the blob, once a source announced it. */
  get size(): number | undefined {
    return this.#size;
  }

  /** Bytes of the verified, contiguous prefix. */
  get available(): number {
    return this.#available;
  }

  /** The error a failed download ended with. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Sets the blob size (from Content-Length or the seed's piece hashes); first one wins. */
  setSize(size: number): void {
    if (this.#size === undefined) {
      this.#size = size;
      this.#resolveSize(size);
    }
  }

  /**
   * Appends bytes in order (the origin path): hashed and made available at once, readers
   * taking them from memory; written in blocks of `APPEND_BLOCK_BYTES` (the last one by
   * `finish`), so a socket chunk costs a copy rather than a write of its own.
   */
  async append(chunk: Uint8Array): Promise<void> {
    if (this.#size !== undefined && this.#available + chunk.length > this.#size) {
      throw new ContentMismatchError(
        'SIZE_MISMATCH',
        502,
        `${this.digest.toString()}: more bytes than announced`,
      );
    }
    let offset = 0;
    while (offset < chunk.length) {
      const tail = this.#tail ?? this.#newTail();
      const take = Math.min(chunk.length - offset, tail.bytes.length - tail.filled);
      tail.bytes.set(chunk.subarray(offset, offset + take), tail.filled);
      if (this.#hashed === this.#available) {
        this.#hasher.update(tail.bytes.subarray(tail.filled, tail.filled + take));
        this.#hashed += take;
      }
      tail.filled += take;
      this.#available += take;
      offset += take;
      this.#wake();
      if (tail.filled === tail.bytes.length) {
        await this.#flushTail();
      }
    }
  }

  /** Writes verified bytes at `offset` (the swarm path); `advance` makes them readable. */
  async writeAt(offset: number, bytes: Uint8Array): Promise<void> {
    await this.#writeAll(bytes, offset);
  }

  /**
   * Writes a whole verified piece at `offset` with one write and keeps its bytes in memory
   * while the budget allows (see `HELD_BYTES`); `advance` makes them readable. The download
   * owns `bytes` from then on: the caller must not touch them again (they go back to the pool).
   */
  async writePiece(offset: number, bytes: Buffer): Promise<void> {
    await this.#writeAll(bytes, offset);
    if (!(this.#state === 'running' && this.#hold(offset, bytes))) {
      this.#pool?.give(bytes);
    }
  }

  /** Moves the readable prefix to `available` bytes (all written and verified). */
  advance(available: number): void {
    if (available <= this.#available) {
      return;
    }
    this.#available = available;
    this.#hashing = this.#hashing.then(() => this.#hashPrefix());
    // A read error here is reported by `finish`, which awaits the chain; mark it handled now.
    this.#hashing.catch(() => undefined);
    this.#wake();
  }

  /** Checks the whole blob against its digest and commits it to `store`. Never throws. */
  async finish(store: FsContentStore): Promise<DownloadState> {
    if (this.#state !== 'running') {
      return this.#state;
    }
    try {
      await this.#flushTail();
      if (this.#size === undefined) {
        this.setSize(this.#available);
      }
      if (this.#available !== this.#size) {
        throw new ContentMismatchError(
          'SIZE_MISMATCH',
          502,
          `${this.digest.toString()}: expected ${this.#size ?? '?'} bytes, received ${this.#available}`,
        );
      }
      await this.#hashing;
      const actual = this.#hasher.digest();
      if (actual.toString() !== this.digest.toString()) {
        throw new ContentMismatchError(
          'DIGEST_MISMATCH',
          502,
          `content received for ${this.digest.toString()} hashes to ${actual.toString()}`,
        );
      }
      // Readers may complete their responses now: every byte is verified. Making the cache's
      // copy durable (fsync, rename) is the cache's business and need not delay them.
      this.#matched = true;
      this.#wake();
      await this.#handle.sync();
      await store.commit(this.#tempPath, this.digest, this.#available);
      this.#state = 'verified';
      this.#dropHeld();
      this.#wake();
      this.#settle(this.#state);
      await this.#closeHandleIfIdle();
    } catch (error) {
      await this.fail(error);
    }
    return this.#state;
  }

  /** Ends the download as failed: readers throw, the temp file goes. Idempotent. */
  async fail(error: unknown): Promise<void> {
    if (this.#state !== 'running') {
      return;
    }
    this.#state = 'failed';
    this.#dropHeld();
    this.#error = error instanceof Error ? error : new Error(String(error));
    this.#rejectSize(this.#error);
    await unlink(this.#tempPath).catch(() => undefined);
    this.#wake();
    this.#settle(this.#state);
    await this.#closeHandleIfIdle();
  }

  /**
   * Reads `length` bytes at `offset`, or undefined when the download failed or released its
   * file. The caller vouches that the range was verified: the prefix, or a piece the swarm
   * checked against its hash. The bytes go into a buffer from `alloc`.
   */
  async readAt(
    offset: number,
    length: number,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ): Promise<Buffer | undefined> {
    if (this.#handleClosed || this.#state === 'failed') {
      return undefined;
    }
    const held = this.#heldAt(offset);
    if (held !== undefined && offset + length <= held.start + held.bytes.length) {
      // A copy: the held buffer goes back to the pool while the caller may still send this.
      const copy = alloc(length);
      held.bytes.copy(copy, 0, offset - held.start, offset - held.start + length);
      return copy;
    }
    this.#openReaders += 1;
    try {
      const buffer = alloc(length);
      const { bytesRead } = await this.#handle.read(buffer, 0, length, offset);
      return bytesRead === length ? buffer : undefined;
    } finally {
      this.#openReaders -= 1;
      await this.#closeHandleIfIdle();
    }
  }

  /** Reads bytes inside the verified prefix, or undefined outside it (or when unavailable). */
  async readVerified(offset: number, length: number): Promise<Buffer | undefined> {
    return offset + length > this.#available ? undefined : this.readAt(offset, length);
  }

  /**
   * A cursor over the bytes `[start, end)` as they become available (`end` defaults to the
   * whole blob), or undefined when the download has settled and released its file: read the
   * store then. The final byte is given only once the whole blob verified; a failed download
   * makes `read` throw. The caller must `close` it.
   */
  openCursor(start: number, end?: number): ByteCursor | undefined {
    if (this.#handleClosed) {
      return undefined;
    }
    // Counted now so the file stays open until the cursor closes.
    this.#openReaders += 1;
    let position = start;
    let closed = false;
    return {
      read: async (buffer) => {
        for (;;) {
          if (closed) {
            throw new Error('cursor closed');
          }
          const verified = this.#state === 'verified' || this.#matched;
          const stop = end ?? this.#size ?? Number.POSITIVE_INFINITY;
          // Checked before a failure: every byte was verified and handed over already, even if
          // the commit to the store failed afterwards.
          if (verified && position >= Math.min(stop, this.#available)) {
            return 0;
          }
          if (this.#state === 'failed') {
            throw this.#error ?? new Error('download failed');
          }
          // Until verification, hold back the response's final byte: the byte before `stop`,
          // or, while the end is not known, the last byte available.
          const limit = verified
            ? Math.min(stop, this.#available)
            : Number.isFinite(stop)
              ? Math.min(this.#available, stop - 1)
              : this.#available - 1;
          if (position >= limit) {
            await this.#changed();
            continue;
          }
          const length = Math.min(limit - position, buffer.length);
          const held = this.#heldAt(position);
          if (held !== undefined) {
            // The bytes in flight: copied from memory rather than read back from the file.
            const from = position - held.start;
            const copied = held.bytes.copy(
              buffer,
              0,
              from,
              Math.min(held.bytes.length, from + length),
            );
            position += copied;
            return copied;
          }
          const { bytesRead } = await this.#handle.read(buffer, 0, length, position);
          if (bytesRead === 0) {
            throw new Error(`short read at ${position} of ${this.digest.toString()}`);
          }
          position += bytesRead;
          return bytesRead;
        }
      },
      close: () => {
        if (!closed) {
          closed = true;
          this.#openReaders -= 1;
          void this.#closeHandleIfIdle();
        }
      },
    };
  }

  /** The same as `openCursor`, as a stream of fresh buffers. */
  openReader(start: number, end?: number): Readable | undefined {
    const cursor = this.openCursor(start, end);
    return cursor === undefined ? undefined : cursorStream(cursor);
  }

  /**
   * Feeds the prefix to the whole-blob hash: from the pieces held in memory, reading back from
   * the file only what is not held (pieces that arrived out of order and were dropped).
   */
  async #hashPrefix(): Promise<void> {
    // One buffer for all the reading back of this round (hashing runs one round at a time).
    let scratch: Buffer | undefined;
    while (this.#hashed < this.#available && !this.#handleClosed) {
      const held = this.#heldAt(this.#hashed);
      if (held !== undefined) {
        const from = this.#hashed - held.start;
        const to = Math.min(held.bytes.length, this.#available - held.start);
        this.#hasher.update(held.bytes.subarray(from, to));
        this.#hashed += to - from;
        continue;
      }
      let length = Math.min(this.#available - this.#hashed, HASH_CHUNK_BYTES);
      // Stop the read where a held piece begins: its bytes are in memory.
      for (const start of this.#held.keys()) {
        if (start > this.#hashed && start < this.#hashed + length) {
          length = start - this.#hashed;
        }
      }
      scratch ??= this.#pool?.take(HASH_CHUNK_BYTES) ?? Buffer.allocUnsafe(HASH_CHUNK_BYTES);
      const { bytesRead } = await this.#handle.read(scratch, 0, length, this.#hashed);
      if (bytesRead === 0) {
        throw new Error(`short read while hashing ${this.digest.toString()}`);
      }
      this.#hasher.update(scratch.subarray(0, bytesRead));
      this.#hashed += bytesRead;
    }
    if (scratch !== undefined) {
      this.#pool?.give(scratch);
    }
  }

  /** The held piece holding the byte at `position`, if any. */
  #heldAt(position: number): { start: number; bytes: Buffer } | undefined {
    for (const [start, bytes] of this.#held) {
      if (position >= start && position < start + bytes.length) {
        return { start, bytes };
      }
    }
    return undefined;
  }

  /**
   * Keeps a written piece in memory, dropping hashed pieces first; false (not kept) when the
   * prefix has passed it already or it does not fit.
   */
  #hold(start: number, bytes: Buffer): boolean {
    if (
      bytes.length > HELD_BYTES ||
      start + bytes.length <= this.#hashed ||
      this.#heldAt(start) !== undefined
    ) {
      return false;
    }
    this.#makeRoom(bytes.length);
    if (this.#heldBytes + bytes.length > HELD_BYTES) {
      return false;
    }
    this.#held.set(start, bytes);
    this.#heldBytes += bytes.length;
    return true;
  }

  /** Starts a block for `append`, held (readable) from the start; makes room for it first. */
  #newTail(): { start: number; bytes: Buffer; filled: number } {
    const bytes =
      this.#pool?.take(APPEND_BLOCK_BYTES) ?? Buffer.allocUnsafeSlow(APPEND_BLOCK_BYTES);
    this.#makeRoom(bytes.length, APPEND_HELD_BYTES);
    const tail = { start: this.#available, bytes, filled: 0 };
    this.#tail = tail;
    this.#held.set(tail.start, bytes);
    this.#heldBytes += bytes.length;
    return tail;
  }

  /** Writes the block `append` filled (or the part filled, at the end); it stays held. */
  async #flushTail(): Promise<void> {
    const tail = this.#tail;
    if (tail === undefined) {
      return;
    }
    this.#tail = undefined;
    await this.#writeAll(tail.bytes.subarray(0, tail.filled), tail.start);
  }

  /** Drops hashed pieces, oldest first, until `bytes` more fit in `budget` (or none can go). */
  #makeRoom(bytes: number, budget = HELD_BYTES): void {
    for (const [offset, held] of this.#held) {
      if (this.#heldBytes + bytes <= budget) {
        return;
      }
      if (offset + held.length <= this.#hashed && held !== this.#tail?.bytes) {
        this.#held.delete(offset);
        this.#heldBytes -= held.length;
        this.#pool?.give(held);
      }
    }
  }

  #dropHeld(): void {
    this.#tail = undefined;
    for (const held of this.#held.values()) {
      this.#pool?.give(held);
    }
    this.#held.clear();
    this.#heldBytes = 0;
  }

  /**
   * Writes all of `chunk` at `position`. A write that fails (a full disk, an I/O error) fails
   * the download: it is no source's fault, and no other source could make it succeed.
   */
  async #writeAll(chunk: Uint8Array, position: number): Promise<void> {
    let offset = 0;
    try {
      while (offset < chunk.length) {
        const { bytesWritten } = await this.#handle.write(
          chunk,
          offset,
          chunk.length - offset,
          position + offset,
        );
        offset += bytesWritten;
      }
    } catch (error) {
      await this.fail(error);
      throw error;
    }
  }

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) {
      wake();
    }
  }

  async #closeHandleIfIdle(): Promise<void> {
    if (this.#state !== 'running' && this.#openReaders === 0 && !this.#handleClosed) {
      this.#handleClosed = true;
      await this.#handle.close();
    }
  }
}

/** Reads bytes into a caller's buffer, so a sender can reuse a few buffers for a whole blob. */
export interface ByteCursor {
  /** Reads up to `buffer.length` bytes into `buffer`; 0 at the end. Throws if the source failed. */
  read(buffer: Buffer): Promise<number>;
  /** Releases the cursor. Idempotent. */
  close(): void;
}

/** A stream of fresh buffers read from a cursor; closing the stream closes the cursor. */
export function cursorStream(cursor: ByteCursor): Readable {
  const stream = Readable.from(
    (async function* () {
      for (;;) {
        const buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
        const bytes = await cursor.read(buffer);
        if (bytes === 0) {
          return;
        }
        yield buffer.subarray(0, bytes);
      }
    })(),
    { objectMode: false },
  );
  stream.once('close', () => cursor.close());
  return stream;
}

/**
 * Fills a download from a body streamed in order (an origin response), then verifies and
 * commits it. Never throws: the outcome is the download's state.
 */
export async function fillInOrder(
  download: BlobDownload,
  body: AsyncIterable<Uint8Array>,
  store: FsContentStore,
  onBytes: (bytes: number) => void,
): Promise<DownloadState> {
  try {
    for await (const chunk of body) {
      await download.append(chunk);
      onBytes(chunk.length);
    }
  } catch (error) {
    await download.fail(error);
    return download.state;
  }
  return download.finish(store);
}
