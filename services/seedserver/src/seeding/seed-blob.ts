/**
 * One blob on the seed server's disk: being seeded (pieces arriving in order from the origin
 * or the object gateway) or complete. Pieces are served as soon as they are on disk and
 * hashed, which is what lets agents start before the origin fetch ends (cut-through).
 *
 * While being seeded its file is a `PieceFile` of `@shoal/pieces` (gathered writes of at least
 * 1 MiB, the whole-blob hash fed from the bytes in memory, crash-safe commit); the seed adds
 * the piece manifest beside it, and the bookkeeping of a cache with more blobs than files.
 *
 * A complete blob keeps its file open only while it is being read, and for `IDLE_CLOSE_MS`
 * after: the cache may hold far more blobs than a process may hold files, so an idle one closes
 * its file and opens it again for the next piece request. The pause keeps a blob that agents
 * are fetching from being closed and opened again between two of their requests: right after
 * a cold ingest every piece request of the tail paid an open and a close.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { open, rename, rm, unlink, writeFile, type FileHandle } from 'node:fs/promises';

import { PieceFile } from '@shoal/pieces';
import {
  isPieceHash,
  MAX_BLOB_BYTES,
  pieceBounds,
  pieceCount,
  pieceListDigest,
  piecesVerified,
  pieceSizeFor,
  verifyPiecesVerified,
  type Digest,
  type PiecesVerified,
} from '@shoal/proto';

/**
 * Bytes of an ingest kept in memory once written: none (agents are served from the file). The
 * write being gathered is held until it is written whatever the budget.
 */
const INGEST_HELD_BYTES = 0;

/** How long a complete blob nobody reads keeps its file open, in ms. */
export const IDLE_CLOSE_MS = 1000;

/** The piece layout and hashes of a blob, as kept beside it and in the object gateway. */
export interface PieceManifest {
  readonly size: number;
  readonly pieceSize: number;
  /** Lowercase hex sha256 of every piece, in order. */
  readonly hashes: readonly string[];
  /**
   * The signed `pieces-verified` record made when the blob matched its digest (the local
   * manifest only): published again as it is after a restart, never signed anew from a file.
   */
  readonly record?: unknown;
  /**
   * The local manifest only: the object gateway held the blob when this was written (its copy
   * made, or found there). A blob loaded without it has its copy checked for, and made.
   */
  readonly stored?: boolean;
}

/** One wait for pieces to be on disk: settled (with an error when it ends otherwise) once. */
interface ReadyWaiter {
  readonly count: number;
  settle(error?: Error): void;
}

export class SeedBlob {
  readonly digest: Digest;
  readonly size: number;
  readonly pieceSize: number;
  readonly count: number;
  readonly hashes: string[] = [];
  /**
   * The seed's signed `pieces-verified` record of the blob: made when its bytes matched the
   * digest in this process (`Announcer.verified`), or kept in the local manifest since.
   */
  record: PiecesVerified | undefined;
  /**
   * Whether the object gateway holds the blob: true once stored (or read from it), false when
   * found missing, undefined until known (a blob found on disk at start).
   */
  stored: boolean | undefined;
  /** The open file: always while being written; for a complete blob, only while in use. */
  #handle: FileHandle | undefined;
  /** The file being written, until the commit. */
  #writer: PieceFile | undefined;
  #opening: Promise<FileHandle> | undefined;
  #path: string;
  #complete = false;
  #closed = false;
  /** The local manifest's note that the gateway holds the blob, while written (never fails). */
  #noting: Promise<void> | undefined;
  #users = 0;
  /** Piece reads under way. */
  #reads = 0;
  /** Closes the file of an idle complete blob once `IDLE_CLOSE_MS` have passed. */
  #idleTimer: NodeJS.Timeout | undefined;
  /** Those waiting for pieces to be on disk (`untilReady`). */
  readonly #readyWaiters = new Set<ReadyWaiter>();

  private constructor(digest: Digest, size: number, path: string, handle: FileHandle | undefined) {
    this.digest = digest;
    this.size = size;
    this.pieceSize = pieceSizeFor(size);
    this.count = pieceCount(size, this.pieceSize);
    this.#path = path;
    this.#handle = handle;
  }

  /** A new blob to be written at `path` (a temp file). */
  static async create(digest: Digest, size: number, path: string): Promise<SeedBlob> {
    const file = await PieceFile.create(path, {
      algorithm: digest.algorithm,
      heldBytes: INGEST_HELD_BYTES,
    });
    const blob = new SeedBlob(digest, size, path, file.handle);
    blob.#writer = file;
    return blob;
  }

  /**
   * A complete blob found on disk with its piece manifest. `recordKey`: the seed's record key
   * now; the manifest's record is kept only if that key signed it (none without a key).
   */
  static async load(
    digest: Digest,
    path: string,
    manifest: PieceManifest,
    recordKey?: KeyObject,
  ): Promise<SeedBlob> {
    // Opened once to make sure the file is there and readable, and as long as the manifest
    // says; closed until it is asked for.
    const file = await open(path, 'r');
    let fileSize: number;
    try {
      fileSize = (await file.stat()).size;
    } finally {
      await file.close();
    }
    // Checked here, on the way in: the manifest was parsed from disk unchecked, and the
    // announcer publishes its size and hashes without validating its messages again (see
    // `Announcer`).
    const { size, hashes } = manifest;
    if (!Number.isSafeInteger(size) || size !== fileSize || size > MAX_BLOB_BYTES) {
      throw new Error(`piece manifest of ${digest.toString()} does not match its file's size`);
    }
    const blob = new SeedBlob(digest, size, path, undefined);
    if (
      blob.pieceSize !== manifest.pieceSize ||
      !Array.isArray(hashes) ||
      hashes.length !== blob.count
    ) {
      throw new Error(`piece manifest of ${digest.toString()} does not match its size`);
    }
    if (!hashes.every(isPieceHash)) {
      throw new Error(`piece manifest of ${digest.toString()} holds a malformed piece hash`);
    }
    blob.hashes.push(...manifest.hashes);
    // The record made when the blob verified, if it still binds exactly these hashes and the
    // key in use now signed it: a file changed since is not vouched for (the seed signs
    // nothing it read back from disk), and a record of a key since removed or rotated out is
    // not published (agents hash those blobs until the seed seeds them again).
    const record = piecesVerified.safeParse(manifest.record);
    if (
      recordKey !== undefined &&
      record.success &&
      verifyPiecesVerified(record.data, [createPublicKey(recordKey)]) &&
      record.data.blob === digest.toString() &&
      record.data.size === blob.size &&
      record.data.hashes === pieceListDigest(blob.hashes)
    ) {
      blob.record = record.data;
    }
    blob.stored = manifest.stored === true ? true : undefined;
    blob.#complete = true;
    return blob;
  }

  get complete(): boolean {
    return this.#complete;
  }

  /** Pieces on disk and hashed: `[0, ready)`. */
  get ready(): number {
    return this.hashes.length;
  }

  get manifest(): PieceManifest {
    return { size: this.size, pieceSize: this.pieceSize, hashes: [...this.hashes] };
  }

  /** The file being written (until the commit): the ingest puts the bytes there, in order. */
  get writer(): PieceFile {
    if (this.#writer === undefined) {
      throw new Error(`${this.digest.toString()} is complete: nothing more is written`);
    }
    return this.#writer;
  }

  /** Records the next pieces' hashes; the pieces are on disk. */
  piecesDone(hashes: readonly string[]): void {
    this.hashes.push(...hashes);
    for (const waiter of this.#readyWaiters) {
      if (waiter.count <= this.ready) {
        waiter.settle();
      }
    }
  }

  /**
   * Resolves once the first `count` pieces are on disk and hashed (at once if they are);
   * rejects when the blob is dropped first, or with `signal`'s reason when it fires.
   */
  untilReady(count: number, signal: AbortSignal): Promise<void> {
    if (this.ready >= count) {
      return Promise.resolve();
    }
    if (this.#closed) {
      return Promise.reject(new Error(`${this.digest.toString()} was dropped`));
    }
    if (signal.aborted) {
      return Promise.reject(signal.reason as Error);
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => waiter.settle(signal.reason as Error);
      const waiter: ReadyWaiter = {
        count,
        settle: (error) => {
          this.#readyWaiters.delete(waiter);
          signal.removeEventListener('abort', onAbort);
          if (error === undefined) {
            resolve();
          } else {
            reject(error);
          }
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#readyWaiters.add(waiter);
    });
  }

  /** Requests using the blob now (pieces being served); a blob in use is never evicted. */
  get users(): number {
    return this.#users;
  }

  /** Marks the blob in use until `release`; false when it is already closed (evicted). */
  acquire(): boolean {
    if (this.#closed) {
      return false;
    }
    this.#stopIdleTimer();
    this.#users += 1;
    return true;
  }

  release(): void {
    this.#users = Math.max(0, this.#users - 1);
    this.#parkIfIdle();
  }

  /** Moves the verified file to `finalPath` and writes its manifest (and record) beside it. */
  async commit(finalPath: string): Promise<void> {
    const local = this.#localManifest();
    await this.writer.commit(finalPath, () =>
      writeFile(`${finalPath}.pieces.json`, JSON.stringify(local)),
    );
    this.#writer = undefined;
    this.#path = finalPath;
    this.#complete = true;
    this.#parkIfIdle();
  }

  /**
   * The object gateway holds the blob: so noted, and in the local manifest of a complete blob
   * (written aside, then renamed over it), so that a restart knows its copy needs no check.
   */
  async markStored(): Promise<void> {
    this.stored = true;
    if (!this.#complete || this.#closed) {
      return;
    }
    const path = `${this.#path}.pieces.json`;
    const noting = writeFile(`${path}.tmp`, JSON.stringify(this.#localManifest())).then(() =>
      rename(`${path}.tmp`, path),
    );
    this.#noting = noting.catch(() => undefined);
    await noting;
  }

  /** The manifest kept beside the file: pieces, the seed's record, and whether it is stored. */
  #localManifest(): PieceManifest {
    return {
      ...this.manifest,
      record: this.record,
      ...(this.stored === true ? { stored: true } : {}),
    };
  }

  /** The file's path (the temp path until commit). */
  get path(): string {
    return this.#path;
  }

  /** A piece's length in bytes, or undefined when it is not on disk yet (or was dropped). */
  pieceLength(index: number): number | undefined {
    if (this.#closed || index < 0 || index >= this.ready) {
      return undefined;
    }
    const { start, end } = pieceBounds(index, this.size, this.pieceSize);
    return end - start;
  }

  /**
   * Reads a piece into `buffer` (at least the piece's length) with one read; returns the
   * filled part, or undefined when the piece is not on disk (or the blob was dropped).
   */
  async readPiece(index: number, buffer?: Buffer): Promise<Buffer | undefined> {
    const length = this.pieceLength(index);
    if (length === undefined) {
      return undefined;
    }
    const target = (buffer ?? Buffer.allocUnsafe(length)).subarray(0, length);
    if (target.length < length) {
      throw new RangeError(`a ${target.length}-byte buffer cannot hold a ${length}-byte piece`);
    }
    const start = pieceBounds(index, this.size, this.pieceSize).start;
    this.#reads += 1;
    try {
      const handle = await this.#file();
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(target, done, length - done, start + done);
        if (bytesRead === 0) {
          return undefined;
        }
        done += bytesRead;
      }
      return target;
    } finally {
      this.#reads -= 1;
      this.#parkIfIdle();
    }
  }

  /** The open file, opened again for reading when it was closed while idle. */
  #file(): Promise<FileHandle> {
    this.#stopIdleTimer();
    if (this.#handle !== undefined) {
      return Promise.resolve(this.#handle);
    }
    if (this.#closed) {
      return Promise.reject(new Error(`${this.digest.toString()} was dropped`));
    }
    this.#opening ??= open(this.#path, 'r').then(
      (handle) => {
        this.#opening = undefined;
        if (this.#closed) {
          void handle.close();
          throw new Error(`${this.digest.toString()} was dropped`);
        }
        this.#handle = handle;
        return handle;
      },
      (error: unknown) => {
        this.#opening = undefined;
        throw error;
      },
    );
    return this.#opening;
  }

  /** Closes the file of a complete blob nobody is reading, once it has stayed idle a moment. */
  #parkIfIdle(): void {
    if (!this.#idle() || this.#idleTimer !== undefined) {
      return;
    }
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      const handle = this.#handle;
      if (handle !== undefined && this.#idle()) {
        this.#handle = undefined;
        void handle.close().catch(() => undefined);
      }
    }, IDLE_CLOSE_MS);
    // An idle file never keeps the process alive.
    this.#idleTimer.unref();
  }

  /** A complete blob with its file open and nobody using it. */
  #idle(): boolean {
    return this.#handle !== undefined && this.#complete && this.#users === 0 && this.#reads === 0;
  }

  #stopIdleTimer(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
  }

  /** Whether the blob's file is open now (for tests and metrics). */
  get open(): boolean {
    return this.#handle !== undefined;
  }

  /** Drops an incomplete blob: closes and removes its file. */
  async discard(): Promise<void> {
    await this.close();
    await unlink(this.#path).catch(() => undefined);
  }

  /** Drops a complete blob from the disk (evicted): its file and its piece manifest. */
  async remove(): Promise<void> {
    await this.close();
    // A note being written (`markStored`) lands first, or it would leave its manifest behind.
    await this.#noting;
    await rm(this.#path, { force: true });
    await rm(`${this.#path}.pieces.json`, { force: true });
    await rm(`${this.#path}.pieces.json.tmp`, { force: true });
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#stopIdleTimer();
      for (const waiter of this.#readyWaiters) {
        waiter.settle(new Error(`${this.digest.toString()} was dropped`));
      }
      // Nothing written any more; the handle is closed below (it is the writer's).
      this.#writer?.dropHeld();
      this.#writer = undefined;
      const handle = this.#handle;
      this.#handle = undefined;
      await handle?.close();
    }
  }
}
