/**
 * Work drawn from a backlog gives the event loop back every few milliseconds. A consumer's
 * iterator hands over every message it has buffered without a break in between (each step is
 * a promise already resolved), so a burst of thousands of messages otherwise runs as one long
 * turn, and whatever else the process does waits behind it: at 1,000 virtual agents a tracker
 * replica applying a burst of haves left wants unanswered for 1-4 s (`bench/README.md`,
 * "Wants answered between haves").
 */
import { setImmediate } from 'node:timers/promises';

/** Work time after which a backlog's loop yields to the event loop, in ms. */
export const EVENT_LOOP_SLICE_MS = 5;

/**
 * Adds up the time a loop's steps take (the clock between a step's `start` and its `after`,
 * awaits inside the step included); once it reaches a slice, `after` yields (one
 * `setImmediate`: pending I/O, timers and other loops run) and the count starts again. The
 * time between steps is not counted, so a loop that waits for its next item does not yield
 * for the wait; the count is kept across such waits, so the first step after one may yield
 * early, which costs one `setImmediate`.
 */
export class EventLoopSlice {
  readonly #sliceMs: number;
  readonly #now: () => number;
  #worked = 0;

  /** `now`: a clock in ms (default `performance.now`); tests pass their own. */
  constructor(sliceMs: number = EVENT_LOOP_SLICE_MS, now: () => number = () => performance.now()) {
    this.#sliceMs = sliceMs;
    this.#now = now;
  }

  /** The clock's time, to pass to `after` when the step is done. */
  start(): number {
    return this.#now();
  }

  /** A step that began at `startedAt` is done: yields when the slice is used up. */
  async after(startedAt: number): Promise<void> {
    this.#worked += this.#now() - startedAt;
    if (this.#worked < this.#sliceMs) {
      return;
    }
    this.#worked = 0;
    await setImmediate();
  }
}
