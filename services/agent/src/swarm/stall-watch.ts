/**
 * When a swarm download has stalled and should read the rest from the origin: when nothing
 * has moved for the stall timeout. Moving is any piece byte received, a piece held or a hash
 * heard, not only a whole piece: on a slow link a download's requests share the link, each
 * 1 MiB piece can take longer than the timeout, and they complete together with long gaps
 * between. Counted by whole pieces, those gaps sent healthy downloads to the origin (a node at
 * 6.25 Mbit/s in a 25 Mbit/s swarm read 0.23× the image from the registry). Bytes count only
 * at the pieces' rate floor: each byte buys at most `1 / minBytesPerSecond` s of waiting, so a
 * peer that trickles (one byte every few seconds, handed out again after each give-up) cannot
 * hold a download off the origin for ever, while a slow link well above the floor never
 * stalls. Time comes from `now` (ms), so tests drive it.
 */
export class StallWatch {
  readonly #timeoutMs: number;
  readonly #now: () => number;
  /** Milliseconds of waiting one byte buys (0: any byte counts as moving now). */
  readonly #msPerByte: number;
  #lastMs: number;

  /**
   * `minBytesPerSecond`: the rate below which bytes do not keep the download from stalling
   * (the pieces' rate floor); 0 counts any byte as moving now.
   */
  constructor(timeoutMs: number, now: () => number = Date.now, minBytesPerSecond = 0) {
    this.#timeoutMs = timeoutMs;
    this.#now = now;
    this.#msPerByte = minBytesPerSecond > 0 ? 1000 / minBytesPerSecond : 0;
    this.#lastMs = now();
  }

  /** Something moved now: a piece held, a hash heard, or the download (re)started. */
  progress(): void {
    this.#lastMs = this.#now();
  }

  /** Piece bytes arrived (before their piece is whole or verified); called per socket read. */
  received(bytes: number): void {
    if (bytes <= 0) {
      return;
    }
    const now = this.#now();
    this.#lastMs =
      this.#msPerByte === 0 ? now : Math.min(now, this.#lastMs + bytes * this.#msPerByte);
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
