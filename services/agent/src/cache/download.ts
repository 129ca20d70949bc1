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
 * The file is a `PieceFile` of `@shoal/pieces`: verified pieces and appended chunks are held in
 * memory (at most `HELD_BYTES` per download) and written in gathered writes of at least 1 MiB
 * where they are contiguous; the whole-blob hash takes them from memory when the prefix
 * reaches them, and readers following the prefix copy them from there, so a byte is read back
 * from the file only when it arrived far out of order and was dropped, or when a reader lags
 * far behind.
 *
 * No response is completed with unverified bytes: until the whole blob has verified, a reader
 * withholds the last byte of its response, and if verification fails the reader throws, which
 * aborts the client's response instead of completing it.
 */
import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';

import { PieceFile, type PieceBuffers } from '@shoal/pieces';
import type { Digest } from '@shoal/proto';
import type { UpstreamAnswer, UpstreamRegistry } from '@shoal/registry';
import { ShoalError } from '@shoal/runtime';

import type { FsContentStore } from './content-store.js';

/** Bytes per chunk of a stream made from a cursor. */
const READ_CHUNK_BYTES = 64 * 1024;
/**
 * Piece bytes kept in memory per download, for the gathered writes, the whole-blob hash and
 * readers. Pieces already hashed and written are dropped first (oldest first); past the
 * budget, pieces are written and dropped, and read back from the file when needed.
 */
export const HELD_BYTES = 8 * 1024 * 1024;
/**
 * Appended bytes (the origin path, in order) kept in memory: readers follow an in-order
 * download closely, and the hash has them already, so the write being gathered (1 MiB) and
 * the one before are enough.
 */
const APPEND_HELD_BYTES = 2 * 1024 * 1024;

export type DownloadState = 'running' | 'verified' | 'failed';

/** Why a download failed: the content did not match its digest or announced size. */
export class ContentMismatchError extends ShoalError<'DIGEST_MISMATCH' | 'SIZE_MISMATCH'> {
  override readonly name = 'ContentMismatchError';
}

/**
 * A registry and repository holding a blob, and a client's credentials for them. Downloads are
 * shared by digest alone, so the clients reading one may have come through different
 * registries: a credential is only ever sent to the registry it came with.
 */
export interface OriginSource {
  readonly registry: UpstreamRegistry;
  /** The repository, as in `/v2/<name>/blobs/...`. */
  readonly name: string;
  /** The client's Authorization header, as it came; undefined for an anonymous client. */
  readonly authorization: string | undefined;
}

/** Whether two sources are the same registry, repository and credential. */
export function sameSource(a: OriginSource, b: OriginSource): boolean {
  return (
    a.registry.host === b.registry.host && a.name === b.name && a.authorization === b.authorization
  );
}

/** Sources a download keeps: a few clients' worth, enough to outlive one revoked credential. */
const MAX_SOURCES = 4;

/**
 * What one source of a late read came to: the registry's answer (a refusal, 404, 429, 5xx), or
 * none when the registry did not answer (a network error, a timeout).
 */
export interface SourceFailure {
  readonly source: OriginSource;
  readonly answer: UpstreamAnswer | undefined;
}

/**
 * Every source a late read tried failed. The sources may be different registries and
 * repositories (downloads are shared by digest), so there is no one answer for all readers:
 * `answerFor` gives each the one its own registry gave its own credential, so nobody sees a
 * challenge, a status or a Retry-After of another client's registry or repository.
 */
export class SourcesFailedError extends ShoalError<'ORIGIN_FAILED'> {
  override readonly name = 'SourcesFailedError';
  readonly #failures: readonly SourceFailure[];

  /** `failures`: each source tried and how it failed, the download's own first. */
  constructor(failures: readonly SourceFailure[]) {
    if (failures.length === 0) {
      throw new Error('SourcesFailedError needs at least one failure');
    }
    super(
      'ORIGIN_FAILED',
      502,
      `every origin source failed: ${failures
        .map((f) => `${f.source.registry.host}/${f.source.name} ${f.answer?.status ?? 'no answer'}`)
        .join(', ')}`,
    );
    this.#failures = failures;
  }

  /**
   * The answer for a reader of `source`: the one its own credential got; else, for the same
   * registry and repository, the first answer given there; undefined when its registry did
   * not answer its credential or was not asked about it (another repository's or registry's
   * answer is not its own: it should retry).
   */
  answerFor(source: OriginSource): UpstreamAnswer | undefined {
    const own = this.#failures.find((f) => sameSource(f.source, source));
    if (own !== undefined) {
      return own.answer;
    }
    return this.#failures.find(
      (f) =>
        f.answer !== undefined &&
        f.source.registry.host === source.registry.host &&
        f.source.name === source.name,
    )?.answer;
  }
}

/** A source offered to a download; `withdraw` takes it back (its reader left). Idempotent. */
export interface OfferedSource {
  withdraw(): void;
}

/** How the seed server's signed record may spare a download its whole-blob hash. */
export interface RecordVouch {
  /**
   * True when every byte is vouched for by a check as strong as the digest: each piece
   * verified against the hashes the seed's signed record binds.
   */
  vouched(): boolean;
  /** Settles when `vouched` may have become true (the record came): the hash then races it. */
  readonly vouching?: Promise<unknown>;
  /** How the blob was checked, told before any reader gets its last byte. */
  checked(by: 'record' | 'digest'): void;
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
  /** The file: gathered writes, bytes in memory, the whole-blob hash of the prefix. */
  readonly #file: PieceFile;
  /** `append` has started: the in-order path, with its smaller hold budget. */
  #appending = false;
  #waiters: (() => void)[] = [];
  #openReaders = 0;
  #handleClosed = false;
  /** Resolves once the download has settled, verified or failed. */
  readonly settled: Promise<DownloadState>;
  #settle: (state: DownloadState) => void = () => undefined;
  /** Resolves with the size once it is known; rejects if the download fails before that. */
  readonly sized: Promise<number>;
  #resolveSize: (size: number) => void = () => undefined;
  #rejectSize: (error: Error) => void = () => undefined;

  /**
   * Where the clients reading may read the blob at the origin, oldest first, one per reader
   * (see `offerSource`): bounded by the readers, as each withdraws its own when it leaves.
   */
  #offers: { readonly source: OriginSource }[] = [];

  /** `pool` takes back the piece buffers given to `writePiece` once they are dropped. */
  constructor(digest: Digest, temp: { path: string; handle: FileHandle }, pool?: PieceBuffers) {
    this.digest = digest;
    this.#file = new PieceFile(temp.handle, temp.path, {
      algorithm: digest.algorithm,
      heldBytes: HELD_BYTES,
      buffers: pool,
    });
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

  /**
   * Notes that a client the registry authorized for `source` reads this download. A fetch that
   * must go to the origin late (a stalled swarm) tries these after the credentials it started
   * with, which may have expired or been revoked since; kept in memory only while the client
   * reads (until it withdraws it), the newest `MAX_SOURCES`.
   */
  offerSource(source: OriginSource): OfferedSource {
    const offer = { source };
    if (this.#state === 'running') {
      this.#offers.push(offer);
    }
    return {
      withdraw: () => {
        const at = this.#offers.indexOf(offer);
        if (at !== -1) {
          this.#offers.splice(at, 1);
        }
      },
    };
  }

  /** The sources of the clients reading now, newest first, each once, `MAX_SOURCES` at most. */
  get sources(): readonly OriginSource[] {
    const sources: OriginSource[] = [];
    for (let i = this.#offers.length - 1; i >= 0 && sources.length < MAX_SOURCES; i -= 1) {
      const offer = this.#offers[i];
      if (offer !== undefined && !sources.some((s) => sameSource(s, offer.source))) {
        sources.push(offer.source);
      }
    }
    return sources;
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
   * taking them from memory; written in gathered writes of at least 1 MiB (the last one by
   * `finish`), so a socket chunk costs no write of its own. The download keeps a reference to
   * `chunk` until it is written and dropped: the caller must not reuse it. `owned`: the chunk
   * came from the download's pool and goes back to it once dropped.
   */
  async append(chunk: Uint8Array, owned = false): Promise<void> {
    if (this.#size !== undefined && this.#available + chunk.length > this.#size) {
      throw new ContentMismatchError(
        'SIZE_MISMATCH',
        502,
        `${this.digest.toString()}: more bytes than announced`,
      );
    }
    if (!this.#appending) {
      this.#appending = true;
      this.#file.holdBudget(APPEND_HELD_BYTES);
    }
    const bytes = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    // Readable (from memory) and hashed before it is written: it is in order.
    const appended = this.#written(() => this.#file.append(bytes, owned));
    this.#available += bytes.length;
    this.#wake();
    await appended;
  }

  /** Writes verified bytes at `offset` at once (the swarm path's large pieces, block by block). */
  async writeAt(offset: number, bytes: Uint8Array): Promise<void> {
    await this.#written(() => this.#file.writeThrough(offset, bytes));
  }

  /**
   * Takes a whole verified piece at `offset`: held in memory while the budget allows (see
   * `HELD_BYTES`) and written with its contiguous neighbours in one gathered write; `advance`
   * makes it readable. The download owns `bytes` from then on: the caller must not touch them
   * again (they go back to the pool).
   */
  async writePiece(offset: number, bytes: Buffer): Promise<void> {
    await this.#written(() => this.#file.put(offset, bytes, true));
  }

  /** Moves the readable prefix to `available` bytes (all written and verified). */
  advance(available: number): void {
    if (available <= this.#available) {
      return;
    }
    this.#available = available;
    // A read error while hashing is reported by `finish`, which asks for the digest.
    this.#file.advance(available);
    this.#wake();
  }

  /**
   * Stops hashing the blob as its prefix grows: the seed server's signed record vouches for
   * the piece hashes every piece is checked against (`swarm-fetch.ts`), so `finish` will not
   * need the digest. Should `finish` need it after all, it hashes what is left then (reading
   * back what is no longer in memory): slower, never wrong.
   */
  skipDigest(): void {
    this.#file.deferHash();
  }

  /** Bytes fed to the blob's hash so far: none for one the seed's record vouched for. */
  get hashedBytes(): number {
    return this.#file.hashed;
  }

  /**
   * Keeps the blob's hash `bytes` behind its prefix while a record that would spare it is
   * expected (`swarm-fetch.ts`): what the record then vouches for was never hashed, and
   * should `finish` need the digest after all it reads back at most `bytes`. 0 ends it;
   * `Infinity` stops the hash until a smaller lag is set (or `finish` needs the digest).
   */
  lagDigest(bytes: number): void {
    this.#file.lagHash(bytes);
  }

  /**
   * Checks the whole blob and commits it to `store`. Never throws. Vouched for by `vouch`
   * (the seed server's signed record, `swarm-fetch.ts`), the blob is not hashed; otherwise,
   * or without it, it is hashed and compared with its digest.
   */
  async finish(store: FsContentStore, vouch?: RecordVouch): Promise<DownloadState> {
    if (this.#state !== 'running') {
      return this.#state;
    }
    try {
      await this.#written(() => this.#file.flush());
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
      const checked = await this.#check(vouch);
      vouch?.checked(checked === 'record' ? 'record' : 'digest');
      if (checked !== 'record' && checked.toString() !== this.digest.toString()) {
        throw new ContentMismatchError(
          'DIGEST_MISMATCH',
          502,
          `content received for ${this.digest.toString()} hashes to ${checked.toString()}`,
        );
      }
      // Readers may complete their responses now: every byte is verified. Making the cache's
      // copy durable (fsync, rename) is the cache's business and need not delay them.
      this.#matched = true;
      this.#wake();
      await this.#file.sync();
      await store.commit(this.#file.path, this.digest, this.#available);
      this.#state = 'verified';
      this.#offers = [];
      this.#file.dropHeld();
      this.#wake();
      this.#settle(this.#state);
      await this.#closeHandleIfIdle();
    } catch (error) {
      await this.fail(error);
    }
    return this.#state;
  }

  /**
   * Checks the whole blob: vouched for already ('record'), or hashed (its digest, for the
   * caller to compare). When `vouch.vouching` settles before the hash is done and `vouched`
   * then holds, the hash is stopped and the blob is vouched for.
   */
  async #check(vouch: RecordVouch | undefined): Promise<'record' | Digest> {
    if (vouch?.vouched() === true) {
      return 'record';
    }
    let hashed = this.#file.digest();
    if (vouch?.vouching !== undefined) {
      // The record comes with a deferral of the hash (`skipDigest`): the stopped hash rejects
      // in a later I/O callback, after this race has seen `vouching` settle.
      const first = await Promise.race([
        hashed.then(() => 'hashed'),
        vouch.vouching.then(() => 'vouching'),
      ]);
      if (first === 'vouching') {
        if (vouch.vouched()) {
          this.#file.deferHash();
          // The hash stops at its next block; the file is committed once it has.
          await hashed.catch(() => undefined);
          return 'record';
        }
        // Deferred, yet not vouched for after all: hashed on from where it stopped.
        hashed = hashed.catch(() => this.#file.digest());
      }
    }
    return hashed;
  }

  /** Ends the download as failed: readers throw, the temp file goes. Idempotent. */
  async fail(error: unknown): Promise<void> {
    if (this.#state !== 'running') {
      return;
    }
    this.#state = 'failed';
    this.#offers = [];
    this.#file.dropHeld();
    this.#error = error instanceof Error ? error : new Error(String(error));
    this.#rejectSize(this.#error);
    await unlink(this.#file.path).catch(() => undefined);
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
    const held = this.#file.heldAt(offset);
    if (held !== undefined && offset + length <= held.start + held.bytes.length) {
      // A copy: the held buffer goes back to the pool while the caller may still send this.
      const copy = alloc(length);
      held.bytes.copy(copy, 0, offset - held.start, offset - held.start + length);
      return copy;
    }
    this.#openReaders += 1;
    try {
      // From memory where held (some of it may not be on disk yet), else from the file.
      const buffer = alloc(length);
      return (await this.#file.readFully(buffer, offset)) ? buffer : undefined;
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
          // The bytes in flight are copied from memory rather than read back from the file.
          const bytesRead = await this.#file.read(buffer, 0, length, position);
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
          // A read waiting for bytes (a stalled swarm) ends now, not at the next progress.
          this.#wake();
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
   * Runs a write of the file. A write that fails (a full disk, an I/O error) fails the
   * download: it is no source's fault, and no other source could make it succeed.
   */
  async #written(write: () => Promise<void>): Promise<void> {
    try {
      await write();
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
      await this.#file.close();
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
 * commits it. Never throws: the outcome is the download's state. `copyInto`: the body's chunks
 * are only lent (valid until the next is asked for), so each is copied into a buffer of this
 * pool (the download's own), which the download then owns and gives back once written and
 * dropped: a GiB received allocates no fresh memory.
 */
export async function fillInOrder(
  download: BlobDownload,
  body: AsyncIterable<Uint8Array>,
  store: FsContentStore,
  onBytes: (bytes: number) => void,
  copyInto?: PieceBuffers,
): Promise<DownloadState> {
  try {
    for await (const chunk of body) {
      if (copyInto === undefined) {
        await download.append(chunk);
      } else {
        const copy = copyInto.take(chunk.length);
        copy.set(chunk);
        await download.append(copy, true);
      }
      onBytes(chunk.length);
    }
  } catch (error) {
    await download.fail(error);
    return download.state;
  }
  return download.finish(store);
}
