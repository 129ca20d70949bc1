/**
 * Why the last failed run of each blob failed, for the preheat reports that ask. Bounded: a
 * registry that refuses a flood of made-up blobs, or a long run of failures, keeps only the
 * latest `capacity` notes (the oldest go first); a preheat asks right after its run.
 */

/** Notes kept by default, about 1 KiB each at most. */
const DEFAULT_CAPACITY = 10_000;

export class FailureNotes {
  readonly #capacity: number;
  /** blob -> why, oldest first (a note written again moves to the back). */
  readonly #notes = new Map<string, string>();

  constructor(capacity = DEFAULT_CAPACITY) {
    this.#capacity = Math.max(1, capacity);
  }

  get size(): number {
    return this.#notes.size;
  }

  get(blob: string): string | undefined {
    return this.#notes.get(blob);
  }

  set(blob: string, why: string): void {
    this.#notes.delete(blob);
    this.#notes.set(blob, why);
    for (const [oldest] of this.#notes) {
      if (this.#notes.size <= this.#capacity) {
        break;
      }
      this.#notes.delete(oldest);
    }
  }

  delete(blob: string): void {
    this.#notes.delete(blob);
  }
}
