/**
 * Which piece to ask of which source next: pure logic, with the clock and the tie-break
 * injected, so that it is tested alone with a fake clock.
 *
 * Pieces in a window just past the verified prefix come first: clients read a blob in order,
 * and a download keeps the pieces that arrive ahead of its prefix in memory (for the whole-blob
 * hash and for readers) only as far as that window reaches. Within the window and past it,
 * rarest first (fewest holders); among equals, in an order of this agent's own (`rank`), so
 * agents starting together take different pieces from the seed and then trade them.
 *
 * Each source takes a few requests at a time (a seed fewer while peers can serve, so its upload
 * goes to pieces nobody else has; the only source there is, more small pieces); at the tail, a
 * piece whose request is late is asked of a second source (endgame). A source that sent a bad
 * piece is never asked again; one that failed too often is skipped until a hand-out names it
 * again; one whose upload slots were all taken (429) is left alone for a moment, and a piece
 * the seed rationed is asked of peers only for a moment.
 */
import { rangesInclude, type PieceRanges } from '@shoal/proto';

/** A piece that could be asked for now. */
export interface PieceCandidate {
  readonly index: number;
  /** Sources known to hold it. */
  readonly holders: number;
  /** This agent's own tie-break, e.g. a random number drawn per round. */
  readonly rank: number;
  /**
   * Asked for wherever it lies, as if in the window: a piece only a seed holds while peers
   * serve (see `next`).
   */
  readonly anywhere?: boolean;
}

/**
 * The first piece index past the window: `prefix` (the first missing piece) plus as many
 * pieces as `heldBytes` holds, and at least `concurrency`.
 */
export function windowEnd(
  prefix: number,
  pieceSize: number,
  heldBytes: number,
  concurrency: number,
): number {
  return prefix + Math.max(concurrency, Math.floor(heldBytes / pieceSize));
}

/** Sorts `candidates` in place into the order to ask for them, and returns them. */
export function orderPieces<T extends PieceCandidate>(candidates: T[], end: number): T[] {
  const past = (c: T): number => Number(c.index >= end && c.anywhere !== true);
  return candidates.sort((a, b) => past(a) - past(b) || a.holders - b.holders || a.rank - b.rank);
}

/**
 * Whether a piece in flight since `startedMs` is late enough, at `nowMs`, for the endgame to
 * ask a second source for it: past `factor` times the download's typical piece time
 * (`typicalMs`, undefined before any piece arrived) and never before `minMs`. On a slow link a
 * second copy of every piece at the tail takes the link's time from the first copies and is
 * thrown away when they land; asked only for a late piece, it pays off.
 */
export function endgameLate(
  startedMs: number,
  nowMs: number,
  typicalMs: number | undefined,
  factor: number,
  minMs: number,
): boolean {
  return nowMs - startedMs >= Math.max(minMs, factor * (typicalMs ?? 0));
}

/** The typical piece time after one more sample: a moving average weighing the new one 1/8. */
export function nextTypicalMs(typicalMs: number | undefined, sampleMs: number): number {
  return typicalMs === undefined ? sampleMs : typicalMs + (sampleMs - typicalMs) / 8;
}

export interface PickerSettings {
  /** Requests in flight at once for the blob (the endgame may go to twice this). */
  readonly concurrency: number;
  /** Piece bytes a download keeps in memory past its prefix: the window asked for first. */
  readonly heldBytes: number;
  /** Requests in flight to one source. */
  readonly perSource: number;
  /** Requests in flight to a seed while other sources can serve. */
  readonly perSeed: number;
  /**
   * Piece bytes in flight to a source while it is the only one that may be asked (a cold pull
   * from the seed server alone, a blob one peer holds): as many requests as this holds, and
   * never fewer than `perSource`. Each request is a round trip to that source, so a few small
   * pieces at a time leave its link and this agent idle between them (on a cold 10 MiB pull
   * from a seed still reading the origin, four 256 KiB requests in flight moved about
   * 85 MB/s); large pieces keep `perSource`, whose in-order arrival feeds the client's stream.
   * Capped by `concurrency`; default: `perSource` whatever the piece size.
   */
  readonly soleSourceBytes?: number;
  /** Copies of one piece requested at once in the endgame. */
  readonly endgameCopies: number;
  /** A piece is late for the endgame past this many times the typical piece time... */
  readonly endgameLateFactor: number;
  /** ...and never before this, in ms. */
  readonly endgameLateMinMs: number;
  /** Failed requests after which a source is skipped until a hand-out names it again. */
  readonly maxFailures: number;
  /** How long a source whose upload slots are all taken (429) is left alone, in ms. */
  readonly busyBackoffMs: number;
  /**
   * How long a piece the seed rationed is asked of other sources only, in ms: the first time.
   * Each further refusal of the same piece doubles it, up to `seedDeferMaxMs`.
   */
  readonly seedDeferMs: number;
  /**
   * Longest deferral of a piece the seed keeps refusing, in ms (default: `seedDeferMs`, no
   * growth). A refusal means another agent got the piece a moment ago; asked again every
   * `seedDeferMs` until the seed's own window for it ends, the seed sends it again to an
   * agent that has not heard of that holder yet (on a loaded swarm the seed sent 1.2× the
   * image so). Backing off leaves the asker's seed requests for pieces nobody has, and the
   * tracker time to name the holder.
   */
  readonly seedDeferMaxMs?: number;
}

/** What a hand-out says of a source. */
export interface SourceAdvert {
  readonly id: string;
  /** A seed server (its upload is kept for pieces nobody else has). */
  readonly seed: boolean;
  /** Holds every piece. */
  readonly complete: boolean;
  /** The pieces it holds, as `[start, end)` ranges. */
  readonly pieces: PieceRanges;
}

/** One request the picker started; hand it back to `settle` once it has ended. */
export interface PickedRequest {
  readonly index: number;
  readonly source: string;
  readonly seed: boolean;
  /** The first request for this piece (false: an endgame copy). */
  readonly first: boolean;
  /** When it started, by the picker's clock (ms). */
  readonly startedMs: number;
}

/**
 * How a request ended: `ok` (the piece verified and is held), `bad` (it did not match its
 * hash), `busy` (the source's slots were taken, or the seed rationed the piece), `failed`
 * (any other error), `dropped` (aborted or no longer needed: nothing learnt).
 */
export type RequestOutcome = 'ok' | 'bad' | 'busy' | 'failed' | 'dropped';

export interface PickerOptions {
  readonly settings: PickerSettings;
  /** The clock, in ms. */
  readonly now: () => number;
  /** A number in [0, 1) for the tie-break between equally rare pieces. */
  readonly random: () => number;
  /** Sources kept out from elsewhere (penalised for a bad piece in another download). */
  readonly excluded?: (id: string) => boolean;
}

interface SourceState {
  advert: SourceAdvert;
  /** The pieces it holds, as far as known (a seed's grow with the hashes published). */
  pieces: PieceRanges;
  inFlight: number;
  failures: number;
  banned: boolean;
  /** Left alone until then (ms), after a 429. */
  busyUntil: number;
}

export class PiecePicker {
  readonly #settings: PickerSettings;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #excluded: (id: string) => boolean;
  #count = 0;
  #pieceSize = 0;
  readonly #hashed = new Set<number>();
  /** Pieces `[0, #hashedPrefix)` all have their hash. */
  #hashedPrefix = 0;
  readonly #have = new Set<number>();
  /** Pieces `[0, #prefix)` are all held. */
  #prefix = 0;
  readonly #sources = new Map<string, SourceState>();
  /** Sources that will not serve the blob any more (`drop`), whatever hand-outs say. */
  readonly #dropped = new Set<string>();
  /** Requests in flight per piece. */
  readonly #inFlight = new Map<number, Set<PickedRequest>>();
  #active = 0;
  /** Pieces the seed asked us to get from a peer, until when (ms). */
  readonly #seedDeferred = new Map<number, number>();
  /** How often the seed refused each piece not yet held (its deferral grows with it). */
  readonly #seedRefusals = new Map<number, number>();
  /** How long a piece request that succeeded typically took, in ms (a moving average). */
  #typicalMs: number | undefined;

  constructor(options: PickerOptions) {
    this.#settings = options.settings;
    this.#now = options.now;
    this.#random = options.random;
    this.#excluded = options.excluded ?? (() => false);
  }

  /** Sets the blob's layout; the first call wins. */
  setLayout(count: number, pieceSize: number): void {
    if (this.#count === 0) {
      this.#count = count;
      this.#pieceSize = pieceSize;
    }
  }

  /** Pieces in the blob (0 until the layout is known). */
  get count(): number {
    return this.#count;
  }

  /** Records that the hashes of pieces `[first, first + count)` are known: they may be asked for. */
  hashesKnown(first: number, count: number): void {
    for (let index = first; index < first + count; index++) {
      this.#hashed.add(index);
    }
    while (this.#hashed.has(this.#hashedPrefix)) {
      this.#hashedPrefix += 1;
    }
    for (const source of this.#sources.values()) {
      this.#followSeed(source);
    }
  }

  /** Records a source named by a hand-out: new, or its holdings updated (failures forgiven). */
  advertise(advert: SourceAdvert): void {
    const known = this.#sources.get(advert.id);
    if (known === undefined) {
      const source: SourceState = {
        advert,
        pieces: advert.pieces,
        inFlight: 0,
        failures: 0,
        banned: this.#dropped.has(advert.id),
        busyUntil: 0,
      };
      this.#sources.set(advert.id, source);
      // A hand-out may be older than the hashes heard since.
      this.#followSeed(source);
      return;
    }
    // The seed flag stays what it was first.
    known.advert = { ...advert, seed: known.advert.seed };
    known.pieces = advert.pieces;
    known.failures = 0;
    this.#followSeed(known);
  }

  /**
   * A source that will not serve the blob any more (a seed server that gave it up): never
   * asked again, even when a later hand-out names it.
   */
  drop(id: string): void {
    this.#dropped.add(id);
    const source = this.#sources.get(id);
    if (source !== undefined) {
      source.banned = true;
      source.pieces = [];
    }
  }

  /**
   * True when a source that may still be asked (one busy for a moment counts) is known to
   * hold a piece not held here. With `offeredOnly`, a piece the seed server deferred (it
   * handed that piece to others already) does not count for the seed until the deferral
   * ends: for that piece the download needs the peers that got it, and only the tracker
   * knows them.
   */
  holdsMissing(offeredOnly = false): boolean {
    const now = this.#now();
    const missing = this.#count - this.#have.size;
    const offered = (source: SourceState, index: number): boolean =>
      !this.#have.has(index) &&
      !(offeredOnly && source.advert.seed && (this.#seedDeferred.get(index) ?? 0) > now);
    for (const source of this.#sources.values()) {
      if (
        source.banned ||
        source.failures >= this.#settings.maxFailures ||
        this.#excluded(source.advert.id)
      ) {
        continue;
      }
      if (source.advert.complete) {
        const deferred = offeredOnly && source.advert.seed ? this.#seedDeferred.size : 0;
        // More pieces missing than deferred: one of them is offered, no need to look.
        if (missing > deferred) {
          return true;
        }
        if (missing > 0 && deferred > 0) {
          for (let index = 0; index < this.#count; index++) {
            if (offered(source, index)) {
              return true;
            }
          }
        }
        continue;
      }
      for (const [start, end] of source.pieces) {
        for (let index = start; index < Math.min(end, this.#count); index++) {
          if (offered(source, index)) {
            return true;
          }
        }
      }
    }
    return false;
  }

  /** Sources known. */
  get sources(): number {
    return this.#sources.size;
  }

  /** Records piece `index` as held (verified and written), from whichever source. */
  markHave(index: number): void {
    this.#have.add(index);
    this.#seedRefusals.delete(index);
    while (this.#have.has(this.#prefix)) {
      this.#prefix += 1;
    }
  }

  has(index: number): boolean {
    return this.#have.has(index);
  }

  /** The pieces held. */
  get held(): ReadonlySet<number> {
    return this.#have;
  }

  /** Pieces `[0, prefix)` are all held. */
  get prefix(): number {
    return this.#prefix;
  }

  /** Every piece is held. */
  get done(): boolean {
    return this.#count > 0 && this.#have.size === this.#count;
  }

  /** The pieces not held, in order. */
  missing(): number[] {
    const missing: number[] = [];
    for (let i = 0; i < this.#count; i++) {
      if (!this.#have.has(i)) {
        missing.push(i);
      }
    }
    return missing;
  }

  /** Requests in flight for piece `index`. */
  requestsFor(index: number): ReadonlySet<PickedRequest> {
    return this.#inFlight.get(index) ?? new Set();
  }

  /** True when a usable source is known to hold pieces of the blob. */
  anyHolder(): boolean {
    const now = this.#now();
    for (const source of this.#sources.values()) {
      if (this.#usable(source, now) && (source.advert.complete || source.pieces.length > 0)) {
        return true;
      }
    }
    return false;
  }

  /**
   * The requests to start now, up to the concurrency: rarest first, the window past the
   * prefix before the rest, endgame copies of late pieces at the tail. Each counts as in
   * flight until `settle`.
   */
  next(): PickedRequest[] {
    const settings = this.#settings;
    const started: PickedRequest[] = [];
    if (this.#count === 0 || this.#active >= settings.concurrency) {
      return started;
    }
    const now = this.#now();
    const usable = [...this.#sources.values()].filter((s) => this.#usable(s, now));
    const holders = (index: number): SourceState[] =>
      usable.filter((s) => s.advert.complete || rangesInclude(s.pieces, index));
    // While peers serve, a piece only a seed holds is asked for wherever it lies, not first in
    // the window past the prefix: agents that started together have their windows over the
    // same few pieces, so their requests to the seed met on those pieces, the seed refused
    // all but one, and (hearing late who got them) sent some twice. Spread over the blob, each
    // agent's requests to the seed take pieces the others are not asking for; the window's
    // pieces come from the peers that got them.
    const othersServe = usable.some((s) => !s.advert.seed);
    const candidates: (PieceCandidate & { sources: SourceState[] })[] = [];
    for (let index = 0; index < this.#count; index++) {
      if (this.#have.has(index) || !this.#hashed.has(index) || this.#inFlight.has(index)) {
        continue;
      }
      const held = holders(index);
      if (held.length > 0) {
        candidates.push({
          index,
          holders: held.length,
          sources: held,
          rank: this.#random(),
          anywhere: othersServe && held.every((s) => s.advert.seed),
        });
      }
    }
    orderPieces(
      candidates,
      windowEnd(this.#prefix, this.#pieceSize, settings.heldBytes, settings.concurrency),
    );
    // While other sources can serve, the seed's upload is kept for pieces nobody else has
    // yet: a few requests per agent, the rest go to peers as the pieces spread.
    const sole = usable.length === 1;
    for (const candidate of candidates) {
      if (this.#active >= settings.concurrency) {
        return started;
      }
      const deferred = (this.#seedDeferred.get(candidate.index) ?? 0) > now;
      const source = this.#pick(
        deferred ? candidate.sources.filter((s) => !s.advert.seed) : candidate.sources,
        new Set(),
        othersServe,
        sole,
      );
      if (source !== undefined) {
        started.push(this.#start(candidate.index, source, true, now));
      }
    }
    // Endgame: nothing new to start and few pieces left: ask a second source for each piece
    // whose request is late.
    const missing = this.#count - this.#have.size;
    if (candidates.length === 0 && missing <= settings.concurrency) {
      for (const [index, requests] of this.#inFlight) {
        if (this.#active >= settings.concurrency * 2 || requests.size >= settings.endgameCopies) {
          continue;
        }
        const first = Math.min(...[...requests].map((r) => r.startedMs));
        if (
          !endgameLate(
            first,
            now,
            this.#typicalMs,
            settings.endgameLateFactor,
            settings.endgameLateMinMs,
          )
        ) {
          continue;
        }
        const busy = new Set([...requests].map((r) => r.source));
        const source = this.#pick(holders(index), busy, othersServe, sole);
        if (source !== undefined) {
          started.push(this.#start(index, source, false, now));
        }
      }
    }
    return started;
  }

  /**
   * The earliest time (ms) at which `next` may start a request it would not start now with
   * nothing else changing: a busy source's back-off or a seed's deferral ends, or a piece in
   * flight grows late for the endgame. Undefined when no such time is known: only an event
   * (a hand-out, a hash, a settled request) can change the answer. A caller sleeping until
   * then instead of on a fixed tick misses nothing the tick would have caught.
   */
  nextDeadline(): number | undefined {
    const settings = this.#settings;
    const now = this.#now();
    let next: number | undefined;
    const consider = (at: number): void => {
      if (at > now && (next === undefined || at < next)) {
        next = at;
      }
    };
    for (const source of this.#sources.values()) {
      consider(source.busyUntil);
    }
    for (const [index, until] of this.#seedDeferred) {
      if (until <= now) {
        // Past: forgotten, so the map does not grow with the blob.
        this.#seedDeferred.delete(index);
      } else {
        consider(until);
      }
    }
    if (this.#count - this.#have.size <= settings.concurrency) {
      const lateAfter = Math.max(
        settings.endgameLateMinMs,
        settings.endgameLateFactor * (this.#typicalMs ?? 0),
      );
      for (const requests of this.#inFlight.values()) {
        let first = Infinity;
        for (const request of requests) {
          first = Math.min(first, request.startedMs);
        }
        consider(first + lateAfter);
      }
    }
    return next;
  }

  /**
   * Ends a request from `next`: it no longer counts in flight, and its outcome is learnt from
   * (a piece that verified is not marked held here: `markHave` does, whatever its source).
   */
  settle(request: PickedRequest, outcome: RequestOutcome): void {
    const requests = this.#inFlight.get(request.index);
    if (requests?.delete(request) !== true) {
      return;
    }
    if (requests.size === 0) {
      this.#inFlight.delete(request.index);
    }
    this.#active -= 1;
    const source = this.#sources.get(request.source);
    if (source === undefined) {
      return;
    }
    source.inFlight -= 1;
    const now = this.#now();
    switch (outcome) {
      case 'ok':
        this.#typicalMs = nextTypicalMs(this.#typicalMs, now - request.startedMs);
        break;
      case 'bad':
        source.banned = true;
        break;
      case 'busy':
        if (source.advert.seed) {
          // The seed has handed this piece out already: a peer will have it shortly.
          this.#seedDeferred.set(
            request.index,
            now + this.#seedDeferral(request.index, this.#peerUsable(now)),
          );
        } else {
          // Every upload slot of that source is taken: asking again at once only spins.
          source.busyUntil = now + this.#settings.busyBackoffMs;
        }
        break;
      case 'failed':
        source.failures += 1;
        break;
      case 'dropped':
        break;
    }
  }

  /**
   * The deferral for one more refusal of piece `index` by the seed, in ms; counts it. It grows
   * only while a peer could serve the download: with the seed as its only source (everyone
   * else evicted the blob, or no hand-out named a peer yet) a refusal may come from copies the
   * seed sent to agents that no longer hold them, and a growing wait would outlast the stall
   * timeout and send the download to the origin.
   */
  #seedDeferral(index: number, peerUsable: boolean): number {
    const { seedDeferMs, seedDeferMaxMs } = this.#settings;
    if (!peerUsable) {
      return seedDeferMs;
    }
    const refusals = this.#seedRefusals.get(index) ?? 0;
    this.#seedRefusals.set(index, refusals + 1);
    return Math.min(
      Math.max(seedDeferMs, seedDeferMaxMs ?? seedDeferMs),
      seedDeferMs * 2 ** refusals,
    );
  }

  /** Whether a source other than the seed could serve now. */
  #peerUsable(now: number): boolean {
    for (const source of this.#sources.values()) {
      if (!source.advert.seed && this.#usable(source, now)) {
        return true;
      }
    }
    return false;
  }

  #usable(source: SourceState, now: number): boolean {
    return (
      !source.banned &&
      source.busyUntil <= now &&
      source.failures < this.#settings.maxFailures &&
      !this.#excluded(source.advert.id)
    );
  }

  /**
   * The least busy holder not in `exclude`, peers before seeds. `sole`: the holders are the
   * only source that may be asked.
   */
  #pick(
    holders: readonly SourceState[],
    exclude: ReadonlySet<string>,
    othersServe: boolean,
    sole: boolean,
  ): SourceState | undefined {
    const settings = this.#settings;
    let best: SourceState | undefined;
    for (const source of holders) {
      const cap =
        source.advert.seed && othersServe
          ? settings.perSeed
          : sole
            ? this.#soleCap()
            : settings.perSource;
      if (source.inFlight >= cap || exclude.has(source.advert.id)) {
        continue;
      }
      if (
        best === undefined ||
        (best.advert.seed && !source.advert.seed) ||
        (best.advert.seed === source.advert.seed && source.inFlight < best.inFlight)
      ) {
        best = source;
      }
    }
    return best;
  }

  /** Requests in flight to a sole source: see `soleSourceBytes`. */
  #soleCap(): number {
    const { perSource, soleSourceBytes } = this.#settings;
    if (soleSourceBytes === undefined || this.#pieceSize === 0) {
      return perSource;
    }
    return Math.max(perSource, Math.floor(soleSourceBytes / this.#pieceSize));
  }

  #start(index: number, source: SourceState, first: boolean, now: number): PickedRequest {
    const request: PickedRequest = {
      index,
      source: source.advert.id,
      seed: source.advert.seed,
      first,
      startedMs: now,
    };
    let requests = this.#inFlight.get(index);
    if (requests === undefined) {
      requests = new Set();
      this.#inFlight.set(index, requests);
    }
    requests.add(request);
    source.inFlight += 1;
    this.#active += 1;
    return request;
  }

  /**
   * A seed server publishes a piece's hash only once the piece is on its disk, in order. A
   * seed known to be part-way through the blob (holding a prefix) therefore holds every piece
   * hashed so far: it is asked for them at once rather than after the next hand-out, which
   * comes only with the next want and was most of what a cold pull waited on.
   */
  #followSeed(source: SourceState): void {
    const held = source.pieces[0];
    if (
      source.advert.seed &&
      !source.advert.complete &&
      source.pieces.length === 1 &&
      held !== undefined &&
      held[0] === 0 &&
      held[1] < this.#hashedPrefix
    ) {
      source.pieces = [[0, this.#hashedPrefix]];
    }
  }
}
