/**
 * Errors of the blob stores, in the style of nats.js's jserrors.ts: a name, a stable `code`
 * that callers branch on, and the `cause` (a disk or S3 error) kept for the log. The HTTP
 * layer maps `status` and `code` to its answer (NOT_FOUND becomes the OCI BLOB_UNKNOWN).
 *
 * A caller's own AbortSignal is not turned into one of these: when it fires, the call rejects
 * with `signal.reason`, so `isAbortError` from `@shoal/runtime` recognises it.
 */
import { ShoalError } from '@shoal/runtime';

/** The stable codes of `BlobStoreError`, with the HTTP status each maps to. */
export const BLOB_STORE_ERROR_STATUS = {
  /** The digest text is not a digest Shoal can verify (sha256 or sha512, lowercase hex). */
  DIGEST_INVALID: 400,
  /** Some other argument is wrong: a size, a range, a metadata name or document. */
  INVALID_ARGUMENT: 400,
  /** No blob is stored under that digest. */
  NOT_FOUND: 404,
  /** The range starts at or past the end of the blob. */
  RANGE_NOT_SATISFIABLE: 416,
  /** The written content does not hash to the digest; nothing was stored. */
  DIGEST_MISMATCH: 400,
  /** The written content is not the announced number of bytes; nothing was stored. */
  SIZE_MISMATCH: 400,
  /** The disk or the object gateway did not answer within the store's timeout. */
  TIMEOUT: 504,
  /** The disk or the object gateway failed; `cause` says how. */
  STORAGE_FAILED: 503,
} as const;

export type BlobStoreErrorCode = keyof typeof BLOB_STORE_ERROR_STATUS;

/** Any failure of a blob store other than the caller's own abort. */
export class BlobStoreError extends ShoalError<BlobStoreErrorCode> {
  override readonly name: string = 'BlobStoreError';

  constructor(code: BlobStoreErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(code, BLOB_STORE_ERROR_STATUS[code], message, options);
  }
}

/** The blob asked for is not stored (code NOT_FOUND). */
export class BlobNotFoundError extends BlobStoreError {
  override readonly name: string = 'BlobNotFoundError';
  /** The digest that was asked for, `algorithm:hex`. */
  readonly digest: string;

  constructor(digest: string, options: { cause?: unknown } = {}) {
    super('NOT_FOUND', `blob ${digest} is not stored`, options);
    this.digest = digest;
  }
}

/** True for a BlobStoreError with the given code. */
export function isBlobStoreError(
  error: unknown,
  code?: BlobStoreErrorCode,
): error is BlobStoreError {
  return error instanceof BlobStoreError && (code === undefined || error.code === code);
}
