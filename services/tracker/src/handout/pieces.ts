/**
 * Arithmetic on piece sets written as sorted, disjoint, half-open ranges (`PieceRanges`, as
 * the message schemas enforce). Everything is a linear merge: no set is ever expanded into
 * piece indexes, so a 100 000-piece blob costs as little as a 10-piece one.
 */
import type { PieceRanges } from '@shoal/proto';

/** Number of pieces in a set. */
export function countPieces(ranges: PieceRanges): number {
  let count = 0;
  for (const [start, end] of ranges) {
    count += end - start;
  }
  return count;
}

/** Number of pieces in `held` that are not in `have` (the size of `held \ have`). */
export function countMissing(held: PieceRanges, have: PieceRanges): number {
  let missing = 0;
  // Index of the first `have` range that may still overlap the current `held` range. Both
  // lists are sorted, so it only moves forward.
  let first = 0;
  for (const [start, end] of held) {
    while (first < have.length && (have[first]?.[1] ?? 0) <= start) {
      first += 1;
    }
    let cursor = start;
    for (let k = first; cursor < end; k += 1) {
      const range = have[k];
      if (range === undefined || range[0] >= end) {
        missing += end - cursor;
        break;
      }
      if (range[0] > cursor) {
        missing += range[0] - cursor;
      }
      cursor = Math.max(cursor, range[1]);
    }
  }
  return missing;
}
