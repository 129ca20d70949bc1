/**
 * A bounded map whose entries expire: least recently used entries are dropped past the bound,
 * and an expired entry is still readable as stale for a while (the fallback when the registry
 * cannot be asked). Pure logic; time comes from an injected clock.
 */

/** Milliseconds since some fixed point; `Date.now` in production, a variable in tests. */
export type Clock = () => number;

/** An entry as read: its value, and whether it is still within its time to live. */
export interface Lookup<V> {
  readonly value: V;
  readonly fresh: boolean;
  /** When the entry was stored, in clock milliseconds. */
  readonly storedAt: number;
}

interface Entry<V> {
  readonly value: V;
  readonly storedAt: number;
  readonly expiresAt: number;
}

export class TtlCache<V> {
  readonly #entries = new Map<string, Entry<V>>();
  readonly #maxEntries: number;
  readonly #staleMs: number;
  readonly #clock: Clock;

  /**
   * @param maxEntries most entries held; the least recently used goes first past it.
   * @param staleMs how long past its expiry an entry can still be read as stale, in ms.
   * @param clock the time source.
   */
  constructor(maxEntries: number, staleMs: number, clock: Clock) {
    this.#maxEntries = Math.max(1, maxEntries);
    this.#staleMs = staleMs;
    this.#clock = clock;
  }

  /** Entries held, fresh or stale. */
  get size(): number {
    return this.#entries.size;
  }

  /** Stores `value` under `key` for `ttlMs` milliseconds, replacing what was there. */
  set(key: string, value: V, ttlMs: number): void {
    const now = this.#clock();
    this.#entries.delete(key);
    this.#entries.set(key, { value, storedAt: now, expiresAt: now + ttlMs });
    // A Map iterates in insertion order: the first key is the least recently used one.
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (oldest.done === true) {
        break;
      }
      this.#entries.delete(oldest.value);
    }
  }

  /**
   * The entry under `key`, fresh or stale, marking it recently used; undefined when there is
   * none or it expired more than the stale window ago (then it is dropped).
   */
  get(key: string): Lookup<V> | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) {
      return undefined;
    }
    const now = this.#clock();
    if (now >= entry.expiresAt + this.#staleMs) {
      this.#entries.delete(key);
      return undefined;
    }
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return { value: entry.value, fresh: now < entry.expiresAt, storedAt: entry.storedAt };
  }

  /** Forgets `key`. */
  delete(key: string): void {
    this.#entries.delete(key);
  }
}
