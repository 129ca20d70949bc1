/**
 * Arithmetic on piece sets written as sorted, disjoint, half-open ranges (`PieceRanges`, as
 * the message schemas enforce). A want's hand-out compares the asker's set with dozens of
 * members' sets, which in a swarm are fragmented (pieces arrive in rarest-first order): those
 * comparisons run on bitmaps, made once per set and kept while the set lives (a member's set
 * is replaced, not changed, by its next have). The swarm view makes each member's bitmap when
 * it applies the have (`pieceBitmap`) and passes it along, so the hundreds of members a want
 * visits are not looked up in a table one by one; any other set gets its bitmap on first use,
 * kept while the set lives. Sets reaching past `BITMAP_MAX_PIECES` (or the ranges asked for)
 * use a linear merge of the ranges, which never expands a set.
 */
import type { PieceRanges } from '@shoal/proto';

/**
 * Largest piece index + 1 a set may reach to get a bitmap: 16,384 pieces (16 GiB in 1 MiB
 * pieces) take 2 KiB, so even a swarm of 10,000 such members holds 20 MiB of them; an
 * announced set reaching further (a huge blob, or a peer announcing nonsense) is merged.
 */
const BITMAP_MAX_PIECES = 16_384;

/** Bitmaps of the sets compared so far, by the set's own array (sets are never mutated). */
const bitmaps = new WeakMap<PieceRanges, Uint32Array>();

/** Number of pieces in a set. */
export function countPieces(ranges: PieceRanges): number {
  let count = 0;
  for (const [start, end] of ranges) {
    count += end - start;
  }
  return count;
}

/**
 * A set's bitmap as a caller holds it next to the set (see `pieceBitmap`): undefined when it
 * has none, and the set's own bitmap is then looked up or made.
 */
export type KnownBitmap = Uint32Array | undefined;

/** A comparison of many sets with one set (`have`); see `against`. */
type Against<T, A extends unknown[] = []> = (
  held: PieceRanges,
  heldBits?: KnownBitmap,
  ...rest: A
) => T;

/**
 * A comparison of many sets with one `have`: `onBits` on the two bitmaps where both have one
 * (`have`'s looked up once, not once per set: a want's sample tests a hundred members or
 * more against the asker's set; each set's own where the caller keeps it, `heldBits`), and
 * `onRanges` on the ranges where either reaches past the bitmaps.
 */
function against<T, A extends unknown[] = []>(
  have: PieceRanges,
  onBits: (bits: Uint32Array, other: Uint32Array, ...rest: A) => T,
  onRanges: (held: PieceRanges, ...rest: A) => T,
): Against<T, A> {
  const other = bitmapOf(have);
  return (held, heldBits, ...rest) => {
    const bits = other === undefined ? undefined : (heldBits ?? bitmapOf(held));
    return bits !== undefined && other !== undefined
      ? onBits(bits, other, ...rest)
      : onRanges(held, ...rest);
  };
}

/** Number of pieces in `held` that are not in `have` (the size of `held \ have`). */
export function countMissing(held: PieceRanges, have: PieceRanges): number {
  return countMissingFrom(have)(held);
}

/** `countMissing` for one `have` and many sets (see `against`). */
export function countMissingFrom(have: PieceRanges): Against<number> {
  return against(
    have,
    (bits, other) => {
      let missing = 0;
      for (let i = 0; i < bits.length; i += 1) {
        missing += popcount((bits[i] ?? 0) & ~(other[i] ?? 0));
      }
      return missing;
    },
    (held) => {
      let missing = 0;
      forEachMissing(held, have, (start, end) => {
        missing += end - start;
        return true;
      });
      return missing;
    },
  );
}

/** True when `held` has a piece that `have` lacks. */
export function holdsMissing(held: PieceRanges, have: PieceRanges): boolean {
  return holdsMissingFrom(have)(held);
}

/** `holdsMissing` for one `have` and many sets (see `against`). */
export function holdsMissingFrom(have: PieceRanges): Against<boolean> {
  return against(
    have,
    (bits, other) => wordsHoldMissing(bits, 0, bits.length, other),
    (held) => {
      let found = false;
      forEachMissing(held, have, () => {
        found = true;
        return false;
      });
      return found;
    },
  );
}

/** `held \ have` as ranges: the pieces a holder can give an asker that lacks them. */
export function missingRanges(held: PieceRanges, have: PieceRanges): Array<[number, number]> {
  return missingRangesFrom(have)(held);
}

/**
 * Whether the bitmap in `words[base, base + length)` has a bit that `have` (a bitmap, shorter
 * or longer) lacks: a set held, tested against an asker's. Past the end of `have` the asker
 * holds nothing.
 */
export function wordsHoldMissing(
  words: Uint32Array,
  base: number,
  length: number,
  have: Uint32Array,
): boolean {
  for (let w = 0; w < length; w += 1) {
    if (((words[base + w] ?? 0) & ~(have[w] ?? 0)) !== 0) {
      return true;
    }
  }
  return false;
}

/** `missingRanges` for one `have` and many sets (see `against`). */
export function missingRangesFrom(have: PieceRanges): Against<Array<[number, number]>> {
  return against(have, differenceRanges, (held) => mergeMissing(held, have) ?? []);
}

/**
 * `missingRangesFrom`, or undefined when `held \ have` takes more than `maxRanges` ranges:
 * on bitmaps counted before any range is made, so a hand-out that names a holder's whole set
 * instead (the difference would be longer) allocates nothing for it.
 */
export function missingRangesWithin(
  have: PieceRanges,
): Against<Array<[number, number]> | undefined, [maxRanges: number]> {
  return against(
    have,
    (bits, other, maxRanges: number) =>
      countDifferenceRuns(bits, other) > maxRanges ? undefined : differenceRanges(bits, other),
    (held, maxRanges: number) => mergeMissing(held, have, maxRanges),
  );
}

/**
 * `held \ have` as ranges by a linear merge (`forEachMissing`), or undefined when it takes
 * more than `maxRanges` ranges.
 */
function mergeMissing(
  held: PieceRanges,
  have: PieceRanges,
  maxRanges = Number.POSITIVE_INFINITY,
): Array<[number, number]> | undefined {
  const found = { ranges: [] as Array<[number, number]>, over: false };
  forEachMissing(held, have, (start, end) => {
    found.over = found.ranges.length >= maxRanges;
    if (!found.over) {
      found.ranges.push([start, end]);
    }
    return !found.over;
  });
  return found.over ? undefined : found.ranges;
}

/**
 * The set as a bitmap (bit `i % 32` of word `i >> 5` for piece `i`), made on first use and
 * kept with the set; undefined for a set reaching past `BITMAP_MAX_PIECES`.
 */
export function bitmapOf(ranges: PieceRanges): Uint32Array | undefined {
  const kept = bitmaps.get(ranges);
  if (kept !== undefined) {
    return kept;
  }
  const bits = pieceBitmap(ranges);
  if (bits !== undefined) {
    bitmaps.set(ranges, bits);
  }
  return bits;
}

/**
 * The set as a bitmap (see `bitmapOf`), made now and not kept here: for a caller that keeps
 * it next to the set and passes it back (`heldBits`). Undefined for a set reaching past
 * `BITMAP_MAX_PIECES`.
 */
export function pieceBitmap(ranges: PieceRanges): Uint32Array | undefined {
  const end = ranges.at(-1)?.[1] ?? 0;
  if (end > BITMAP_MAX_PIECES) {
    return undefined;
  }
  const bits = new Uint32Array(Math.ceil(end / 32));
  for (const [from, to] of ranges) {
    for (let piece = from; piece < to;) {
      const word = piece >> 5;
      const offset = piece & 31;
      const span = Math.min(32 - offset, to - piece);
      // `span` low bits set, moved to `offset` (a whole word when span is 32).
      const mask = span === 32 ? 0xffffffff : ((1 << span) - 1) << offset;
      bits[word] = (bits[word] ?? 0) | mask;
      piece += span;
    }
  }
  return bits;
}

/**
 * The pieces set in `bits` and not in `other`, as sorted, disjoint, non-adjacent ranges: a
 * word at a time, a run of set bits at a time, so a fragmented set costs its runs, not a
 * merge of two range lists.
 */
function differenceRanges(bits: Uint32Array, other: Uint32Array): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  let last: [number, number] | undefined;
  for (let i = 0; i < bits.length; i += 1) {
    let word = ((bits[i] ?? 0) & ~(other[i] ?? 0)) >>> 0;
    // Bits of this word already looked at; `word` holds the rest, shifted down.
    let offset = 0;
    while (word !== 0) {
      const zeros = trailingZeros(word);
      word >>>= zeros;
      offset += zeros;
      // At least one, at most the bits left (the shifts brought zeros in from the top).
      const ones = trailingZeros(~word >>> 0);
      const start = (i << 5) + offset;
      if (last !== undefined && last[1] === start) {
        last[1] = start + ones;
      } else {
        last = [start, start + ones];
        ranges.push(last);
      }
      offset += ones;
      word = ones === 32 ? 0 : word >>> ones;
    }
  }
  return ranges;
}

/**
 * Number of runs of set bits in `bits` and not in `other`: the ranges `differenceRanges` would
 * make (a run crossing a word boundary counts once), without making them.
 */
function countDifferenceRuns(bits: Uint32Array, other: Uint32Array): number {
  let runs = 0;
  // The top bit of the previous word's difference: a run going on into this word.
  let carry = 0;
  for (let i = 0; i < bits.length; i += 1) {
    const word = (bits[i] ?? 0) & ~(other[i] ?? 0);
    // A run starts at a set bit whose lower neighbour is clear.
    runs += popcount(word & ~((word << 1) | carry));
    carry = word >>> 31;
  }
  return runs;
}

/** Number of zero bits below the lowest set bit of a 32-bit word; 32 for 0. */
function trailingZeros(word: number): number {
  return word === 0 ? 32 : 31 - Math.clz32(word & -word);
}

/** Number of bits set in a 32-bit word. */
function popcount(word: number): number {
  let v = word - ((word >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/**
 * Calls `visit` with each range of `held \ have` in order (merged ranges of `held` stay
 * apart), until it returns false: one linear merge of the two sorted lists.
 */
function forEachMissing(
  held: PieceRanges,
  have: PieceRanges,
  visit: (start: number, end: number) => boolean,
): void {
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
        if (!visit(cursor, end)) {
          return;
        }
        break;
      }
      if (range[0] > cursor && !visit(cursor, range[0])) {
        return;
      }
      cursor = Math.max(cursor, range[1]);
    }
  }
}
