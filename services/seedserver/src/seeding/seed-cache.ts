/**
 * The seed server's local blobs (complete or being seeded) in least-recently-used order, with
 * the bytes they take against the cache quota. Which blobs may go is the seeder's call; this
 * keeps the order and the count.
 */
import type { SeedBlob } from './seed-blob.js';

export class SeedCache {
  /** The quota, in bytes: past it the least recently used blobs are evicted. */
  readonly maxBytes: number;
  /** By digest; a Map keeps insertion order, so the first entry is the least recently used. */
  readonly #blobs = new Map<string, SeedBlob>();
  #bytes = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Bytes of every blob held, those being seeded counted at their full size. */
  get bytes(): number {
    return this.#bytes;
  }

  get size(): number {
    return this.#blobs.size;
  }

  /** The blob, without marking it used. */
  peek(digest: string): SeedBlob | undefined {
    return this.#blobs.get(digest);
  }

  /** The blob, marked as the most recently used. */
  use(digest: string): SeedBlob | undefined {
    const blob = this.#blobs.get(digest);
    if (blob !== undefined) {
      this.#blobs.delete(digest);
      this.#blobs.set(digest, blob);
    }
    return blob;
  }

  /** Adds a blob as the most recently used, replacing one of the same digest. */
  add(blob: SeedBlob): void {
    const key = blob.digest.toString();
    const previous = this.#blobs.get(key);
    if (previous !== undefined) {
      this.#bytes -= previous.size;
      this.#blobs.delete(key);
    }
    this.#blobs.set(key, blob);
    this.#bytes += blob.size;
  }

  /** Removes this very blob (not a newer one of the same digest); true when it was held. */
  delete(blob: SeedBlob): boolean {
    const key = blob.digest.toString();
    if (this.#blobs.get(key) !== blob) {
      return false;
    }
    this.#blobs.delete(key);
    this.#bytes -= blob.size;
    return true;
  }

  /** Every blob, least recently used first (a copy: the caller may delete while iterating). */
  oldestFirst(): SeedBlob[] {
    return [...this.#blobs.values()];
  }
}
