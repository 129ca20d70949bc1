/**
 * The `Range` header of a blob request (RFC 9110, one range of bytes). Multiple ranges are
 * not served: a blob client never asks for them.
 */
import { MirrorError } from './errors.js';

/** An inclusive byte range, as HTTP states them. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

/** Returns the requested range, `undefined` for none, or throws RANGE_INVALID (416). */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined) {
    return undefined;
  }
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  const first = match?.[1] ?? '';
  const last = match?.[2] ?? '';
  const invalid = (): MirrorError =>
    new MirrorError('RANGE_INVALID', 416, `range "${header.slice(0, 64)}" cannot be served`, {
      detail: { size },
    });
  if (match === null || (first === '' && last === '')) {
    throw invalid();
  }
  if (first === '') {
    // A suffix range: the last N bytes.
    const length = Number(last);
    if (length === 0 || size === 0) {
      throw invalid();
    }
    return { start: Math.max(0, size - length), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (start >= size || (last !== '' && Number(last) < start)) {
    throw invalid();
  }
  return { start, end };
}
