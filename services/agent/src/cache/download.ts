/**
 * Blob downloads in progress, shared by every request for the same digest.
 *
 * A download writes the upstream body to a temp file while hashing it; readers follow the
 * file as it grows, so memory is bounded by the chunks in flight whatever the blob size.
 * No response is completed with unverified bytes: until the whole blob has been verified,
 * a reader withholds the last byte of its response, and if verification fails the reader
 * throws, which aborts the client's response instead of completing it.
 */
import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';

import { DigestHasher, type Digest } from '@shoal/proto';
import { ShoalError } from '@shoal/runtime';

import type { FsContentStore } from './content-store.js';

/** Bytes read from the temp file per chunk handed to a client. */
const READ_CHUNK_BYTES = 64 * 1024;

export type DownloadState = 'running' | 'verified' | 'failed';

/** Why a download failed: the content did not match its digest or announced size. */
export class ContentMismatchError extends ShoalError<'DIGEST_MISMATCH' | 'SIZE_MISMATCH'> {
  override readonly name = 'ContentMismatchError';
}

export class BlobDownload {
  readonly digest: Digest;
  /** Size announced by the source (Content-Length), when it announced one. */
  readonly size: number | undefined;
  #state: DownloadState = 'running';
  #error: Error | undefined;
  #written = 0;
  #waiters: (() => void)[] = [];
  #openReaders = 0;
  #handleClosed = false;
  readonly #handle: FileHandle;
  readonly #tempPath: string;
  /** Resolves once the download has settled, verified or failed. */
  readonly settled: Promise<DownloadState>;
  #settle: (state: DownloadState) => void = () => undefined;

  constructor(
    digest: Digest,
    size: number | undefined,
    temp: { path: string; handle: FileHandle },
  ) {
    this.digest = digest;
    this.size = size;
    this.#tempPath = temp.path;
    this.#handle = temp.handle;
    this.settled = new Promise((resolve) => {
      this.#settle = resolve;
    });
  }

  get state(): DownloadState {
    return this.#state;
  }

  get written(): number {
    return this.#written;
  }

  /**
   * Copies `body` to disk, verifies it and commits it to `store`. Never throws: the outcome
   * is the download's state. `onBytes` counts bytes as they arrive.
   */
  async run(
    body: AsyncIterable<Uint8Array>,
    store: FsContentStore,
    onBytes: (bytes: number) => void,
  ): Promise<DownloadState> {
    const hasher = new DigestHasher(this.digest.algorithm);
    try {
      for await (const chunk of body) {
        hasher.update(chunk);
        await this.#writeAll(chunk);
        onBytes(chunk.length);
        if (this.size !== undefined && this.#written > this.size) {
          break;
        }
        this.#wake();
      }
      if (this.size !== undefined && this.#written !== this.size) {
        throw new ContentMismatchError(
          'SIZE_MISMATCH',
          502,
          `${this.digest.toString()}: expected ${this.size} bytes, received ${this.#written}`,
        );
      }
      const actual = hasher.digest();
      if (actual.toString() !== this.digest.toString()) {
        throw new ContentMismatchError(
          'DIGEST_MISMATCH',
          502,
          `content received for ${this.digest.toString()} hashes to ${actual.toString()}`,
        );
      }
      await this.#handle.sync();
      await store.commit(this.#tempPath, this.digest, this.#written);
      this.#state = 'verified';
    } catch (error) {
      this.#state = 'failed';
      this.#error = error instanceof Error ? error : new Error(String(error));
      await unlink(this.#tempPath).catch(() => undefined);
    }
    this.#wake();
    this.#settle(this.#state);
    await this.#closeHandleIfIdle();
    return this.#state;
  }

  /** The error a failed download ended with. */
  get error(): Error | undefined {
    return this.#error;
  }

  /**
   * A reader of the bytes `[start, end)` as they arrive (`end` defaults to the whole blob),
   * or undefined when the download has settled and released its file: read the store then.
   * The final byte is yielded only once the whole blob verified; a failed download throws.
   */
  openReader(start: number, end = this.size ?? Number.POSITIVE_INFINITY): Readable | undefined {
    if (this.#handleClosed) {
      return undefined;
    }
    // Counted now, not when the stream first reads, so the file stays open for it; released
    // when the stream closes for any reason (end, error, client gone before the first read).
    this.#openReaders += 1;
    const stream = Readable.from(this.#read(start, end), { objectMode: false });
    stream.once('close', () => {
      this.#openReaders -= 1;
      void this.#closeHandleIfIdle();
    });
    return stream;
  }

  async *#read(start: number, end: number): AsyncGenerator<Buffer> {
    let position = start;
    for (;;) {
      if (this.#state === 'failed') {
        throw this.#error ?? new Error('download failed');
      }
      const target = this.#state === 'verified' ? Math.min(end, this.#written) : end;
      if (position >= target) {
        return;
      }
      // Hold back the response's final byte until verification is done.
      const limit = this.#state === 'verified' ? target : Math.min(this.#written, target - 1);
      if (position >= limit) {
        await this.#changed();
        continue;
      }
      const length = Math.min(limit - position, READ_CHUNK_BYTES);
      const buffer = Buffer.allocUnsafe(length);
      const { bytesRead } = await this.#handle.read(buffer, 0, length, position);
      if (bytesRead === 0) {
        throw new Error(`short read at ${position} of ${this.digest.toString()}`);
      }
      position += bytesRead;
      yield buffer.subarray(0, bytesRead);
    }
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const { bytesWritten } = await this.#handle.write(
        chunk,
        offset,
        chunk.length - offset,
        this.#written + offset,
      );
      offset += bytesWritten;
    }
    this.#written += chunk.length;
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
