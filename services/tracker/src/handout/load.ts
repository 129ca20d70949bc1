/**
 * Upload load as the tracker sees it: how many hand-outs named each peer recently. The
 * tracker cannot see peers' real traffic, but every peer it hands out is about to be asked
 * for pieces, so recent hand-outs are a good, free proxy.
 */

/** Number of buckets a window is cut into; the window slides by one bucket at a time. */
const BUCKETS_PER_WINDOW = 10;

interface Bucket {
  /** `floor(time / bucketMs)` of the hand-outs counted here. */
  readonly index: number;
  count: number;
}

/**
 * Counts hand-outs per peer over a sliding window. Pure: callers pass the time, so tests and
 * replays are deterministic. Memory is one small array per recently handed-out peer.
 */
export class LoadTracker {
  readonly #bucketMs: number;
  readonly #peers = new Map<string, Bucket[]>();

  /** @param windowMs length of the window, in ms (the tracker's default is 10 000). */
  constructor(windowMs: number) {
    this.#bucketMs = Math.max(1, Math.ceil(windowMs / BUCKETS_PER_WINDOW));
  }

  /** Counts one hand-out of `peer` at `nowMs` (ms since the epoch). */
  record(peer: string, nowMs: number): void {
    const index = Math.floor(nowMs / this.#bucketMs);
    const buckets = this.#live(peer, index) ?? [];
    // Kept in time order, so that the expired ones are always a prefix: a hand-out from a
    // clock that stepped back goes into its own bucket, not the latest (which may lie ahead
    // of the clock for a while, and would keep every count put into it until then).
    let at = buckets.length;
    while (at > 0 && (buckets[at - 1]?.index ?? index) > index) {
      at -= 1;
    }
    const bucket = buckets[at - 1];
    if (bucket?.index === index) {
      bucket.count += 1;
    } else {
      buckets.splice(at, 0, { index, count: 1 });
    }
    this.#peers.set(peer, buckets);
  }

  /** Hand-outs of `peer` within the window ending at `nowMs`. */
  load(peer: string, nowMs: number): number {
    const buckets = this.#live(peer, Math.floor(nowMs / this.#bucketMs));
    let total = 0;
    for (const bucket of buckets ?? []) {
      total += bucket.count;
    }
    return total;
  }

  /** Forgets peers with no hand-out in the window ending at `nowMs`. */
  prune(nowMs: number): void {
    const index = Math.floor(nowMs / this.#bucketMs);
    for (const peer of [...this.#peers.keys()]) {
      this.#live(peer, index);
    }
  }

  /** Peers with hand-outs still counted. */
  get size(): number {
    return this.#peers.size;
  }

  /** The peer's buckets inside the window ending in bucket `index`, dropping older ones. */
  #live(peer: string, index: number): Bucket[] | undefined {
    const buckets = this.#peers.get(peer);
    if (buckets === undefined) {
      return undefined;
    }
    // Buckets are in time order: the expired ones are a prefix, usually empty (no copy then,
    // since a want looks up the load of every holder it ranks).
    const oldest = index - BUCKETS_PER_WINDOW + 1;
    let expired = 0;
    while (expired < buckets.length && (buckets[expired]?.index ?? oldest) < oldest) {
      expired += 1;
    }
    if (expired === buckets.length) {
      this.#peers.delete(peer);
      return undefined;
    }
    if (expired > 0) {
      buckets.splice(0, expired);
    }
    return buckets;
  }
}
