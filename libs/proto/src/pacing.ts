/**
 * How often an agent publishes wants and haves for one download: part of the protocol's
 * contract, because the control plane's cost per agent follows from it. Both are paced so
 * that the messages of one download do not grow with how long it lasts (which grows with
 * the swarm while the seed server is the only holder): haves go out as the held pieces double,
 * wants back off while the known holders still have something to give, and an agent told
 * that nobody holds the blob yet waits for the tracker's pushed hand-out instead of asking
 * again. Pure: no clock, no I/O.
 */

/**
 * Whether a have is due for a download holding `held` of `total` pieces when the last one
 * announced `announced`: at 1, 2, 4, 8 … pieces (each time the count at least doubled) and
 * once complete, so at most log2(total) + 2 haves per download, however long it takes. An
 * announcement of nothing (`held` 0 after holding pieces) is always due.
 */
export function haveDue(announced: number, held: number, total: number): boolean {
  if (held === announced) {
    return false;
  }
  if (held === 0 || held >= total) {
    return true;
  }
  return held >= 2 * announced;
}

/** Settings of a `WantPacer`, in ms. */
export interface WantPacing {
  /** The shortest gap between two wants (the agent's want interval). */
  readonly baseMs: number;
  /** The longest gap while the known holders still hold missing pieces. */
  readonly maxMs: number;
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
 * The default pacing for an agent whose want interval is `baseMs`: gaps up to 16 times it
 * (at most 30 s), and 32 times it (at most 60 s; trackers keep a waiting asker longer) while
 * waiting for a push.
 */
export function wantPacing(baseMs: number): WantPacing {
  return {
    baseMs,
    maxMs: Math.max(baseMs, Math.min(16 * baseMs, MAX_GAP_MS)),
    waitingMs: Math.max(baseMs, Math.min(32 * baseMs, MAX_WAITING_MS)),
  };
}

/**
 * When a download asks the tracker for peers. The first want goes at once. After it, the gap
 * doubles with every want, up to `maxMs`, for as long as some known holder holds a missing
 * piece (the answer would mostly repeat what the download knows, and the tracker pushes
 * fresh peers after each of the download's haves). A download that knows nobody holding a
 * missing piece (starved) asks after `baseMs`, and after twice as long each time it asks
 * again without having made progress in between (`progressed`). One whose latest hand-out
 * named no holder waits `waitingMs` for the pushed hand-out.
 */
export class WantPacer {
  readonly #pacing: WantPacing;
  #lastMs: number | undefined;
  #gapMs: number;
  #starvedGapMs: number;
  #waiting = false;

  constructor(pacing: WantPacing) {
    this.#pacing = pacing;
    this.#gapMs = pacing.baseMs;
    this.#starvedGapMs = pacing.baseMs;
  }

  /** True while the latest hand-out named no holder (the tracker will push one). */
  get waiting(): boolean {
    return this.#waiting;
  }

  /** Whether a want is due at `nowMs`; `starved`: no known holder holds a missing piece. */
  due(nowMs: number, starved: boolean): boolean {
    if (this.#lastMs === undefined) {
      return true;
    }
    const since = nowMs - this.#lastMs;
    if (this.#waiting) {
      return since >= this.#pacing.waitingMs;
    }
    return since >= this.#gap(starved);
  }

  /** When the next want is due at the latest, in ms since the epoch (now when none went yet). */
  nextDueMs(nowMs: number, starved: boolean): number {
    if (this.#lastMs === undefined) {
      return nowMs;
    }
    if (this.#waiting) {
      return this.#lastMs + this.#pacing.waitingMs;
    }
    return this.#lastMs + this.#gap(starved);
  }

  /** A want went out at `nowMs`; `starved` as for `due`. */
  sent(nowMs: number, starved = false): void {
    if (starved) {
      this.#starvedGapMs = Math.min(this.#pacing.maxMs, this.#starvedGapMs * 2);
    }
    this.#lastMs = nowMs;
    this.#gapMs = Math.min(this.#pacing.maxMs, this.#gapMs * 2);
  }

  /** The download got new pieces (a have went out): starved, it may ask soon again. */
  progressed(): void {
    this.#starvedGapMs = this.#pacing.baseMs;
  }

  #gap(starved: boolean): number {
    return starved ? Math.min(this.#starvedGapMs, this.#gapMs) : this.#gapMs;
  }

  /** A hand-out came; `namedHolder`: some peer in it holds a piece (or all of them). */
  handout(namedHolder: boolean): void {
    this.#waiting = !namedHolder;
  }
}
