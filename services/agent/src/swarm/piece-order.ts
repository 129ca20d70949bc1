/**
 * The order in which a download asks for the pieces it lacks: pure, so it is tested alone.
 *
 * Pieces in a window just past the verified prefix come first: clients read a blob in order,
 * and a download keeps the pieces that arrive ahead of its prefix in memory (for the whole-blob
 * hash and for readers) only as far as that window reaches. Within the window and past it,
 * rarest first (fewest holders); among equals, in an order of this agent's own (`rank`), so
 * agents starting together take different pieces from the seed and then trade them.
 */

/** A piece that could be asked for now. */
export interface PieceCandidate {
  readonly index: number;
  /** Peers known to hold it. */
  readonly holders: number;
  /** This agent's own tie-break, e.g. a random number drawn per round. */
  readonly rank: number;
}

/**
 * The first piece index past the window: `prefix` (the first missing piece) plus as many
 * pieces as `heldBytes` holds, and at least `concurrency`.
 */
export function windowEnd(
  prefix: number,
  pieceSize: number,
  heldBytes: number,
  concurrency: number,
): number {
  return prefix + Math.max(concurrency, Math.floor(heldBytes / pieceSize));
}

/** Sorts `candidates` in place into the order to ask for them, and returns them. */
export function orderPieces<T extends PieceCandidate>(candidates: T[], end: number): T[] {
  return candidates.sort(
    (a, b) =>
      Number(a.index >= end) - Number(b.index >= end) || a.holders - b.holders || a.rank - b.rank,
  );
}

/**
 * Whether a piece in flight since `startedMs` is late enough, at `nowMs`, for the endgame to
 * ask a second peer for it: past `factor` times the download's typical piece time
 * (`typicalMs`, undefined before any piece arrived) and never before `minMs`. On a slow link a
 * second copy of every piece at the tail takes the link's time from the first copies and is
 * thrown away when they land; asked only for a late piece, it pays off.
 */
export function endgameLate(
  startedMs: number,
  nowMs: number,
  typicalMs: number | undefined,
  factor: number,
  minMs: number,
): boolean {
  return nowMs - startedMs >= Math.max(minMs, factor * (typicalMs ?? 0));
}

/** The typical piece time after one more sample: a moving average weighing the new one 1/8. */
export function nextTypicalMs(typicalMs: number | undefined, sampleMs: number): number {
  return typicalMs === undefined ? sampleMs : typicalMs + (sampleMs - typicalMs) / 8;
}
