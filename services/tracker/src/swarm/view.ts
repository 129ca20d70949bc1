/**
 * The swarm view: who holds which pieces of which blob, built only from the SHOAL_SWARM
 * stream. Pure and synchronous: the stream consumer feeds it events with their stream
 * sequence and publish time, and callers pass the current time, so replaying the stream
 * gives the same view on every replica and in tests.
 */
import type { PeerInfo, PieceHave } from '@shoal/proto';

import { BlobHolders } from '../handout/holders.js';
import { pieceBitmap } from '../handout/pieces.js';
import type { HandoutAsk, SwarmMember } from '../handout/policy.js';

/** A member of a blob's swarm, with where its latest have sits in the stream. */
export interface SwarmEntry extends SwarmMember {
  /** Stream sequence of the piece-have this entry comes from. */
  readonly seq: number;
  /** When that piece-have was published (JetStream timestamp), in ms since the epoch. */
  readonly publishedAtMs: number;
}

/** What applying a piece-have did. */
export type HaveOutcome =
  /** The entry was added or replaced. */
  | 'applied'
  /** The view already holds a later have of this peer for this blob. */
  | 'superseded'
  /** The peer left (peer-gone) after this have was published. */
  | 'peer-gone'
  /** The have is older than the maximum age and no longer counts. */
  | 'expired'
  /**
   * The peer holds nothing of the blob any more (no piece, not complete: an agent that
   * evicted it, a seed server that withdrew it): its entry, if any, was removed.
   */
  | 'withdrawn';

/** Read-only access to the view, for admin routes and tests. */
export interface SwarmSnapshot {
  /** Live members of a blob's swarm, sorted by peer id; empty for an unknown blob. */
  swarm(blob: string): readonly SwarmEntry[];
  /** Blobs with at least one live member, sorted. */
  blobs(): readonly string[];
}

interface Departure {
  /** Stream sequence of the peer-gone. */
  readonly seq: number;
  readonly publishedAtMs: number;
}

/** Members of a blob's swarm worth ranking for one asker (see `SwarmView.sample`). */
export interface HandoutSample {
  /** Live members that can help the asker, never the asker (see `BlobHolders.sample`). */
  readonly members: SwarmEntry[];
  /** True when someone other than the asker holds or is fetching the whole blob. */
  readonly finisher: boolean;
  /** Members of the blob's swarm, including expired ones not yet removed. */
  readonly swarmSize: number;
}

/** A peer of the view: its latest address, and the blobs it has entries for. */
interface KnownPeer {
  info: PeerInfo;
  readonly blobs: Set<string>;
}

/** Whether two announcements of a peer give the same address and zone. */
function samePeer(a: PeerInfo, b: PeerInfo): boolean {
  return a.id === b.id && a.url === b.url && a.zone === b.zone;
}

/** One blob's swarm: its entries by peer id, and the same entries in hand-out order. */
interface Swarm {
  readonly entries: Map<string, SwarmEntry>;
  readonly holders: BlobHolders<SwarmEntry>;
}

export interface SwarmViewOptions {
  /** How long a have counts after its publish time, in ms. */
  readonly maxAgeMs: number;
  /**
   * Most (blob, peer) entries held, and most peer departures remembered (default: no limit).
   * Past it the entry (or departure) updated longest ago goes first, so a flood of haves for
   * made-up blobs or peers costs bounded memory and pushes out only the stalest state.
   */
  readonly maxEntries?: number;
}

export class SwarmView {
  readonly #maxAgeMs: number;
  /** blob -> its swarm. */
  readonly #blobs = new Map<string, Swarm>();
  /** peer id -> blobs it is a member of, so a peer-gone does not scan every blob. */
  readonly #peers = new Map<string, KnownPeer>();
  /** peer id -> its last peer-gone, so a replayed have from before it is not re-added. */
  readonly #departures = new Map<string, Departure>();
  /**
   * Every entry, with its blob, in the order of its last update: Map iteration order is
   * insertion order and an update replaces the entry, so the first one is the stalest.
   */
  readonly #byUpdate = new Map<SwarmEntry, string>();
  /**
   * blob -> the last withdrawal of it by a seed (evicted, or a failed run), oldest first: it
   * names a new seed request for the blob (see `seedWithdrawal`).
   */
  readonly #withdrawals = new Map<string, Departure>();
  readonly #maxEntries: number;
  #evicted = 0;
  #lastSeq = 0;

  constructor(options: SwarmViewOptions) {
    this.#maxAgeMs = options.maxAgeMs;
    this.#maxEntries = options.maxEntries ?? Number.POSITIVE_INFINITY;
  }

  /** Entries and departures dropped because the view was full (see `maxEntries`). */
  get evictedCount(): number {
    return this.#evicted;
  }

  /** Highest stream sequence applied so far (0 before the first event). */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  /** Blobs with at least one entry (expired entries count until `expire` runs). */
  get blobCount(): number {
    return this.#blobs.size;
  }

  /** Distinct peers with at least one entry. */
  get peerCount(): number {
    return this.#peers.size;
  }

  /** (blob, peer) entries held. */
  get entryCount(): number {
    return this.#byUpdate.size;
  }

  /** Peer departures remembered. */
  get departureCount(): number {
    return this.#departures.size;
  }

  /**
   * Applies a piece-have: it replaces the peer's entry for the blob (pieces are the full set,
   * not a delta) unless the view holds a later one, the peer left after it, or it expired.
   */
  applyHave(have: PieceHave, seq: number, publishedAtMs: number, nowMs: number): HaveOutcome {
    this.#advance(seq);
    const peerId = have.peer.id;
    const current = this.#blobs.get(have.blob)?.entries.get(peerId);
    if (current !== undefined && current.seq >= seq) {
      return 'superseded';
    }
    const departure = this.#departures.get(peerId);
    if (departure !== undefined && departure.seq > seq) {
      return 'peer-gone';
    }
    if (this.#isExpired(publishedAtMs, nowMs)) {
      // A later have that expired means the earlier one did too.
      if (current !== undefined) {
        this.#remove(have.blob, peerId);
      }
      return 'expired';
    }
    if (!have.complete && have.pieces.length === 0) {
      // Nobody is ever handed a member that holds nothing, so keeping one would only cost
      // memory for every blob a peer ever evicted. Worse, a seed's withdrawal kept as a seed
      // member would stand for a seed fetching the blob, and no seed request would be made
      // for it again. The stream delivers a peer's haves for a blob in order and keeps only
      // the latest, so no earlier have can come after this one and bring the entry back.
      if (current !== undefined) {
        this.#remove(have.blob, peerId);
      }
      if (have.seed) {
        this.#recordWithdrawal(have.blob, seq, publishedAtMs);
      }
      return 'withdrawn';
    }
    let swarm = this.#blobs.get(have.blob);
    if (swarm === undefined) {
      swarm = { entries: new Map(), holders: new BlobHolders() };
      this.#blobs.set(have.blob, swarm);
    }
    let known = this.#peers.get(peerId);
    if (known === undefined) {
      known = { info: have.peer, blobs: new Set() };
      this.#peers.set(peerId, known);
    } else if (!samePeer(known.info, have.peer)) {
      known.info = have.peer;
    }
    known.blobs.add(have.blob);
    const entry: SwarmEntry = {
      // One object per peer, shared by its entries, rather than one per have received.
      peer: known.info,
      pieces: have.pieces,
      // Made once here, not looked up for each of the wants that compare it with their set.
      bits: have.complete ? undefined : pieceBitmap(have.pieces),
      complete: have.complete,
      seed: have.seed,
      seq,
      publishedAtMs,
    };
    swarm.entries.set(peerId, entry);
    swarm.holders.set(entry);
    if (current !== undefined) {
      this.#byUpdate.delete(current);
    }
    this.#byUpdate.set(entry, have.blob);
    this.#evictStalest();
    return 'applied';
  }

  /**
   * Applies a peer-gone: the peer leaves every swarm it was in before `seq`. A have published
   * after it (a higher sequence) adds the peer back. Returns the number of entries removed.
   */
  applyGone(peerId: string, seq: number, publishedAtMs: number): number {
    this.#advance(seq);
    const previous = this.#departures.get(peerId);
    if (previous === undefined || previous.seq < seq) {
      this.#departures.delete(peerId);
      this.#departures.set(peerId, { seq, publishedAtMs });
      // Forgetting the stalest departure early can only let a replayed have that it would
      // have hidden count again until it expires: a stale hand-out, refused by that peer.
      for (const [stalest] of this.#departures) {
        if (this.#departures.size <= this.#maxEntries) {
          break;
        }
        this.#departures.delete(stalest);
        this.#evicted += 1;
      }
    }
    let removed = 0;
    for (const blob of [...(this.#peers.get(peerId)?.blobs ?? [])]) {
      const entry = this.#blobs.get(blob)?.entries.get(peerId);
      if (entry !== undefined && entry.seq < seq) {
        this.#remove(blob, peerId);
        removed += 1;
        // A seed server that leaves (it does at every start, its cache possibly gone) no
        // longer holds what it seeded: the next seed request for the blob must be a new one,
        // not a duplicate of the request that brought it in, which JetStream would drop.
        if (entry.seed) {
          this.#recordWithdrawal(blob, seq, publishedAtMs);
        }
      }
    }
    return removed;
  }

  /** Remembers a seed's withdrawal of `blob` at `seq`, within the cap (the oldest goes). */
  #recordWithdrawal(blob: string, seq: number, publishedAtMs: number): void {
    this.#withdrawals.delete(blob);
    this.#withdrawals.set(blob, { seq, publishedAtMs });
    for (const [oldest] of this.#withdrawals) {
      if (this.#withdrawals.size <= this.#maxEntries) {
        break;
      }
      this.#withdrawals.delete(oldest);
      this.#evicted += 1;
    }
  }

  /**
   * Stream sequence of the last time a seed withdrew `blob` (its have holding nothing), or
   * undefined. Every replica reads the same stream, so they agree on it: a seed request named
   * after it is a new request (not a duplicate of the one that brought the blob in before
   * the seed evicted it), still one per blob however many replicas and wants ask.
   */
  seedWithdrawal(blob: string): number | undefined {
    return this.#withdrawals.get(blob)?.seq;
  }

  /** Seed withdrawals remembered. */
  get withdrawalCount(): number {
    return this.#withdrawals.size;
  }

  /** Live members of a blob's swarm at `nowMs`, in no particular order. */
  members(blob: string, nowMs: number): SwarmEntry[] {
    const live: SwarmEntry[] = [];
    for (const entry of this.#blobs.get(blob)?.entries.values() ?? []) {
      if (!this.#isExpired(entry.publishedAtMs, nowMs)) {
        live.push(entry);
      }
    }
    return live;
  }

  /**
   * The members worth ranking for one asker, in O(window): about `window` live members that
   * can help it, taken in turn from the blob's holders (see `BlobHolders.sample`), not the
   * whole swarm. Expired members it reads on the way are removed; one passed over unread (a
   * partial member with nothing the asker lacks) is left to `expire`.
   */
  sample(
    blob: string,
    ask: Pick<HandoutAsk, 'peer' | 'have'>,
    window: number,
    nowMs: number,
  ): HandoutSample {
    const swarm = this.#blobs.get(blob);
    if (swarm === undefined) {
      return { members: [], finisher: false, swarmSize: 0 };
    }
    const swarmSize = swarm.entries.size;
    const found = swarm.holders.sample(
      ask,
      window,
      (entry) => !this.#isExpired(entry.publishedAtMs, nowMs),
    );
    for (const entry of found.dead) {
      this.#remove(blob, entry.peer.id);
    }
    return { members: found.members, finisher: found.finisher, swarmSize };
  }

  /** Blobs with at least one entry, live or not, in no particular order. */
  blobKeys(): string[] {
    return [...this.#blobs.keys()];
  }

  /**
   * Forgets every entry of `blob` (another tracker replica owns it now); returns how many.
   * Departures and seed withdrawals stay: they are per peer, or cheap.
   */
  dropBlob(blob: string): number {
    const peers = [...(this.#blobs.get(blob)?.entries.keys() ?? [])];
    for (const peerId of peers) {
      this.#remove(blob, peerId);
    }
    return peers.length;
  }

  /** Blobs with at least one live member at `nowMs`, sorted. */
  liveBlobs(nowMs: number): string[] {
    return [...this.#blobs.keys()].filter((blob) => this.members(blob, nowMs).length > 0).sort();
  }

  /**
   * Drops entries, departures and seed withdrawals older than the maximum age at `nowMs`. A departure older
   * than that can go: every have it could hide is at least as old, so it is expired anyway.
   * Returns the number of entries removed.
   */
  expire(nowMs: number): number {
    let removed = 0;
    for (const [blob, swarm] of [...this.#blobs]) {
      for (const [peerId, entry] of [...swarm.entries]) {
        if (this.#isExpired(entry.publishedAtMs, nowMs)) {
          this.#remove(blob, peerId);
          removed += 1;
        }
      }
    }
    for (const [peerId, departure] of [...this.#departures]) {
      if (this.#isExpired(departure.publishedAtMs, nowMs)) {
        this.#departures.delete(peerId);
      }
    }
    // Seed requests are de-duplicated for minutes, far less than the maximum age.
    for (const [blob, withdrawal] of [...this.#withdrawals]) {
      if (this.#isExpired(withdrawal.publishedAtMs, nowMs)) {
        this.#withdrawals.delete(blob);
      }
    }
    return removed;
  }

  /**
   * Makes the view ready for a stream made anew (a NATS server back with its store lost),
   * whose sequence starts over at 1: every entry's sequence becomes 0, so any event of the
   * new stream comes after it, and departures and seed withdrawals, which were ordered by the
   * old sequence, are forgotten. Without it, a withdrawal or a departure of a known peer on
   * the new stream would be ignored (its sequence lower than the entry's) until the entry
   * expired. The entries themselves stay: the agents announce again what they hold.
   */
  rebase(): void {
    const order = [...this.#byUpdate];
    this.#byUpdate.clear();
    for (const [entry, blob] of order) {
      const swarm = this.#blobs.get(blob);
      const known = this.#peers.get(entry.peer.id);
      if (swarm === undefined || known === undefined) {
        continue;
      }
      const rebased: SwarmEntry = { ...entry, peer: known.info, seq: 0 };
      swarm.entries.set(entry.peer.id, rebased);
      swarm.holders.set(rebased);
      this.#byUpdate.set(rebased, blob);
    }
    this.#departures.clear();
    this.#withdrawals.clear();
    this.#lastSeq = 0;
  }

  /** A read-only snapshot API over this view, evaluated at `now()` on every call. */
  snapshot(now: () => number): SwarmSnapshot {
    return {
      swarm: (blob) =>
        this.members(blob, now()).sort((a, b) =>
          a.peer.id === b.peer.id ? 0 : a.peer.id < b.peer.id ? -1 : 1,
        ),
      blobs: () => this.liveBlobs(now()),
    };
  }

  /** Drops the entries updated longest ago while the view holds more than `maxEntries`. */
  #evictStalest(): void {
    for (const [entry, blob] of this.#byUpdate) {
      if (this.#byUpdate.size <= this.#maxEntries) {
        return;
      }
      this.#remove(blob, entry.peer.id);
      this.#evicted += 1;
    }
  }

  #isExpired(publishedAtMs: number, nowMs: number): boolean {
    return nowMs - publishedAtMs > this.#maxAgeMs;
  }

  #advance(seq: number): void {
    if (seq > this.#lastSeq) {
      this.#lastSeq = seq;
    }
  }

  #remove(blob: string, peerId: string): void {
    const swarm = this.#blobs.get(blob);
    const entry = swarm?.entries.get(peerId);
    if (swarm === undefined || entry === undefined) {
      return;
    }
    swarm.entries.delete(peerId);
    swarm.holders.delete(peerId);
    this.#byUpdate.delete(entry);
    if (swarm.entries.size === 0) {
      this.#blobs.delete(blob);
    }
    const known = this.#peers.get(peerId);
    known?.blobs.delete(blob);
    if (known?.blobs.size === 0) {
      this.#peers.delete(peerId);
    }
  }
}
