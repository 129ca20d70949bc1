/**
 * The latest have of every (blob, peer) as it came from SHOAL_SWARM, undecoded. A replica
 * decodes and applies only the haves of its own blobs; it keeps the others' bytes here so
 * that when blobs move to it (a replica died or left) it takes them over at once, from
 * memory, without reading the stream again. Bounded like the view: past `maxEntries` the
 * entry updated longest ago goes first. Pure: no NATS.
 */
import type { SwarmEvent } from '../consumers/swarm-event.js';

export class RawHaves {
  readonly #maxEntries: number;
  /** `<blob> <peer>` -> its latest have, in the order of the last update (stalest first). */
  readonly #entries = new Map<string, SwarmEvent>();
  /** blob -> the keys of its entries. */
  readonly #byBlob = new Map<string, Set<string>>();

  constructor(maxEntries: number) {
    this.#maxEntries = Math.max(1, maxEntries);
  }

  /** (blob, peer) entries held. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Keeps `event` as the latest have of (`blob`, `peer`) unless a later one is held. The
   * bytes are copied: a received message's data is a view of the connection's read buffer.
   */
  keep(blob: string, peer: string, event: SwarmEvent): void {
    const key = `${blob} ${peer}`;
    const current = this.#entries.get(key);
    if (current !== undefined && current.seq >= event.seq) {
      return;
    }
    this.#entries.delete(key);
    this.#entries.set(key, { ...event, data: event.data.slice() });
    let keys = this.#byBlob.get(blob);
    if (keys === undefined) {
      keys = new Set();
      this.#byBlob.set(blob, keys);
    }
    keys.add(key);
    for (const [stalest] of this.#entries) {
      if (this.#entries.size <= this.#maxEntries) {
        break;
      }
      this.#delete(stalest);
    }
  }

  /** The haves held for `blob`, oldest first (stream order). */
  haves(blob: string): SwarmEvent[] {
    const events: SwarmEvent[] = [];
    for (const key of this.#byBlob.get(blob) ?? []) {
      const event = this.#entries.get(key);
      if (event !== undefined) {
        events.push(event);
      }
    }
    return events.sort((a, b) => a.seq - b.seq);
  }

  /** True when a have of `blob` is held. */
  has(blob: string): boolean {
    return this.#byBlob.has(blob);
  }

  /** Drops the haves published more than `maxAgeMs` before `nowMs`; returns how many. */
  expire(nowMs: number, maxAgeMs: number): number {
    let removed = 0;
    for (const [key, event] of [...this.#entries]) {
      if (nowMs - event.publishedAtMs > maxAgeMs) {
        this.#delete(key);
        removed += 1;
      }
    }
    return removed;
  }

  #delete(key: string): void {
    this.#entries.delete(key);
    const blob = key.slice(0, key.indexOf(' '));
    const keys = this.#byBlob.get(blob);
    keys?.delete(key);
    if (keys?.size === 0) {
      this.#byBlob.delete(blob);
    }
  }
}
