/**
 * Lets a repeated warning through at most once per interval, and says how many were held
 * back since: failures that come in bursts (an overloaded replica, a peer sending garbage)
 * stay visible at `warn` without flooding the log. Pure: the clock is passed in.
 */
export class LogGate {
  readonly #intervalMs: number;
  #lastMs = Number.NEGATIVE_INFINITY;
  #held = 0;

  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
  }

  /**
   * Undefined while the gate is shut (the occurrence is counted); otherwise the number held
   * back since the last one let through.
   */
  pass(nowMs: number): number | undefined {
    if (nowMs - this.#lastMs < this.#intervalMs) {
      this.#held += 1;
      return undefined;
    }
    const held = this.#held;
    this.#lastMs = nowMs;
    this.#held = 0;
    return held;
  }
}
