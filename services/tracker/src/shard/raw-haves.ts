/**
 * The latest have of every (blob, peer) as it came from SHOAL_SWARM, undecoded. A replica
 * decodes and applies only the haves of its own blobs; it keeps the others' bytes here so
 * that when blobs move to it (a replica died or left) it takes them over at once, from
 * memory, without reading the stream again. Held compactly (blob -> peer -> bytes, sequence
 * and time; the subject is rebuilt when a blob is loaded) and bounded on its own
 * (`SHOAL_TRACKER_MAX_KEPT_HAVES`): past the bound the stalest peer of the blob updated
 * longest ago goes first. Pure: no NATS.
 */
import { parseDigest, pieceHaveSubject } from '@shoal/proto';

import type { SwarmEvent } from '../consumers/swarm-event.js';

/** One kept have: what `SwarmEvent` holds but the subject, which (blob, peer) gives back. */
interface KeptHave {
  readonly data: Uint8Array;
  readonly seq: number;
  readonly publishedAtMs: number;
}

export class RawHaves {
  readonly #maxHaves: number;
  /**
   * blob -> peer -> its latest have. Both levels in the order of the last update (an updated
   * blob and peer move to the back), so the stalest are met first.
   */
  readonly #byBlob = new Map<string, Map<string, KeptHave>>();
  #size = 0;

  constructor(maxHaves: number) {
    this.#maxHaves = Math.max(1, maxHaves);
  }

  /** (blob, peer) haves held. */
  get size(): number {
    return this.#size;
  }

  /**
   * Keeps `event` as the latest have of (`blob`, `peer`) unless a later one is held. The
   * bytes are copied: a received message's data is a view of the connection's read buffer.
   * Returns how many haves were dropped to stay within the bound.
   */
  keep(blob: string, peer: string, event: SwarmEvent): number {
    let peers = this.#byBlob.get(blob);
    const current = peers?.get(peer);
    if (current !== undefined && current.seq >= event.seq) {
      return 0;
    }
    if (peers === undefined) {
      peers = new Map();
    } else {
      this.#byBlob.delete(blob);
    }
    this.#byBlob.set(blob, peers);
    if (current === undefined) {
      this.#size += 1;
    } else {
      peers.delete(peer);
    }
    peers.set(peer, {
      data: event.data.slice(),
      seq: event.seq,
      publishedAtMs: event.publishedAtMs,
    });
    let evicted = 0;
    while (this.#size > this.#maxHaves) {
      this.#evictStalest();
      evicted += 1;
    }
    return evicted;
  }

  /**
   * The haves held for `blob`, oldest first (stream order), with their subjects. None for a
   * blob that is no digest (haves on made-up subjects): applied, they would be refused.
   */
  haves(blob: string): SwarmEvent[] {
    const peers = this.#byBlob.get(blob);
    if (peers === undefined || !isDigest(blob)) {
      return [];
    }
    const events: SwarmEvent[] = [];
    for (const [peer, kept] of peers) {
      events.push({ subject: pieceHaveSubject(blob, peer), ...kept });
    }
    return events.sort((a, b) => a.seq - b.seq);
  }

  /**
   * Forgets the stream sequences of the haves held (each becomes 0, before any of a new
   * stream): the stream was made anew and its sequence started over (see `SwarmView.rebase`).
   */
  rebase(): void {
    for (const peers of this.#byBlob.values()) {
      for (const [peer, kept] of peers) {
        peers.set(peer, { ...kept, seq: 0 });
      }
    }
  }

  /** True when a have of `blob` is held. */
  has(blob: string): boolean {
    return this.#byBlob.has(blob);
  }

  /** Drops the haves published more than `maxAgeMs` before `nowMs`; returns how many. */
  expire(nowMs: number, maxAgeMs: number): number {
    let removed = 0;
    for (const [blob, peers] of this.#byBlob) {
      for (const [peer, kept] of peers) {
        if (nowMs - kept.publishedAtMs > maxAgeMs) {
          peers.delete(peer);
          removed += 1;
        }
      }
      if (peers.size === 0) {
        this.#byBlob.delete(blob);
      }
    }
    this.#size -= removed;
    return removed;
  }

  #evictStalest(): void {
    const first = this.#byBlob.entries().next();
    if (first.done === true) {
      return;
    }
    const [blob, peers] = first.value;
    const stalest = peers.keys().next();
    if (stalest.done !== true) {
      peers.delete(stalest.value);
      this.#size -= 1;
    }
    if (peers.size === 0) {
      this.#byBlob.delete(blob);
    }
  }
}

function isDigest(blob: string): boolean {
  try {
    parseDigest(blob);
    return true;
  } catch {
    return false;
  }
}
