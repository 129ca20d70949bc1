/**
 * Askers whose last hand-out named nobody holding a piece of the blob: on a cold pull the
 * first want comes before anyone holds anything (the seed server is only being asked), and
 * the asker would otherwise hear of the first holder with the answer to its next want, a
 * want interval later. When a holder appears (its have is applied), the replica that answered
 * sends each of them a new hand-out at once. At most one entry per (blob, asker), the latest;
 * entries expire after a while (the asker has asked again by then) and the oldest go first
 * when the table is full. Pure: no NATS, the clock is passed in.
 */

interface Waiting<T> {
  readonly blob: string;
  readonly item: T;
  /** Until when the entry counts, in ms since the epoch. */
  readonly untilMs: number;
}

export class WaitingAskers<T> {
  readonly #capacity: number;
  readonly #ttlMs: number;
  /** `<blob> <asker>` -> entry, oldest first (a replaced entry moves to the back). */
  readonly #entries = new Map<string, Waiting<T>>();
  /** blob -> its entries' keys. */
  readonly #byBlob = new Map<string, Set<string>>();

  /** `capacity`: most entries kept (at least 1); `ttlMs`: how long one counts. */
  constructor(capacity: number, ttlMs: number) {
    this.#capacity = Math.max(1, capacity);
    this.#ttlMs = ttlMs;
  }

  /** Entries held (expired ones count until taken or pushed out). */
  get size(): number {
    return this.#entries.size;
  }

  /** Records that `asker` waits for a holder of `blob`, replacing its earlier entry. */
  add(blob: string, asker: string, item: T, nowMs: number): void {
    const key = `${blob} ${asker}`;
    this.#delete(key);
    while (this.#entries.size >= this.#capacity) {
      const oldest = this.#entries.keys().next();
      if (oldest.done === true) {
        break;
      }
      this.#delete(oldest.value);
    }
    this.#entries.set(key, { blob, item, untilMs: nowMs + this.#ttlMs });
    let keys = this.#byBlob.get(blob);
    if (keys === undefined) {
      keys = new Set();
      this.#byBlob.set(blob, keys);
    }
    keys.add(key);
  }

  /**
   * Drops the entries expired at `nowMs` (those of blobs no holder appeared for: a seed that
   * failed, an asker that went to the origin), so they do not wait for the table to fill.
   * Returns the number dropped.
   */
  prune(nowMs: number): number {
    let pruned = 0;
    // Every entry lives as long, and a replaced one moves to the back: oldest first.
    for (const [key, entry] of this.#entries) {
      if (entry.untilMs >= nowMs) {
        break;
      }
      this.#delete(key);
      pruned += 1;
    }
    return pruned;
  }

  /** The blobs with entries (expired ones included until pruned). */
  blobs(): string[] {
    return [...this.#byBlob.keys()];
  }

  /** Removes and returns the live entries for `blob`, oldest first. */
  take(blob: string, nowMs: number): T[] {
    const keys = this.#byBlob.get(blob);
    if (keys === undefined) {
      return [];
    }
    const items: T[] = [];
    for (const key of [...keys]) {
      const entry = this.#entries.get(key);
      this.#delete(key);
      if (entry !== undefined && entry.untilMs >= nowMs) {
        items.push(entry.item);
      }
    }
    return items;
  }

  /** Removes and returns `asker`'s live entry for `blob`, if it has one. */
  takeOne(blob: string, asker: string, nowMs: number): T | undefined {
    const key = `${blob} ${asker}`;
    const entry = this.#entries.get(key);
    this.#delete(key);
    return entry !== undefined && entry.untilMs >= nowMs ? entry.item : undefined;
  }

  #delete(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) {
      return;
    }
    this.#entries.delete(key);
    const keys = this.#byBlob.get(entry.blob);
    keys?.delete(key);
    if (keys?.size === 0) {
      this.#byBlob.delete(entry.blob);
    }
  }
}
