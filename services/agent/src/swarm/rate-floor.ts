/**
 * When to give up on a piece request that is still moving: only when it moves slower than a
 * floor. A fixed time per piece abandons pieces on a healthy but slow or busy link (the bytes
 * already sent are thrown away and sent again by someone else); a silent connection is caught
 * by the idle timeout on the socket instead.
 */

export interface RateFloorSettings {
  /**
   * Grace at the start, in ms: connecting, and waiting for the server's turn (a seed server
   * answers once its upload budget allows), count against nothing.
   */
  readonly graceMs: number;
  /** Slowest average rate accepted after the grace, in bytes/s; 0: no floor. */
  readonly minBytesPerSecond: number;
}

/**
 * Tracks one request's bytes against the line `minBytesPerSecond × (elapsed − grace)`: the
 * request is too slow once what it has received falls below that line. Time comes from `now`
 * (ms), so tests drive it with their own clock.
 */
export class RateFloor {
  readonly #settings: RateFloorSettings;
  readonly #now: () => number;
  readonly #started: number;
  #received = 0;

  constructor(settings: RateFloorSettings, now: () => number = Date.now) {
    this.#settings = settings;
    this.#now = now;
    this.#started = now();
  }

  /** Counts bytes received. */
  record(bytes: number): void {
    this.#received += bytes;
  }

  /** Bytes received so far. */
  get received(): number {
    return this.#received;
  }

  /** True when the request has fallen below the floor. */
  tooSlow(): boolean {
    return this.msUntilTooSlow() <= 0;
  }

  /**
   * How long, in ms, until the request falls below the floor if no more bytes arrive; the
   * time to look again. Infinity without a floor.
   */
  msUntilTooSlow(): number {
    const { graceMs, minBytesPerSecond } = this.#settings;
    if (minBytesPerSecond <= 0) {
      return Number.POSITIVE_INFINITY;
    }
    const deadline = this.#started + graceMs + (this.#received * 1000) / minBytesPerSecond;
    return deadline - this.#now();
  }
}

/**
 * Aborts `controller` with `error()` once `floor` says the request is too slow, looking only
 * when that could first be true (no timer work per byte). Returns the function that stops
 * watching.
 */
export function watchRateFloor(
  floor: RateFloor,
  controller: AbortController,
  error: () => Error,
): () => void {
  let timer: NodeJS.Timeout | undefined;
  const look = (): void => {
    const wait = floor.msUntilTooSlow();
    if (wait <= 0) {
      controller.abort(error());
      return;
    }
    if (Number.isFinite(wait)) {
      // Past the largest delay setTimeout takes, it fires at once: look again then.
      timer = setTimeout(look, Math.min(Math.ceil(wait), 2 ** 31 - 1));
      timer.unref();
    }
  };
  look();
  return () => clearTimeout(timer);
}
