/**
 * Errors the mirror answers with, as the OCI distribution spec's error body:
 * `{"errors":[{"code":"BLOB_UNKNOWN","message":"...","detail":...}]}`.
 */
import { OciParseError } from '@shoal/proto';
import { ShoalError } from '@shoal/runtime';

/** The spec's codes, plus distribution's RANGE_INVALID and UNAVAILABLE. */
export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'DENIED'
  | 'DIGEST_INVALID'
  | 'MANIFEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'RANGE_INVALID'
  | 'TAG_INVALID'
  | 'UNAVAILABLE'
  | 'UNSUPPORTED';

export class MirrorError extends ShoalError<OciErrorCode> {
  override readonly name = 'MirrorError';
}

/** The OCI error body for one error. */
export function ociErrorBody(code: string, message: string, detail?: unknown): string {
  return JSON.stringify({
    errors: [{ code, message, ...(detail === undefined ? {} : { detail }) }],
  });
}

/** Maps anything thrown while handling a request to a status and an OCI code. */
export function toMirrorError(error: unknown): MirrorError {
  if (error instanceof MirrorError) {
    return error;
  }
  if (error instanceof OciParseError) {
    const code = error.code === 'REFERENCE_INVALID' ? 'NAME_INVALID' : error.code;
    return new MirrorError(code, 400, error.message, { cause: error });
  }
  return new MirrorError('UNAVAILABLE', 500, 'internal error', { cause: error });
}
