/**
 * The OCI distribution spec's error codes that parsing can produce. A mirror maps them to
 * the spec's error body (`{"errors":[{"code":...}]}`) and a 400.
 */
export type OciParseErrorCode =
  'DIGEST_INVALID' | 'NAME_INVALID' | 'TAG_INVALID' | 'REFERENCE_INVALID';

/** Raised for input the OCI grammar rejects; `code` is stable and safe to show to a client. */
export class OciParseError extends Error {
  override readonly name = 'OciParseError';
  readonly code: OciParseErrorCode;

  constructor(code: OciParseErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Shortens client input quoted in an error message so a hostile input cannot flood a log. */
export function clip(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
