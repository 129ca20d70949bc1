/**
 * How often an agent publishes wants and haves for one download: part of the protocol's
 * contract, because the control plane's cost per agent follows from it. Both are paced so
 * that the messages of one download do not grow with how long it lasts (which grows with
 * the swarm while the seed server is the only holder): haves go out as the held pieces grow
 * by steps (doubling, then every sixty-fourth of the blob), and with the next batch for a
 * piece got from a seed server (which, rationing its pieces, sends each about once: about one
 * have per piece of the blob across the whole swarm, not per agent; with rationing off, up to
 * one per piece per agent, still at most one per have interval); wants go out when the download is
 * starved, and an agent told that nobody holds the blob yet waits for the tracker's pushed
 * hand-out instead of asking again. Pure: no clock, no I/O.
 */

/** Haves a download sends at most, past its first doublings, per blob. */
const HAVE_STEPS = 64;

/**
 * Whether a have is due for a download holding `held` of `total` pieces when the last one
 * announced `announced`: at 1, 2, 4, 8 … pieces (each time the count doubled) until a step
 * is a sixty-fourth of the blob, then every sixty-fourth, and once complete: at most
 * log2(total / 64) + 66 haves per download, however long it takes, plus one for each piece
 * the download got from a seed server (the agent announces those regardless of this step).
 * Finer than doubling alone because a piece the seed server rations to a few askers reaches
 * the others only from them, once the tracker knows they hold it. An announcement of nothing
 * (`held` 0 after holding pieces) is always due.
 */
export function haveDue(announced: number, held: number, total: number): boolean {
  if (held === announced) {
    return false;
  }
  if (held === 0 || held >= total) {
    return true;
  }
  const step = Math.max(1, Math.min(announced, Math.ceil(total / HAVE_STEPS)));
  return held >= announced + step;
}

/** Settings of a `WantPacer`, in ms. */
export interface WantPacing {
  /** The shortest gap between two wants (the agent's want interval). */
  readonly baseMs: number;
  /** The gap while the known holders still hold missing pieces, and the longest one. */
  readonly maxMs: number;
  /**
   * No piece for this long counts as starved even while known holders hold missing pieces:
   * they may all refuse for now (a seed server that rations a piece to a few askers, busy
   * peers), and the peers that got those pieces are news only the tracker has.
   */
  readonly idleMs: number;
  /**
   * The gap after a hand-out that named nobody holding a piece: the tracker pushes a new
   * hand-out once a holder appears, so this want only covers a push that was lost (a
   * tracker replica that stopped).
   */
  readonly waitingMs: number;
}

/** Longest gap while holders are known, and while waiting for a push, in ms. */
const MAX_GAP_MS = 30_000;
const MAX_WAITING_MS = 60_000;

/**
 * The default pacing for an agent whose want interval is `baseMs`: 16 times it (at most
 * 30 s) while holders are known, and 32 times it (at most 60 s; trackers keep a waiting asker
 * longer) while waiting for a push.
 */
export function wantPacing(baseMs: number): WantPacing {
  return {
    baseMs,
    maxMs: Math.max(baseMs, Math.min(16 * baseMs, MAX_GAP_MS)),
    idleMs: 4 * baseMs,
    waitingMs: Math.max(baseMs, Math.min(32 * baseMs, MAX_WAITING_MS)),
  };
}

/**
 * When a download asks the tracker for peers: when it needs them, not on a clock, so that the
 * wants of a download do not grow with how long it lasts. The first want goes at once. After
 * it, the tracker that answered pushes fresh peers after each of the download's haves, so
 * while some known holder holds a missing piece the download asks again only when a have of
 * its own went unanswered for `maxMs` (that tracker stopped, or does not push). A download
 * that knows nobody holding a missing piece (starved) asks after `baseMs`, and after twice as
 * long each time it asks again without having announced progress in between (`announced`); so
 * does one that got no piece for `idleMs`. A want not yet answered holds the next one back
 * for `maxMs`, twice as long after each further unanswered one (at most `waitingMs`), so a
 * tracker that falls behind is not asked again and again. One
 * whose latest hand-out named no holder waits `waitingMs` for the pushed hand-out.
 */
export class WantPacer {
  readonly #pacing: WantPacing;
  #lastMs: number | undefined;
  #starvedGapMs: number;
  #waiting = false;
  /** When the last piece came (or the first want went), in ms since the epoch. */
  #lastPieceMs: number | undefined;
  /** True from a want until a hand-out comes. */
  #asking = false;
  /** When the first want not yet answered by a hand-out went out, in ms since the epoch. */
  #askingSinceMs: number | undefined;
  /** How long an unanswered want holds the next back: `maxMs`, doubling while unanswered. */
  #askingGapMs: number;
  /** When the oldest have not followed by a hand-out went out, in ms since the epoch. */
  #unansweredHaveMs: number | undefined;
  /** When the seed server first rationed a piece since the last want, in ms since the epoch. */
  #rationedMs: number | undefined;
  /** True once a want went out for a refusal, until the download announces progress. */
  #rationedSpent = false;

  constructor(pacing: WantPacing) {
    this.#pacing = pacing;
    this.#starvedGapMs = pacing.baseMs;
    this.#askingGapMs = pacing.maxMs;
  }

  /** True while the latest hand-out named no holder (the tracker will push one). */
  get waiting(): boolean {
    return this.#waiting;
  }

  /**
   * When the first want that no hand-out has answered yet went out (ms since the epoch), or
   * undefined when every want was answered: a tracker answers each want (a healthy one within
   * milliseconds), so one unanswered for several seconds says no tracker reads the wants now.
   */
  get unansweredSinceMs(): number | undefined {
    return this.#askingSinceMs;
  }

  /**
   * Whether a want is due at `nowMs`; `noHolder`: no known holder holds a missing piece
   * (starved, as is a download that got no piece for `idleMs`).
   */
  due(nowMs: number, noHolder: boolean): boolean {
    return nowMs >= this.nextDueMs(nowMs, noHolder);
  }

  /** Whether the download is starved at `nowMs` (see `due`). */
  starved(nowMs: number, noHolder: boolean): boolean {
    return (
      noHolder ||
      (this.#lastPieceMs !== undefined && nowMs - this.#lastPieceMs >= this.#pacing.idleMs)
    );
  }

  /**
   * When the next want is due, in ms since the epoch: `nowMs` when one is due now, infinity
   * when none is until something happens (a have, a hand-out, starving).
   */
  nextDueMs(nowMs: number, noHolder: boolean): number {
    if (this.#lastMs === undefined) {
      return nowMs;
    }
    if (this.#waiting) {
      return this.#lastMs + this.#pacing.waitingMs;
    }
    if (this.#asking) {
      // One want at a time: a tracker that is slow to answer is not asked again and again.
      return this.#lastMs + this.#askingGapMs;
    }
    const unanswered =
      this.#unansweredHaveMs === undefined
        ? Number.POSITIVE_INFINITY
        : Math.max(this.#lastMs, this.#unansweredHaveMs) + this.#pacing.maxMs;
    if (noHolder) {
      const rationed =
        this.#rationedMs === undefined
          ? Number.POSITIVE_INFINITY
          : Math.max(this.#lastMs, this.#rationedMs) + this.#pacing.baseMs;
      return Math.min(unanswered, this.#lastMs + this.#starvedGapMs, rationed);
    }
    // Idle: starved from `idleMs` after the last piece, and no sooner than its gap allows.
    const idle = Math.max(
      (this.#lastPieceMs ?? this.#lastMs) + this.#pacing.idleMs,
      this.#lastMs + this.#starvedGapMs,
    );
    return Math.min(unanswered, idle);
  }

  /** A want went out at `nowMs`; `noHolder` as for `due`. */
  sent(nowMs: number, noHolder = false): void {
    if (this.starved(nowMs, noHolder)) {
      this.#starvedGapMs = Math.min(this.#pacing.maxMs, this.#starvedGapMs * 2);
    }
    if (this.#asking) {
      this.#askingGapMs = Math.min(this.#pacing.waitingMs, this.#askingGapMs * 2);
    }
    this.#lastMs = nowMs;
    this.#lastPieceMs ??= nowMs;
    this.#asking = true;
    this.#askingSinceMs ??= nowMs;
    if (this.#rationedMs !== undefined) {
      this.#rationedSpent = true;
      this.#rationedMs = undefined;
    }
  }

  /**
   * The seed server refused a piece at `nowMs` because it has just sent it to another agent
   * (its fan-out rationing), which the tracker names once that agent announces it: starved,
   * the download asks `baseMs` after the first such refusal since its last want, however far
   * its gap has doubled. Without this, a download whose every piece the seed sent to others
   * (all of a one-piece blob: an image config) waited out a gap doubled by its first wants,
   * a second with the defaults, although the piece was on a peer within milliseconds. Once
   * per step of progress (until the next `announced`), so that a seed turning everyone away
   * for long (every upload slot taken answers the same) adds no more wants than the haves
   * do. (A piece that came meanwhile does not make it moot: it tells nothing of who got the
   * refused one, and a download that took one piece from the seed and was refused the others
   * waited out its doubled gap again.)
   */
  rationed(nowMs: number): void {
    if (!this.#rationedSpent) {
      this.#rationedMs ??= nowMs;
    }
  }

  /** The download got a new piece at `nowMs`. */
  gotPiece(nowMs: number): void {
    this.#lastPieceMs = nowMs;
  }

  /**
   * A have went out at `nowMs` (the download made progress worth announcing): starved, it
   * may ask soon again, and a hand-out is expected in answer to the have.
   */
  announced(nowMs: number): void {
    this.#starvedGapMs = this.#pacing.baseMs;
    this.#unansweredHaveMs ??= nowMs;
    this.#rationedSpent = false;
  }

  /** A hand-out came; `namedHolder`: some peer in it holds a piece (or all of them). */
  handout(namedHolder: boolean): void {
    this.#waiting = !namedHolder;
    this.#asking = false;
    this.#askingSinceMs = undefined;
    this.#askingGapMs = this.#pacing.maxMs;
    this.#unansweredHaveMs = undefined;
  }
}
