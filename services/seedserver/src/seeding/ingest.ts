/**
 * The one pass of a seed: bytes from the origin (or the object gateway) are hashed once for
 * their piece and once for the whole blob, gathered into large writes to the local piece
 * file (a `PieceFile`); when the object gateway cannot take the local file itself, the
 * pieces are read back from it and streamed on to the gateway as they land, at its pace.
 */
import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';

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
 * The object gateway's copy of a blob being seeded from the origin, streamed from the seed's
 * own file as its pieces land there (`SeedBlob.untilReady`, then one read of each piece, mostly
 * from the page cache). The upload trails the ingest at the gateway's own pace and never holds
 * it back: a gateway slower than the origin (a remote bucket, a busy MinIO) or gone quiet costs
 * the agents nothing, and the seed reads the origin at the origin's pace. Before, the ingest
 * handed each chunk to the gateway and waited for it to take it: the seed went at the
 * gateway's pace, and one that took nothing was left behind after a wait.
 *
 * The store verifies the bytes again and stores nothing unless they match; `abort` ends the
 * upload when the seed fails. The blob is marked in use until the upload ends (not evicted,
 * its file kept open).
 */
export class GatewayUpload {
  readonly #done: Promise<void>;
  /** Ends the upload: the seed's signal (linked by hand), or the seed's failure. */
  readonly #upload = new AbortController();

  constructor(store: BlobStore, blob: SeedBlob, signal: AbortSignal) {
    const upload = this.#upload;
    const onAbort = (): void => upload.abort(signal.reason);
    if (signal.aborted) {
      onAbort();
    } else {
      signal.addEventListener('abort', onAbort, { once: true });
    }
    const used = blob.acquire();
    const body = Readable.from(pieceBytes(blob, upload.signal), { highWaterMark: 1 });
    this.#done = store.write(blob.digest.toString(), body, blob.size, upload.signal).finally(() => {
      signal.removeEventListener('abort', onAbort);
      if (used) {
        blob.release();
      }
    });
    // Its failure is for whoever waits on `done` (none when the seed failed first).
    this.#done.catch(() => undefined);
  }

  /**
   * The seed failed: the upload ends, and the gateway stores nothing. Resolves once the store
   * has ended its upload (S3: aborted the multipart upload), or `waitMs` later at the latest:
   * a gateway gone quiet would hold the seed's failure notice up until the S3 client's own
   * timeout.
   */
  async abort(error: Error, waitMs: number): Promise<void> {
    this.#upload.abort(error);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#done.catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, waitMs);
      }),
    ]);
    clearTimeout(timer);
  }

  /** Settles when the gateway has stored the blob, or failed to. */
  done(): Promise<void> {
    return this.#done;
  }
}

/** The blob's pieces in order, each read from its file once it is there. */
async function* pieceBytes(blob: SeedBlob, signal: AbortSignal): AsyncGenerator<Buffer> {
  for (let index = 0; index < blob.count; index += 1) {
    await blob.untilReady(index + 1, signal);
    const piece = await blob.readPiece(index);
    if (piece === undefined) {
      throw new Error(
        `${blob.digest.toString()}: piece ${String(index)} is gone (the blob was dropped)`,
      );
    }
    yield piece;
  }
}
