/**
 * The role interface of the object gateway, like spegel's `pkg/store/store.go`: what the seed
 * server needs to keep verified blobs and their small metadata documents, whatever holds them.
 * `FsBlobStore` and `S3BlobStore` implement it; one conformance suite tests both.
 */
import type { Readable } from 'node:stream';

/** An inclusive byte range, as in an HTTP `Range: bytes=start-end` header. */
export interface ByteRange {
  /** First byte, counted from 0. */
  readonly start: number;
  /** Last byte, inclusive; past the end of the blob it is clamped to the last byte. */
  readonly end: number;
}

export interface BlobStat {
  /** Size of the blob in bytes. */
  readonly size: number;
}

/** A stored blob, as `list` gives it. */
export interface StoredBlob {
  /** `<algorithm>:<hex>` */
  readonly digest: string;
  /** Size in bytes. */
  readonly size: number;
  /** When it was stored, in ms since the epoch (file mtime; S3 LastModified). */
  readonly storedAt: number;
}

/**
 * Verified blobs by digest, plus small metadata documents beside each.
 *
 * Every method validates its digest (`sha256:` or `sha512:` and lowercase hex), rejecting
 * anything else with BlobStoreError DIGEST_INVALID. When the caller's `signal` fires, the call
 * rejects with `signal.reason` and leaves nothing half-stored.
 */
export interface BlobStore {
  /** Size in bytes of a stored blob, or undefined when absent. */
  stat(digest: string, signal?: AbortSignal): Promise<BlobStat | undefined>;
  /**
   * Streams the bytes [range.start, range.end] (inclusive) or the whole blob. Throws
   * BlobNotFoundError when absent and BlobStoreError RANGE_NOT_SATISFIABLE when the range
   * starts past the last byte. Never buffers the whole blob. The stream errors if `signal`
   * fires while it is being read. The caller must read the stream to its end or destroy it:
   * it holds a file or a connection until then.
   */
  read(digest: string, range?: ByteRange, signal?: AbortSignal): Promise<Readable>;
  /**
   * Stores a blob from a stream of exactly `size` bytes. The content is hashed while it
   * streams and becomes visible under `digest` only if it matches (sha256 or sha512 per the
   * digest's algorithm) and the size matches; otherwise it throws BlobStoreError code
   * DIGEST_MISMATCH / SIZE_MISMATCH and nothing is stored. Memory bounded (never holds the
   * whole blob). On failure `body` is destroyed. Writing a blob that is already stored
   * stores it again (same bytes); concurrent writes of one blob all succeed.
   */
  write(digest: string, body: Readable, size: number, signal?: AbortSignal): Promise<void>;
  /**
   * Stores a blob from a complete local file that the caller has already verified against
   * `digest` and flushed to disk (fsync), without copying its bytes: the filesystem store
   * hard-links the file into place, so one copy on disk serves both. The file must not be
   * written to afterwards. Resolves false, having stored nothing, when the store cannot link
   * it (another filesystem); the caller then streams it with `write`. Throws BlobStoreError
   * SIZE_MISMATCH when the file is not `size` bytes. Stores with no local files (S3) lack
   * this method: stream the bytes to `write` as they arrive instead.
   */
  linkVerified?(digest: string, path: string, size: number, signal?: AbortSignal): Promise<boolean>;
  /**
   * Stores a small metadata document beside a blob (e.g. its piece hashes), replacing any
   * document of that name. `name` matches [a-z0-9-]{1,64}; at most `MAX_META_BYTES` bytes.
   * The blob itself need not be stored yet.
   */
  putMeta(digest: string, name: string, bytes: Uint8Array, signal?: AbortSignal): Promise<void>;
  /** A metadata document stored by `putMeta`, or undefined when absent. */
  getMeta(digest: string, name: string, signal?: AbortSignal): Promise<Buffer | undefined>;
  /** Removes a blob and its metadata documents; removing an absent blob is not an error. */
  delete(digest: string, signal?: AbortSignal): Promise<void>;
  /**
   * Every stored blob (not the metadata documents, not writes in progress), in no particular
   * order, read a page at a time: for retention sweeps. Entries that are not blobs are skipped.
   */
  list(signal?: AbortSignal): AsyncIterable<StoredBlob>;
}

/** A BlobStore with its start-up and shutdown, as `createBlobStore` returns it. */
export interface ManagedBlobStore extends BlobStore {
  /** Prepares the store (directories, leftovers of a crash, bucket check); call once first. */
  init(signal?: AbortSignal): Promise<void>;
  /** Releases what the store holds (connections); in-flight calls should be finished first. */
  close(): Promise<void>;
}

/** The largest metadata document a store accepts, in bytes (16 MiB). */
export const MAX_META_BYTES = 16 * 1024 * 1024;
