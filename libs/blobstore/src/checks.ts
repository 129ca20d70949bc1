/**
 * What both stores check the same way: arguments, and the content of a blob while it streams
 * in. Internal to the package.
 */
import { DigestHasher, OciParseError, parseDigest, type Digest } from '@shoal/proto';

import { MAX_META_BYTES, type ByteRange } from './blob-store.js';
import { BlobStoreError } from './errors.js';

const META_NAME = /^[a-z0-9-]{1,64}$/;

/** Parses a digest argument; BlobStoreError DIGEST_INVALID when it is not one. */
export function blobDigest(input: string): Digest {
  try {
    return parseDigest(input);
  } catch (error) {
    if (error instanceof OciParseError) {
      throw new BlobStoreError('DIGEST_INVALID', error.message, { cause: error });
    }
    throw error;
  }
}

/** The digest algorithms a store keeps blobs under (`blobs/<algorithm>/<hex>`). */
export const DIGEST_ALGORITHMS = ['sha256', 'sha512'] as const;

/** Whether `text` is a digest a store could hold (for names found in a listing). */
export function isDigest(text: string): boolean {
  try {
    parseDigest(text);
    return true;
  } catch {
    return false;
  }
}

export function checkMetaName(name: string): void {
  if (!META_NAME.test(name)) {
    throw new BlobStoreError(
      'INVALID_ARGUMENT',
      'a metadata name is 1 to 64 characters of [a-z0-9-]',
    );
  }
}

export function checkMetaBytes(bytes: Uint8Array): void {
  if (bytes.byteLength > MAX_META_BYTES) {
    throw new BlobStoreError(
      'INVALID_ARGUMENT',
      `a metadata document is at most ${MAX_META_BYTES} bytes, not ${bytes.byteLength}`,
    );
  }
}

export function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlobStoreError('INVALID_ARGUMENT', `blob size ${size} is not a byte count`);
  }
}

export function checkRange(range: ByteRange): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new BlobStoreError(
      'INVALID_ARGUMENT',
      `range ${start}-${end} is not 0 <= start <= end in whole bytes`,
    );
  }
}

/** The range clamped to a blob of `size` bytes; RANGE_NOT_SATISFIABLE when it starts past it. */
export function clampRange(digest: Digest, range: ByteRange, size: number): ByteRange {
  if (range.start >= size) {
    throw new BlobStoreError(
      'RANGE_NOT_SATISFIABLE',
      `range ${range.start}-${range.end} starts past the end of ${digest.toString()} (${size} bytes)`,
    );
  }
  return { start: range.start, end: Math.min(range.end, size - 1) };
}

/** A chunk of a byte stream; strings mean the caller set an encoding, which a blob has not. */
export function chunkBytes(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) {
    return chunk;
  }
  if (chunk instanceof Uint8Array) {
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  throw new BlobStoreError('INVALID_ARGUMENT', 'a blob body must be a stream of bytes');
}

/**
 * Hashes and counts a blob's bytes as they stream in. `update` fails as soon as more bytes
 * arrive than announced, so an oversized body is cut off early; `finish` checks the total and
 * the digest.
 */
export class BlobVerifier {
  readonly #digest: Digest;
  readonly #size: number;
  readonly #hasher: DigestHasher;
  #received = 0;

  constructor(digest: Digest, size: number) {
    this.#digest = digest;
    this.#size = size;
    this.#hasher = new DigestHasher(digest.algorithm);
  }

  /** Bytes received so far. */
  get received(): number {
    return this.#received;
  }

  update(chunk: Uint8Array): void {
    this.#received += chunk.byteLength;
    if (this.#received > this.#size) {
      throw this.#sizeMismatch('more than');
    }
    this.#hasher.update(chunk);
  }

  finish(): void {
    if (this.#received !== this.#size) {
      throw this.#sizeMismatch(`${this.#received} bytes, not`);
    }
    const actual = this.#hasher.digest().toString();
    if (actual !== this.#digest.toString()) {
      throw new BlobStoreError(
        'DIGEST_MISMATCH',
        `content of ${this.#digest.toString()} hashes to ${actual}; not stored`,
      );
    }
  }

  #sizeMismatch(what: string): BlobStoreError {
    return new BlobStoreError(
      'SIZE_MISMATCH',
      `content of ${this.#digest.toString()} is ${what} the announced ${this.#size} bytes; not stored`,
    );
  }
}
