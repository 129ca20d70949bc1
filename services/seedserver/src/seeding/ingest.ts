/**
 * The one pass of a seed: bytes from the origin (or the object gateway) are hashed once for
 * their piece and once for the whole blob, gathered into large writes to the local piece
 * file (a `PieceFile`), and, when the object gateway cannot take the local file itself,
 * streamed on to it as they arrive. Nothing reads the bytes back.
 */
import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';

import type { BlobStore } from '@shoal/blobstore';
import { COALESCE_BYTES } from '@shoal/pieces';
import { pieceBounds, type Digest } from '@shoal/proto';

import type { SeedBlob } from './seed-blob.js';

/** The smallest write to the piece file, in bytes: socket chunks are gathered to this. */
export { COALESCE_BYTES };
/**
 * Longest a complete piece waits for the gathered write, in ms: from a slow origin (under
 * 20 MB/s) pieces are written sooner and in smaller writes, so agents need not wait for a
 * whole MiB to arrive before they can fetch the first piece.
 */
export const HOLD_MS = 50;

/**
 * Cuts a stream, in order, into the pieces of a blob: hashes each piece and the whole blob,
 * writes the bytes with gathered writes of at least `COALESCE_BYTES` (or the rest, or what
 * has arrived once a complete piece has waited `holdMs`), and marks pieces ready only once
 * they are on disk. The first complete piece is written at once, alone: on a cold pull every
 * agent waits on it, and gathering the first MiB cost them the time that MiB took to arrive.
 */
export class PieceCutter {
  readonly #blob: SeedBlob;
  /** Bytes received so far. */
  #offset = 0;
  #piece: Hash = createHash('sha256');
  #pieceEnd: number;
  #pieceIndex = 0;
  /** Hashes of complete pieces not yet on disk (all of them end at or before `#offset`). */
  #hashes: string[] = [];
  /** When the oldest complete piece not yet on disk was cut (performance.now()). */
  #heldSince = 0;
  readonly #holdMs: number;

  /**
   * `holdMs`: longest a complete piece waits for a larger write (default `HOLD_MS`). The
   * whole-blob digest is the blob file's, of `algorithm` (the one the blob was created with).
   */
  constructor(blob: SeedBlob, algorithm: Digest['algorithm'], options: { holdMs?: number } = {}) {
    if (algorithm !== blob.digest.algorithm) {
      throw new Error(`a ${blob.digest.algorithm} blob cannot be hashed with ${algorithm}`);
    }
    this.#blob = blob;
    this.#pieceEnd = pieceBounds(0, blob.size, blob.pieceSize).end;
    this.#holdMs = options.holdMs ?? HOLD_MS;
  }

  /** Bytes received so far. */
  get received(): number {
    return this.#offset;
  }

  /**
   * Takes the next chunk; resolves once it is hashed and, when enough has gathered, written.
   * Throws (writing nothing more) when the chunk runs past the blob's size.
   */
  async push(chunk: Buffer): Promise<void> {
    const { size } = this.#blob;
    if (this.#offset + chunk.length > size) {
      throw new RangeError(`more than ${size} bytes`);
    }
    const file = this.#blob.writer;
    // A chunk may end one piece and start the next.
    let rest = chunk;
    while (rest.length > 0) {
      const take = Math.min(rest.length, this.#pieceEnd - this.#offset);
      this.#piece.update(rest.subarray(0, take));
      this.#offset += take;
      rest = rest.subarray(take);
      if (this.#offset === this.#pieceEnd) {
        this.#endPiece();
      }
    }
    // Held by reference (no copy), hashed for the whole blob at once, and written once
    // `COALESCE_BYTES` have gathered.
    await file.append(chunk, false);
    if (
      this.#hashes.length > 0 &&
      // The first piece goes out at once, alone (see the class comment).
      (file.unwritten === 0 ||
        this.#blob.ready === 0 ||
        performance.now() - this.#heldSince >= this.#holdMs)
    ) {
      await this.#flush();
    }
  }

  /**
   * Writes what is left and returns the whole blob's digest (`algorithm:hex`). The caller
   * compares it with the digest it expected and the received count with the size.
   */
  async finish(): Promise<string> {
    if (this.#blob.size === 0 && this.#pieceIndex === 0) {
      // An empty blob is one empty piece.
      this.#endPiece();
    }
    await this.#flush();
    return (await this.#blob.writer.digest()).toString();
  }

  /** Writes what has been received so far (a caller that reuses its chunks needs them out). */
  async flush(): Promise<void> {
    await this.#flush();
  }

  #endPiece(): void {
    const blob = this.#blob;
    if (this.#hashes.length === 0) {
      this.#heldSince = performance.now();
    }
    this.#hashes.push(this.#piece.digest('hex'));
    this.#piece = createHash('sha256');
    this.#pieceIndex += 1;
    this.#pieceEnd =
      this.#pieceIndex < blob.count
        ? pieceBounds(this.#pieceIndex, blob.size, blob.pieceSize).end
        : blob.size;
  }

  async #flush(): Promise<void> {
    await this.#blob.writer.flush();
    // Every complete piece ends at or before the bytes just written: they are on disk now.
    if (this.#hashes.length > 0) {
      this.#blob.piecesDone(this.#hashes);
      this.#hashes = [];
    }
  }
}

/**
 * Streams a blob's bytes to the object gateway's `write` as they arrive, with its
 * back-pressure: `push` waits while the gateway is behind. The gateway verifies the bytes
 * again and stores nothing unless they match; `abort` makes sure of that whatever they are.
 * A gateway failure does not stop the seed: later pushes are dropped and `done` rejects.
 *
 * A gateway that takes no bytes for `waitMs` while the seed waits on it (gone quiet: a frozen
 * MinIO pod, a connection left open with nothing on it) is left behind the same way,
 * `leftBehind` set: its upload is aborted at once (the parts in flight with it), the seed goes
 * on alone, and the copy is made afterwards from the local file. Before, the seed waited on
 * it until the S3 client's idle timeout (30 s), and every agent, hearing nothing, went to the
 * registry. A gateway that is only slower than the origin keeps taking bytes, and the seed
 * keeps its pace.
 */
export class GatewayTee {
  readonly #body: PassThrough;
  readonly #done: Promise<void>;
  readonly #waitMs: number;
  /** Ends the upload's requests in flight when it is given up. */
  readonly #upload = new AbortController();
  #failed = false;
  #leftBehind = false;
  /** Rejects once the upload is given up (left behind, or aborted): `done` need not wait. */
  readonly #givenUp: Promise<never>;
  #giveUp: (error: Error) => void = () => undefined;

  constructor(store: BlobStore, digest: string, size: number, signal: AbortSignal, waitMs: number) {
    // 1 MiB in the pipe; the store gathers its parts and holds those in flight besides.
    this.#body = new PassThrough({ highWaterMark: 1024 * 1024 });
    this.#waitMs = waitMs;
    // The seed's signal, linked by hand for as long as the upload runs (it outlives it).
    const upload = this.#upload;
    const onAbort = (): void => upload.abort(signal.reason);
    if (signal.aborted) {
      onAbort();
    } else {
      signal.addEventListener('abort', onAbort, { once: true });
    }
    this.#done = store.write(digest, this.#body, size, upload.signal);
    this.#done
      .catch(() => {
        this.#failed = true;
      })
      .finally(() => signal.removeEventListener('abort', onAbort));
    this.#givenUp = new Promise<never>((_resolve, reject) => {
      this.#giveUp = reject;
    });
    this.#givenUp.catch(() => undefined);
  }

  /** The gateway took no bytes for `waitMs` while the seed waited on it, and was left behind. */
  get leftBehind(): boolean {
    return this.#leftBehind;
  }

  /**
   * Hands a chunk on; waits while the gateway is behind, as long as it takes bytes: never past
   * its failure, or `waitMs` without a byte taken.
   */
  async push(chunk: Buffer): Promise<void> {
    if (this.#failed || this.#body.destroyed) {
      return;
    }
    if (this.#body.write(chunk)) {
      return;
    }
    const drained = once(this.#body, 'drain').then(() => 'drained' as const);
    const done = this.#done.then(() => 'done' as const);
    for (;;) {
      const pending = this.#pending();
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<'waited'>((resolve) => {
        timer = setTimeout(() => resolve('waited'), this.#waitMs);
      });
      let outcome: 'drained' | 'done' | 'waited' | 'failed';
      try {
        outcome = await Promise.race([drained, done, waited]).catch(() => 'failed' as const);
      } finally {
        clearTimeout(timer);
      }
      if (outcome !== 'waited') {
        return;
      }
      if (this.#pending() >= pending) {
        // Not a byte taken in all that time.
        this.#leftBehind = true;
        this.#stop(
          new Error(
            `the object gateway took no bytes for ${String(this.#waitMs)} ms (SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS): left behind`,
          ),
        );
        return;
      }
    }
  }

  /** Every byte has been handed on and verified by the seed: let the gateway finish. */
  end(): void {
    if (!this.#body.destroyed) {
      this.#body.end();
    }
  }

  /**
   * The seed failed: the gateway must store nothing. `done` settles once the store has aborted
   * the upload, or `waitMs` later at the latest (a quiet gateway would hold that abort up until
   * the S3 client's idle timeout, and the seed's failure notice with it).
   */
  abort(error: Error): void {
    this.#failed = true;
    this.#body.destroy(error);
    this.#upload.abort(error);
    const timer = setTimeout(() => this.#giveUp(error), this.#waitMs);
    timer.unref();
    this.#done.catch(() => undefined).finally(() => clearTimeout(timer));
  }

  /**
   * Settles when the gateway has stored the blob, or failed to; at once when it was left
   * behind (the store's abort of its upload goes on meanwhile).
   */
  done(): Promise<void> {
    return Promise.race([this.#done, this.#givenUp]);
  }

  /** Ends the upload with `error` at once: no more bytes go, the store aborts it. */
  #stop(error: Error): void {
    this.#failed = true;
    this.#body.destroy(error);
    this.#upload.abort(error);
    this.#giveUp(error);
  }

  /** Bytes handed on that the gateway has not taken yet. */
  #pending(): number {
    return this.#body.writableLength + this.#body.readableLength;
  }
}
