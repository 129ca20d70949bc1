/**
 * When a swarm download has stalled and should read the rest from the origin: when nothing
 * has moved for the stall timeout. Moving is any piece byte received, a piece held or a hash
 * heard, not only a whole piece: on a slow link a download's requests share the link, each
 * 1 MiB piece can take longer than the timeout, and they complete together with long gaps
 * between. Counted by whole pieces, those gaps sent healthy downloads to the origin (a node at
 * 6.25 Mbit/s in a 25 Mbit/s swarm read 0.23× the image from the registry). A request that
 * moves too slowly is the rate floor's to give up (`rate-floor.ts`); with no request moving,
 * the bytes stop and the stall is seen. Time comes from `now` (ms), so tests drive it.
 */
export class StallWatch {
  readonly #timeoutMs: number;
  readonly #now: () => number;
  #lastMs: number;

  constructor(timeoutMs: number, now: () => number = Date.now) {
    this.#timeoutMs = timeoutMs;
    this.#now = now;
    this.#lastMs = now();
  }

  /** Something moved now: a piece held, a hash heard, or the download (re)started. */
  progress(): void {
    this.#lastMs = this.#now();
  }

  /** Piece bytes arrived (before their piece is whole or verified); called per socket read. */
  received(bytes: number): void {
    if (bytes > 0) {
      this.#lastMs = this.#now();
    }
  }

  /**
   * Time that does not count toward the stall, in ms: waiting for the operator's download
   * budget is their choice, not a stalled swarm.
   */
  exclude(ms: number): void {
    this.#lastMs += ms;
  }

  /** True once nothing has moved for longer than the timeout. */
  stalled(): boolean {
    return this.#now() - this.#lastMs > this.#timeoutMs;
  }

  /** The first moment (ms) `stalled` may say true, if nothing moves before. */
  get deadlineMs(): number {
    return this.#lastMs + this.#timeoutMs + 1;
  }
}
