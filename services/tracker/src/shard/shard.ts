/**
 * This replica's share of the blobs: which haves it decodes and applies, which wants it
 * answers. A have of another replica's blob is kept undecoded (`RawHaves`) and not applied;
 * when blobs move to this replica (the live set changed, or their owner could not be asked)
 * their kept haves are applied before the blob is used, so nothing is read from the stream
 * again and no want waits on a replay. Blobs that moved away leave the view.
 */
import type { Logger } from '@shoal/runtime';

import { handlePieceHave } from '../consumers/piece-have.js';
import type { SwarmEvent } from '../consumers/swarm-event.js';
import type { TrackerMetrics } from '../metrics.js';
import type { SwarmView } from '../swarm/view.js';
import { RawHaves } from './raw-haves.js';
import type { ReplicaSet } from './replicas.js';

export interface BlobShardDeps {
  readonly view: SwarmView;
  readonly replicas: ReplicaSet;
  readonly metrics: TrackerMetrics;
  readonly logger: Logger;
  readonly now: () => number;
  /** Whether a peer may announce itself as a seed (default: any). */
  readonly maySeed?: (peer: string) => boolean;
  /** Most (blob, peer) haves kept undecoded (`SHOAL_TRACKER_MAX_KEPT_HAVES`). */
  readonly maxKeptHaves: number;
  /** How long a borrowed blob is served after its last borrow, in ms (default 30 s). */
  readonly borrowTtlMs?: number;
}

/**
 * How long a blob is served after the last want its owner did not answer: the owner is
 * asked again after that, and the blob's haves are applied once, by it.
 */
export const BORROW_TTL_MS = 30_000;

/** The blob and peer a have's subject names (`shoal.swarm.v1.have.<alg>.<hex>.<peer>`). */
export function haveSubjectKey(subject: string): { blob: string; peer: string } | undefined {
  const tokens = subject.split('.');
  if (tokens.length !== 7) {
    return undefined;
  }
  const [, , , , algorithm, hex, peer] = tokens;
  if (algorithm === undefined || hex === undefined || peer === undefined) {
    return undefined;
  }
  return { blob: `${algorithm}:${hex}`, peer };
}

export class BlobShard {
  readonly replicas: ReplicaSet;
  readonly #deps: BlobShardDeps;
  readonly #raw: RawHaves;
  /** Blobs with haves kept undecoded that the view has not applied. */
  readonly #skipped = new Set<string>();
  /**
   * Blobs this replica serves without owning them, because their owner could not be asked,
   * and when they were last borrowed (ms since the epoch): applied until the live set next
   * changes or `borrowTtlMs` after the last borrow.
   */
  readonly #borrowed = new Map<string, number>();

  constructor(deps: BlobShardDeps) {
    this.#deps = deps;
    this.replicas = deps.replicas;
    this.#raw = new RawHaves(deps.maxKeptHaves);
  }

  /** Haves kept undecoded, of every blob. */
  get keptHaves(): number {
    return this.#raw.size;
  }

  /** The stream was made anew: the kept haves' sequences start over (see `RawHaves.rebase`). */
  rebase(): void {
    this.#raw.rebase();
  }

  /** Whether this replica applies the haves and answers the wants of `blob` now. */
  applies(blob: string): boolean {
    return this.replicas.owns(blob) || this.#borrowed.has(blob);
  }

  /**
   * A have from the stream, whose subject names `blob` and `peer`: kept, and true when the
   * caller is to apply it (this replica's blob, loaded first if it just moved here).
   */
  admit(event: SwarmEvent, blob: string, peer: string): boolean {
    const evicted = this.#raw.keep(blob, peer, event);
    this.#deps.metrics.keptHaves.set(this.#raw.size);
    if (evicted > 0) {
      this.#deps.metrics.keptHavesEvicted.inc(evicted);
    }
    if (!this.applies(blob)) {
      this.#skipped.add(blob);
      this.#deps.metrics.havesSkipped.inc();
      return false;
    }
    this.load(blob, event.seq);
    return true;
  }

  /**
   * Applies the kept haves of `blob` if the view does not hold them (it moved here), except
   * the one of stream sequence `exceptSeq` (the caller applies that one itself).
   */
  load(blob: string, exceptSeq?: number): void {
    if (!this.#skipped.delete(blob)) {
      return;
    }
    // Applied as the replay applies them: no hand-outs pushed for old news.
    const { view, metrics, logger, now, maySeed } = this.#deps;
    const deps = { view, metrics, logger, now, ...(maySeed === undefined ? {} : { maySeed }) };
    let applied = 0;
    for (const event of this.#raw.haves(blob)) {
      if (event.seq !== exceptSeq) {
        handlePieceHave(event, deps);
        applied += 1;
      }
    }
    metrics.blobsAdopted.inc();
    logger.debug({ blob, haves: applied }, 'blob taken over from kept haves');
  }

  /**
   * Serves `blob` although another replica owns it (its owner could not be asked): loaded
   * now, and applied until the live set changes or `borrowTtlMs` pass without a borrow.
   */
  borrow(blob: string): void {
    this.#borrowed.set(blob, this.#deps.now());
    this.load(blob);
  }

  /**
   * Gives back the blobs borrowed last more than `borrowTtlMs` before `nowMs`: those this
   * replica does not own leave the view (their haves stay kept), as in `rebalance`. Returns
   * how many left; their askers are to be handed to the owner.
   */
  releaseBorrowed(nowMs: number): number {
    const ttlMs = this.#deps.borrowTtlMs ?? BORROW_TTL_MS;
    let released = 0;
    for (const [blob, lastMs] of this.#borrowed) {
      if (nowMs - lastMs <= ttlMs) {
        continue;
      }
      this.#borrowed.delete(blob);
      if (!this.replicas.owns(blob)) {
        this.#giveAway(blob);
        released += 1;
      }
    }
    if (released > 0) {
      this.#deps.logger.info({ blobs: released }, 'borrowed blobs given back to their owners');
    }
    return released;
  }

  /** `blob` is no longer applied here: it leaves the view, its haves stay kept. */
  #giveAway(blob: string): void {
    this.#deps.view.dropBlob(blob);
    this.#skipped.add(blob);
  }

  /**
   * The live set changed: blobs this replica no longer applies leave the view (their haves
   * stay kept); the ones that moved here are loaded when their next have or want comes.
   */
  rebalance(): void {
    this.#borrowed.clear();
    const { view, metrics, logger } = this.#deps;
    let moved = 0;
    for (const blob of view.blobKeys()) {
      if (!this.applies(blob)) {
        this.#giveAway(blob);
        moved += 1;
      }
    }
    metrics.shardChanges.inc();
    logger.info(
      { replicas: this.replicas.members, blobsGiven: moved, blobsKept: view.blobCount },
      'tracker replicas changed; blobs rebalanced',
    );
  }

  /** Forgets kept haves older than `maxAgeMs`, and skipped blobs with none left. */
  expire(nowMs: number, maxAgeMs: number): void {
    this.#raw.expire(nowMs, maxAgeMs);
    this.#deps.metrics.keptHaves.set(this.#raw.size);
    for (const blob of [...this.#skipped]) {
      if (!this.#raw.has(blob)) {
        this.#skipped.delete(blob);
      }
    }
  }
}
