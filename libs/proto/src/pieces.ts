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

/**
 * HTTP path of one piece on a peer's or the seed server's piece server:
 * `/pieces/<algorithm>/<hex>/<index>`. The answer is the piece's bytes, or 404.
 */
export function piecePath(blob: string, index: number): string {
  const colon = blob.indexOf(':');
  return `/pieces/${blob.slice(0, colon)}/${blob.slice(colon + 1)}/${index}`;
}
