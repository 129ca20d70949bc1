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
 * again; a piece the seed rationed is asked of peers only for a moment.
 *
 * How many requests go to one source at once follows what it does, not a fixed number: the
 * configured caps are where a peer starts (a seed keeps them). A peer that keeps delivering
 * faster as its window grows gets one more request per round (a round: one window's worth of
 * pieces), and stops growing once a larger window no longer brings more pieces per second (its link, or
 * its CPU, is full). A source whose upload slots are taken (429) while it serves requests of
 * ours is held to what it served then and grows back by one per round; only a 429 with none
 * of ours in flight leaves it alone for a moment. A source that refused connections is sent
 * one request at a time until one succeeds.
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

/**
 * How long a source that answered 429 with none of our requests in flight is left alone, in
 * ms, after `streak` such answers in a row: the typical piece time (a tenth of `maxMs` before
 * any piece came), doubling per answer, never past `maxMs`. On a slow link the typical piece
 * time is past `maxMs` already, so the wait is `maxMs` as it always was.
 */
export function busyBackoff(maxMs: number, typicalMs: number | undefined, streak: number): number {
  const first = Math.max(1, typicalMs ?? maxMs / 10);
  return Math.min(maxMs, first * 2 ** streak);
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
  /**
   * Longest a source whose upload slots are all taken (429) is left alone, in ms, when none of
   * this download's requests were in flight to it (with some in flight, it is asked again as
   * they end). The first wait is the typical piece time (a slot frees when a piece is sent;
   * a tenth of this before any piece came), doubling with each 429 in a row up to this.
   */
  readonly busyBackoffMs: number;
  /**
   * Most requests in flight to one source once its measured progress grew its window (see
   * the module's comment); default: `concurrency`. The caps above are where windows start.
   */
  readonly maxPerSource?: number;
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
  /**
   * A starved download asks a seed for a piece whatever its deferral, saying so (see
   * `PiecePicker.next`). Default true; false leaves the deferrals alone (their tests).
   */
  readonly askWhenStarved?: boolean;
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
  /**
   * Set on a request to a seed made because the download starved (see `PiecePicker.next`):
   * the download's lateness then, in ms. The seed's rationing does not hold against it the
   * copies it handed out longer ago than that: they did not reach it in a piece's late time.
   */
  readonly starvedLateMs?: number;
}

/**
 * How a request ended: `ok` (the piece verified and is held), `bad` (it did not match its
 * hash), `busy` (the source's slots were taken, or the seed rationed the piece), `failed`
 * (any other error), `unreachable` (the source refused the connection), `dropped` (aborted or
 * no longer needed: nothing learnt).
 */
export type RequestOutcome = 'ok' | 'bad' | 'busy' | 'failed' | 'unreachable' | 'dropped';

/**
 * A window grows only when the round at that window delivered pieces this much faster than
 * the best round before it: a link already full (a 25 Mbit/s one) gains nothing from one more
 * request in flight, and its rounds' rates stay within noise of each other.
 */
export const WINDOW_GROWTH_GAIN = 1.1;

/**
 * Measured progress of one source: the requests it may have in flight, learnt round by round.
 * Pure state, advanced by `windowAfterOk` and `windowAfterBusy`.
 */
export interface SourceWindow {
  /** Requests added to the source's configured cap because they made it faster. */
  grown: number;
  /** Held to this many in flight after a 429 (undefined: no such limit). */
  limit: number | undefined;
  /**
   * The current round: when it started (ms), the pieces it delivered, and whether the source
   * had its whole window in flight during it (else the round measured how many pieces there
   * were to ask for, not the source).
   */
  roundStartMs: number;
  roundPieces: number;
  roundFull: boolean;
  /** The best rate of a finished round, in pieces per ms (undefined before the first). */
  bestRate: number | undefined;
}

export function newWindow(nowMs: number): SourceWindow {
  return {
    grown: 0,
    limit: undefined,
    roundStartMs: nowMs,
    roundPieces: 0,
    roundFull: false,
    bestRate: undefined,
  };
}

/** Requests a source may have in flight: its configured cap plus what it earned, within limits. */
export function windowCap(window: SourceWindow, base: number, max: number): number {
  const cap = Math.min(Math.max(base, max), base + window.grown);
  return window.limit === undefined ? cap : Math.max(1, Math.min(cap, window.limit));
}

/** Records a request started at `nowMs` with `inFlight` now in flight to the source. */
export function windowStarted(
  window: SourceWindow,
  nowMs: number,
  inFlight: number,
  base: number,
  max: number,
): void {
  if (inFlight === 1 && window.roundPieces === 0) {
    // A round measures the source from its first request, not from idle time before it.
    window.roundStartMs = nowMs;
  }
  if (inFlight >= windowCap(window, base, max)) {
    window.roundFull = true;
  }
}

/**
 * Advances `window` after a piece from the source verified at `nowMs`. At the end of a round
 * (as many pieces as the window): one more request if the round was full and faster than the
 * best before it by `WINDOW_GROWTH_GAIN`; a 429's limit is raised by one, and forgotten once
 * it reaches the cap.
 */
export function windowAfterOk(
  window: SourceWindow,
  nowMs: number,
  base: number,
  max: number,
): void {
  const cap = windowCap(window, base, max);
  window.roundPieces += 1;
  if (window.roundPieces < cap) {
    return;
  }
  const rate = window.roundPieces / Math.max(1, nowMs - window.roundStartMs);
  if (
    window.roundFull &&
    window.limit === undefined &&
    base + window.grown < max &&
    (window.bestRate === undefined || rate > window.bestRate * WINDOW_GROWTH_GAIN)
  ) {
    window.grown += 1;
  }
  window.bestRate = Math.max(window.bestRate ?? 0, rate);
  if (window.limit !== undefined) {
    window.limit += 1;
    if (window.limit >= Math.min(Math.max(base, max), base + window.grown)) {
      window.limit = undefined;
    }
  }
  window.roundStartMs = nowMs;
  window.roundPieces = 0;
  window.roundFull = false;
}

/**
 * After a 429 from a source with `inFlight` other requests of ours still in flight: it serves
 * those, so it is held to them (and asked again as each ends) rather than left alone; with
 * none in flight, false: the caller backs off in time.
 */
export function windowAfterBusy(window: SourceWindow, inFlight: number): boolean {
  if (inFlight === 0) {
    return false;
  }
  window.limit = Math.min(window.limit ?? inFlight, inFlight);
  return true;
}

export interface PickerOptions {
  readonly settings: PickerSettings;
  /** The clock, in ms. */
  readonly now: () => number;
  /**
   * A number in [0, 1): the tie-break between equally rare pieces, and the draw of a starved
   * download's piece.
   */
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
  /** 429s in a row with none of ours in flight (see `busyBackoffMs`). */
  busyStreak: number;
  /** Requests in flight as learnt from its progress and its 429s. */
  window: SourceWindow;
  /** It refused connections: one request at a time until one succeeds. */
  probing: boolean;
  /**
   * When probing began (ms): requests started before then failed with the first one and
   * count with it as one failure; each probe after counts on its own.
   */
  probingSinceMs: number;
}

/** Whether a source holds piece `index`, as far as known. */
function holdsPiece(source: SourceState, index: number): boolean {
  return source.advert.complete || rangesInclude(source.pieces, index);
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
  /** When a piece last came by a request not made for starving (ms; the layout's time at first). */
  #progressMs = 0;
  /** No request for starving before then (ms): the last one was refused or failed. */
  #starvedRetryMs = 0;
  /** A request for starving is in flight. */
  #starving = false;

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
      this.#progressMs = this.#now();
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
        busyStreak: 0,
        window: newWindow(this.#now()),
        probing: false,
        probingSinceMs: 0,
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
    this.#seedDeferred.delete(index);
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
   * prefix before the rest, endgame copies of late pieces at the tail, and a request to a seed
   * for a starved download (`#starvedRequest`). Each counts as in flight until `settle`.
   */
  next(): PickedRequest[] {
    const settings = this.#settings;
    const started: PickedRequest[] = [];
    if (this.#count === 0) {
      return started;
    }
    const now = this.#now();
    const usable = [...this.#sources.values()].filter((s) => this.#usable(s, now));
    if (this.#active >= settings.concurrency) {
      // Every slot taken, by late requests to slow holders perhaps: a starved download still
      // asks the seed (up to twice the concurrency, as the endgame does).
      const starved = this.#starvedRequest(now, usable);
      return starved === undefined ? started : [starved];
    }
    const holders = (index: number): SourceState[] => usable.filter((s) => holdsPiece(s, index));
    // While peers serve, a piece only a seed holds is asked for wherever it lies, not first in
    // the window past the prefix: agents that started together have their windows over the
    // same few pieces, so their requests to the seed met on those pieces, the seed refused
    // all but one, and (hearing late who got them) sent some twice. Spread over the blob, each
    // agent's requests to the seed take pieces the others are not asking for; the window's
    // pieces come from the peers that got them.
    const othersServe = this.#peerUsable(now);
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
        // A seed that rationed the piece is left alone for its deferral here too: asked again
        // at once, it refuses at once, and the endgame spun on it (hundreds of requests a
        // second while a slow peer sent the piece).
        const deferred = (this.#seedDeferred.get(index) ?? 0) > now;
        const source = this.#pick(
          deferred ? holders(index).filter((s) => !s.advert.seed) : holders(index),
          busy,
          othersServe,
          sole,
        );
        if (source !== undefined) {
          started.push(this.#start(index, source, false, now));
        }
      }
    }
    const starved = this.#starvedRequest(now, usable);
    if (starved !== undefined) {
      started.push(starved);
    }
    return started;
  }

  /**
   * The lateness of a request, and the quiet that makes a download starved, in ms: a multiple
   * of the typical piece time, never under the minimum (see `endgameLate`).
   */
  #lateAfterMs(): number {
    const { endgameLateMinMs, endgameLateFactor } = this.#settings;
    return Math.max(endgameLateMinMs, endgameLateFactor * (this.#typicalMs ?? 0));
  }

  /**
   * When the download starves (ms): no piece came for the lateness (`#lateAfterMs`) and every
   * request in flight is late or, with none in flight, no piece came for the least lateness
   * (`endgameLateMinMs`: where a slow peer's pieces made the typical piece time seconds,
   * there is nothing to wait for but news). Undefined before any piece came (the lateness is
   * not known yet, and on a shared link a start's wait is no sign of a slow holder), while a
   * request for starving is in flight, when nothing is missing, or when no seed is known.
   *
   * The seed refused what the download lacks because it handed the pieces to agents that
   * have not passed them on: a slow node still receiving them on its own link or sending
   * them out of it, whose copies count for seconds while this download waits with nothing to
   * do (the seed's deferral doubling between refusals).
   */
  #starvesAt(): number | undefined {
    if (
      !(this.#settings.askWhenStarved ?? true) ||
      this.#typicalMs === undefined ||
      this.#starving ||
      this.#count === 0 ||
      this.#have.size === this.#count ||
      ![...this.#sources.values()].some((s) => s.advert.seed && !s.banned)
    ) {
      return undefined;
    }
    let latest: number | undefined;
    for (const requests of this.#inFlight.values()) {
      for (const request of requests) {
        latest = Math.max(latest ?? request.startedMs, request.startedMs);
      }
    }
    // With nothing in flight there is nothing to wait for but news: the least lateness.
    const quiet =
      latest === undefined
        ? this.#progressMs + this.#settings.endgameLateMinMs
        : Math.max(this.#progressMs, latest) + this.#lateAfterMs();
    return Math.max(quiet, this.#starvedRetryMs);
  }

  /**
   * A starved download (`#starvesAt`) asks a seed for one missing piece it holds, whatever the
   * piece's deferral, saying its lateness (`starvedLateMs`): the seed does not hold against it
   * the copies it handed out longer ago than that (they went to an agent that has not passed
   * them on in a piece's late time), and still refuses it for copies handed out since (the
   * piece went to an agent a moment ago: the asker gets it there). One such request at a
   * time; it stays starved (and asks again) until a piece comes otherwise. The piece: one of
   * the missing ones with no request in flight, drawn at random (`random`) among those in the
   * window past the prefix if any is (one from past it is held, or written and read back,
   * until the prefix reaches it), else the first with a late one. Drawn, not the first:
   * agents starved together (the others of a slow node that got the seed's copies) asked for
   * the same lowest piece, the seed served one of them and refused the rest for the copy it
   * had just handed out, and those waited a second.
   */
  #starvedRequest(now: number, usable: readonly SourceState[]): PickedRequest | undefined {
    const at = this.#starvesAt();
    if (at === undefined || at > now || this.#active >= this.#settings.concurrency * 2) {
      return undefined;
    }
    const seeds = usable.filter((s) => s.advert.seed);
    const fresh: { index: number; seed: SourceState }[] = [];
    let late: { index: number; seed: SourceState } | undefined;
    for (let index = 0; index < this.#count; index++) {
      if (this.#have.has(index) || !this.#hashed.has(index)) {
        continue;
      }
      const requests = this.#inFlight.get(index);
      const asked = new Set([...(requests ?? [])].map((r) => r.source));
      const seed = seeds.find((s) => !asked.has(s.advert.id) && holdsPiece(s, index));
      if (seed === undefined) {
        continue;
      }
      if (requests === undefined) {
        fresh.push({ index, seed });
      } else {
        late ??= { index, seed };
      }
    }
    const end = windowEnd(
      this.#prefix,
      this.#pieceSize,
      this.#settings.heldBytes,
      this.#settings.concurrency,
    );
    const near = fresh.filter((candidate) => candidate.index < end);
    const drawFrom = near.length > 0 ? near : fresh;
    const chosen =
      drawFrom.length > 0
        ? drawFrom[Math.min(drawFrom.length - 1, Math.floor(this.#random() * drawFrom.length))]
        : late;
    if (chosen === undefined) {
      return undefined;
    }
    this.#starving = true;
    return this.#start(chosen.index, chosen.seed, false, now, this.#lateAfterMs());
  }

  /**
   * Forgets the pieces the seed refused, and how often: the seed may be asked for them at once.
   * For when this agent cannot learn who got them (the swarm does not hear it; the seed then
   * does not refuse it), where each deferral would only be a wait for news that cannot come.
   */
  endSeedDeferrals(): void {
    this.#seedDeferred.clear();
    this.#seedRefusals.clear();
  }

  /**
   * The seed said, refusing a piece, that it would refuse these too now (it handed each to
   * other agents: `PIECE_RATIONED_HEADER`), as the refused request asked: naming `named` as
   * agents it cannot get pieces from. Each not held here and not deferred already is left to
   * peers for the seed's first deferral (`seedDeferMs`), as after a first refusal, but with no
   * refusal counted, so the requests to the seed go to pieces it sends instead of being turned
   * away one by one; a piece deferred already keeps its deferral. Left out: a piece a late
   * peer holds that the request did not name (asked for itself, the request would name that
   * peer, and the seed may send it: see `lateHolders`).
   */
  seedRationed(indexes: Iterable<number>, named: ReadonlySet<string> = new Set()): void {
    const now = this.#now();
    const unnamed = this.#latePeers(now).filter((source) => !named.has(source.advert.id));
    for (const index of indexes) {
      if (
        index >= this.#count ||
        this.#have.has(index) ||
        (this.#seedDeferred.get(index) ?? 0) > now ||
        unnamed.some((source) => holdsPiece(source, index))
      ) {
        continue;
      }
      this.#seedDeferred.set(index, now + this.#settings.seedDeferMs);
    }
  }

  /**
   * The earliest time (ms) at which `next` may start a request it would not start now with
   * nothing else changing: a busy source's back-off or a seed's deferral ends, a piece in
   * flight grows late for the endgame, or the download starves (`#starvesAt`). Undefined when no such time is known: only an event
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
    const starves = this.#starvesAt();
    if (starves !== undefined) {
      consider(starves);
    }
    if (this.#count - this.#have.size <= settings.concurrency) {
      const lateAfter = this.#lateAfterMs();
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
    const now = this.#now();
    if (request.starvedLateMs !== undefined) {
      this.#starving = false;
      if (outcome !== 'ok') {
        // Refused (the copies it would count went out lately) or failed: asked again only
        // after another quiet spell, not at every look.
        this.#starvedRetryMs = now + this.#settings.endgameLateMinMs;
      }
    } else if (outcome === 'ok') {
      this.#progressMs = now;
    }
    const source = this.#sources.get(request.source);
    if (source === undefined) {
      return;
    }
    const base = this.#baseCap(source);
    const max = this.#settings.maxPerSource ?? this.#settings.concurrency;
    source.inFlight -= 1;
    switch (outcome) {
      case 'ok':
        this.#typicalMs = nextTypicalMs(this.#typicalMs, now - request.startedMs);
        source.probing = false;
        source.busyStreak = 0;
        windowAfterOk(source.window, now, base, max);
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
        } else if (!windowAfterBusy(source.window, source.inFlight)) {
          // Every upload slot of that source is taken by others (other askers, or this agent's
          // other downloads): asking again at once only spins, but a slot frees as soon as a
          // piece is sent, so the wait starts there. (With requests of ours in flight it was
          // only told how many it serves us.)
          source.busyUntil =
            now + busyBackoff(this.#settings.busyBackoffMs, this.#typicalMs, source.busyStreak);
          source.busyStreak += 1;
        }
        break;
      case 'failed':
        source.failures += 1;
        break;
      case 'unreachable':
        // Requests started together with this one met the same closed port (or the same
        // silence, given up at once): they count as one failure, and from now on one request
        // at a time, so a source that is gone costs one refused connection per look.
        if (!source.probing || request.startedMs >= source.probingSinceMs) {
          source.failures += 1;
        }
        if (!source.probing) {
          source.probing = true;
          source.probingSinceMs = now;
        }
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

  /**
   * The peers (not seeds) said to hold piece `index` that are late for this download: a
   * request to them has been in flight longer than the endgame's lateness (see `endgameLate`:
   * a multiple of the typical piece time, measured over every source). A seed that rationed
   * the piece to such a peer is told so (the agent's `shoal-not-from`): on a slow peer's link
   * the piece would come seconds later than from the seed.
   */
  lateHolders(index: number): string[] {
    return this.#latePeers(this.#now())
      .filter((source) => holdsPiece(source, index))
      .map((source) => source.advert.id);
  }

  /** The peers (not seeds) with a request of this download in flight that is late. */
  #latePeers(now: number): SourceState[] {
    const settings = this.#settings;
    const oldest = new Map<string, number>();
    for (const requests of this.#inFlight.values()) {
      for (const request of requests) {
        const at = oldest.get(request.source);
        if (!request.seed && (at === undefined || request.startedMs < at)) {
          oldest.set(request.source, request.startedMs);
        }
      }
    }
    const late: SourceState[] = [];
    for (const [id, startedMs] of oldest) {
      const source = this.#sources.get(id);
      if (
        source !== undefined &&
        endgameLate(
          startedMs,
          now,
          this.#typicalMs,
          settings.endgameLateFactor,
          settings.endgameLateMinMs,
        )
      ) {
        late.push(source);
      }
    }
    return late;
  }

  /** Whether `source` failed unreachable or silent and is asked one request at a time. */
  isProbing(source: string): boolean {
    return this.#sources.get(source)?.probing === true;
  }

  /** Whether a source other than the seed could serve now. */
  #peerUsable(now: number): boolean {
    for (const source of this.#sources.values()) {
      // A peer being probed (its last requests went unanswered: it may have vanished) is no
      // sign that one will have the piece shortly.
      if (!source.advert.seed && !source.probing && this.#usable(source, now)) {
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
    const max = settings.maxPerSource ?? settings.concurrency;
    for (const source of holders) {
      const base = this.#capFrom(source, othersServe, sole);
      // A seed keeps its configured cap: it serves every agent of the cluster from one upload
      // budget, and one agent's rounds getting faster there would be slots taken from others
      // (its 429s defer pieces rather than hold a window).
      const cap = source.probing
        ? 1
        : source.advert.seed
          ? base
          : windowCap(source.window, base, max);
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

  /** The configured cap a source's window starts from, as `#pick` sees it now. */
  #baseCap(source: SourceState): number {
    const now = this.#now();
    const usable = [...this.#sources.values()].filter((s) => this.#usable(s, now));
    return this.#capFrom(
      source,
      usable.some((s) => !s.advert.seed),
      usable.length === 1 && usable[0] === source,
    );
  }

  /**
   * The one rule for a source's configured cap (`#pick` and the window's rounds must agree):
   * `othersServe`, a peer is usable; `sole`, the source is the only usable one.
   */
  #capFrom(source: SourceState, othersServe: boolean, sole: boolean): number {
    if (source.advert.seed && othersServe) {
      return this.#settings.perSeed;
    }
    return sole ? this.#soleCap() : this.#settings.perSource;
  }

  /** Requests in flight to a sole source: see `soleSourceBytes`. */
  #soleCap(): number {
    const { perSource, soleSourceBytes } = this.#settings;
    if (soleSourceBytes === undefined || this.#pieceSize === 0) {
      return perSource;
    }
    return Math.max(perSource, Math.floor(soleSourceBytes / this.#pieceSize));
  }

  #start(
    index: number,
    source: SourceState,
    first: boolean,
    now: number,
    starvedLateMs?: number,
  ): PickedRequest {
    const request: PickedRequest = {
      index,
      source: source.advert.id,
      seed: source.advert.seed,
      first,
      startedMs: now,
      ...(starvedLateMs === undefined ? {} : { starvedLateMs }),
    };
    let requests = this.#inFlight.get(index);
    if (requests === undefined) {
      requests = new Set();
      this.#inFlight.set(index, requests);
    }
    requests.add(request);
    source.inFlight += 1;
    this.#active += 1;
    windowStarted(
      source.window,
      now,
      source.inFlight,
      this.#baseCap(source),
      this.#settings.maxPerSource ?? this.#settings.concurrency,
    );
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
