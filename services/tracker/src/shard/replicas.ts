/**
 * The live tracker replicas and which of them owns a blob. Every replica hears the others'
 * heartbeats and gives each blob to one live replica by rendezvous hashing of the blob digest
 * over their ids, so replicas that hear the same set agree without talking, and a replica
 * that dies or joins moves only its own share of the blobs. This replica always counts
 * itself live: a replica that has heard nobody owns everything (a replica that is unsure
 * serves). Pure: no NATS, the clock is passed in.
 */

import { ClockOffsets } from './clock-offsets.js';

/** Most blob owners remembered per membership (past it the cache starts again). */
const OWNER_CACHE_MAX = 100_000;

/** FNV-1a over a string's UTF-16 code units, then murmur3's finaliser for an even spread. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The member that owns `blob` among `members` (rendezvous hashing: the highest score of
 * member and blob; ties, which need equal 32-bit hashes, go to the smaller id).
 */
export function rendezvousOwner(blob: string, members: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = -1;
  for (const member of members) {
    const score = hash32(`${member}\n${blob}`);
    if (score > bestScore || (score === bestScore && best !== undefined && member < best)) {
      best = member;
      bestScore = score;
    }
  }
  return best;
}

export class ReplicaSet {
  /** This replica's id. */
  readonly self: string;
  readonly #deadAfterMs: number;
  /** Other replica id -> when it was last heard, in ms since the epoch. */
  readonly #lastHeard = new Map<string, number>();
  #members: string[];
  #epoch = 0;
  /** Set by `leave`: this replica owns nothing while another is live. */
  #leaving = false;
  readonly #owners = new Map<string, string>();
  /** How far the live replicas' clocks are from this one's (from their heartbeats). */
  readonly clocks = new ClockOffsets();

  /** `deadAfterMs`: a replica not heard for longer is no longer live. */
  constructor(self: string, deadAfterMs: number) {
    this.self = self;
    this.#deadAfterMs = deadAfterMs;
    this.#members = [self];
  }

  /** The live replicas, this one included, sorted. */
  get members(): readonly string[] {
    return this.#members;
  }

  /** Bumped on every change of the live set (owners may have moved). */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * A heartbeat of `id` came at `nowMs`, sent at `sentMs` on its clock if it said; true when
   * that changed the live set.
   */
  heard(id: string, nowMs: number, sentMs?: number): boolean {
    if (id === this.self) {
      return false;
    }
    if (sentMs !== undefined) {
      this.clocks.sample(id, sentMs, nowMs);
    }
    const known = this.#lastHeard.has(id);
    this.#lastHeard.set(id, nowMs);
    return known ? false : this.#changed();
  }

  /**
   * `id` is gone (it said it is leaving, or nobody answers on its subject): out of the live
   * set until its next heartbeat. True when that changed the live set.
   */
  drop(id: string): boolean {
    this.clocks.forget(id);
    return this.#lastHeard.delete(id) ? this.#changed() : false;
  }

  /** Drops the replicas not heard for the dead-after time; true when any went. */
  sweep(nowMs: number): boolean {
    let changed = false;
    for (const [id, lastMs] of this.#lastHeard) {
      if (nowMs - lastMs > this.#deadAfterMs) {
        this.#lastHeard.delete(id);
        this.clocks.forget(id);
        changed = true;
      }
    }
    return changed ? this.#changed() : false;
  }

  /** The live replica that owns `blob`. */
  owner(blob: string): string {
    let owner = this.#owners.get(blob);
    if (owner === undefined) {
      owner = rendezvousOwner(blob, this.#members) ?? this.self;
      if (this.#owners.size >= OWNER_CACHE_MAX) {
        this.#owners.clear();
      }
      this.#owners.set(blob, owner);
    }
    return owner;
  }

  /** True when this replica owns `blob`. */
  owns(blob: string): boolean {
    return this.owner(blob) === this.self;
  }

  /**
   * This replica is stopping: the blobs go to the others (if it hears any), as they will
   * once they hear it leave, so that it can hand its askers over to the new owners.
   */
  leave(): void {
    this.#leaving = true;
    this.#changed();
  }

  #changed(): true {
    const others = [...this.#lastHeard.keys()];
    this.#members = (this.#leaving && others.length > 0 ? others : [this.self, ...others]).sort();
    this.#owners.clear();
    this.#epoch += 1;
    return true;
  }
}
