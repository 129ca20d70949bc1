/**
 * The wants a replica has pulled and not yet answered, one per (blob, asker): a newer want
 * from the same asker for the same blob replaces the one waiting, which is then answered by
 * the newer one's hand-out. A download asks again every few hundred ms for as long as it
 * lasts, so without this a replica that falls behind answers a first-in first-out backlog of
 * wants its askers have since replaced, and the backlog only grows. With it, the backlog is
 * at most one want per (blob, asker) in progress, and each answer uses the asker's latest
 * piece set. Pure: no NATS; the consumer acknowledges what `offer` says was replaced.
 */

/** What `offer` did with an item. */
export type Offer<T> =
  /** Queued at the back. */
  | { readonly outcome: 'queued' }
  /** It took the place of `replaced` (same key), keeping that one's turn. */
  | { readonly outcome: 'replaced'; readonly replaced: T }
  /** The queue is full and the key is not in it: wait for `whenSpace`, then offer again. */
  | { readonly outcome: 'full' };

export class CoalescingQueue<T> {
  readonly #capacity: number;
  /** key -> item, in the order the keys first came (a replacement keeps its key's turn). */
  readonly #items = new Map<string, T>();
  #spaceWaiters: (() => void)[] = [];
  #itemWaiters: (() => void)[] = [];

  /** `capacity`: most keys waiting at once (at least 1). */
  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
  }

  /** Items waiting. */
  get size(): number {
    return this.#items.size;
  }

  /**
   * Queues `item` under `key`. An item already waiting under the key is replaced (the newer
   * one keeps the older one's turn: its asker has waited since then); a new key is refused
   * while the queue is full.
   */
  offer(key: string, item: T): Offer<T> {
    const replaced = this.#items.get(key);
    if (replaced !== undefined) {
      this.#items.set(key, item);
      return { outcome: 'replaced', replaced };
    }
    if (this.#items.size >= this.#capacity) {
      return { outcome: 'full' };
    }
    this.#items.set(key, item);
    this.#wake(this.#itemWaiters);
    return { outcome: 'queued' };
  }

  /** Takes the item whose key came first, or undefined when none waits. */
  take(): T | undefined {
    const first = this.#items.entries().next();
    if (first.done === true) {
      return undefined;
    }
    const [key, item] = first.value;
    this.#items.delete(key);
    this.#wake(this.#spaceWaiters);
    return item;
  }

  /** Takes every waiting item, oldest first (for a replica that stops). */
  takeAll(): T[] {
    const items = [...this.#items.values()];
    this.#items.clear();
    this.#wake(this.#spaceWaiters);
    return items;
  }

  /** Resolves when a new key can be queued, or at once when `signal` aborts. */
  whenSpace(signal: AbortSignal): Promise<void> {
    return this.#until(() => this.#items.size < this.#capacity, this.#spaceWaiters, signal);
  }

  /** Resolves when an item waits, or at once when `signal` aborts. */
  whenItem(signal: AbortSignal): Promise<void> {
    return this.#until(() => this.#items.size > 0, this.#itemWaiters, signal);
  }

  #until(ready: () => boolean, waiters: (() => void)[], signal: AbortSignal): Promise<void> {
    if (ready() || signal.aborted) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        signal.removeEventListener('abort', done);
        resolve();
      };
      waiters.push(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  #wake(waiters: (() => void)[]): void {
    if (waiters.length === 0) {
      return;
    }
    // Each waiter re-checks on waking; a spurious wake only costs it one more wait.
    const woken = waiters.splice(0);
    for (const resolve of woken) {
      resolve();
    }
  }
}
