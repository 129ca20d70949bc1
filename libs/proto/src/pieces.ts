/**
 * How a blob is cut into pieces, and piece-set arithmetic. The seed server and every agent
 * derive the same piece layout from the blob size alone, so a piece index means the same
 * bytes everywhere.
 *
 * Piece size policy: about 64 to 256 pieces per blob keeps enough pieces in flight for
 * parallel fetches from several peers while the hash list and have messages stay small.
 *
 *   blob size          piece size
 *   up to 64 MiB       256 KiB
 *   up to 256 MiB      1 MiB
 *   up to 1 GiB        4 MiB
 *   larger             16 MiB
 */
import type { PieceRanges } from './messages/common.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** The largest blob Shoal moves (1 TiB): 65,536 pieces of 16 MiB. */
export const MAX_BLOB_BYTES = 1024 * GiB;

/** Piece size in bytes for a blob of `size` bytes. */
export function pieceSizeFor(size: number): number {
  if (size <= 64 * MiB) {
    return 256 * KiB;
  }
  if (size <= 256 * MiB) {
    return MiB;
  }
  if (size <= GiB) {
    return 4 * MiB;
  }
  return 16 * MiB;
}

/** Number of pieces of a blob (a zero-length blob has one empty piece). */
export function pieceCount(size: number, pieceSize: number): number {
  return Math.max(1, Math.ceil(size / pieceSize));
}

/** Byte offsets `[start, end)` of piece `index`. */
export function pieceBounds(
  index: number,
  size: number,
  pieceSize: number,
): { start: number; end: number } {
  const start = index * pieceSize;
  return { start, end: Math.min(size, start + pieceSize) };
}

/** Turns a set of piece indexes into sorted, disjoint, non-adjacent ranges. */
export function toRanges(indexes: Iterable<number>): PieceRanges {
  const sorted = [...new Set(indexes)].sort((a, b) => a - b);
  const ranges: [number, number][] = [];
  for (const index of sorted) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === index) {
      last[1] = index + 1;
    } else {
      ranges.push([index, index + 1]);
    }
  }
  return ranges;
}

/** True when `index` lies in one of the ranges. */
export function rangesInclude(ranges: PieceRanges, index: number): boolean {
  return ranges.some(([start, end]) => index >= start && index < end);
}

/** Number of pieces the ranges cover. */
export function rangesSize(ranges: PieceRanges): number {
  return ranges.reduce((sum, [start, end]) => sum + (end - start), 0);
}

/** Longest piece bitmap `encodePieceBitmap` writes, in bytes: 16,384 pieces (the header's size). */
export const MAX_PIECE_BITMAP_BYTES = 2048;

/**
 * A set of piece indexes as a bitmap in base64url (piece i is bit `i % 8`, least significant
 * first, of byte `i / 8`; trailing empty bytes left out), for an HTTP header. Indexes past
 * `MAX_PIECE_BITMAP_BYTES` × 8 are left out (a set the reader takes as a hint may be partial).
 */
export function encodePieceBitmap(indexes: Iterable<number>): string {
  const limit = MAX_PIECE_BITMAP_BYTES * 8;
  const kept: number[] = [];
  let highest = -1;
  for (const index of indexes) {
    if (Number.isInteger(index) && index >= 0 && index < limit) {
      kept.push(index);
      highest = Math.max(highest, index);
    }
  }
  const bitmap = Buffer.alloc(highest < 0 ? 0 : (highest >> 3) + 1);
  for (const index of kept) {
    bitmap[index >> 3] = (bitmap[index >> 3] ?? 0) | (1 << (index & 7));
  }
  return bitmap.toString('base64url');
}

/**
 * The piece indexes of a bitmap `encodePieceBitmap` wrote, ascending; none for a missing,
 * malformed or oversized value (a hint read from the network: never an error).
 */
export function decodePieceBitmap(value: string | undefined): number[] {
  if (
    value === undefined ||
    value.length > Math.ceil((MAX_PIECE_BITMAP_BYTES * 4) / 3) ||
    !/^[A-Za-z0-9_-]*$/.test(value)
  ) {
    return [];
  }
  const bitmap = Buffer.from(value, 'base64url');
  const indexes: number[] = [];
  for (let byte = 0; byte < bitmap.length; byte += 1) {
    const bits = bitmap[byte] ?? 0;
    for (let bit = 0; bits !== 0 && bit < 8; bit += 1) {
      if ((bits & (1 << bit)) !== 0) {
        indexes.push(byte * 8 + bit);
      }
    }
  }
  return indexes;
}

/**
 * HTTP path of one piece on a peer's or the seed server's piece server:
 * `/pieces/<algorithm>/<hex>/<index>`. The answer is the piece's bytes, or 404.
 */
export function piecePath(blob: string, index: number): string {
  const colon = blob.indexOf(':');
  return `/pieces/${blob.slice(0, colon)}/${blob.slice(colon + 1)}/${index}`;
}
