/**
 * One blob fetched from the swarm into a download.
 *
 * It follows the blob's piece hashes (published by the seed server as the pieces arrive),
 * asks the tracker for peers, and fetches missing pieces from several peers at once: rarest
 * first, at most a few requests per peer, and at the tail the last pieces from two peers at
 * once (endgame). Every piece is checked against its hash before it is written; a peer that
 * sends a bad piece is dropped for this blob and the piece is fetched elsewhere. Verified
 * pieces are announced (batched) and extend the prefix that clients read.
 *
 * If the swarm makes no progress for the stall timeout (no peers, seed server down: no piece
 * byte received, `stall-watch.ts`), the missing pieces come from the origin with ranged reads
 * and the client's credentials. The download then checks the whole blob against its digest as
 * every download does.
 */
import { createHash } from 'node:crypto';

import {
  PiecePicker,
  type PickedRequest,
  type PieceBuffers,
  type RequestOutcome,
} from '@shoal/pieces';
import {
  haveDue,
  pieceAuthHeaders,
  PIECE_PEER_HEADER,
  PIECE_NOT_FROM_HEADER,
  PIECE_UNHEARD_HEADER,
  PIECE_STARVED_HEADER,
  pieceBounds,
  pieceCount,
  pieceListDigest,
  pieceSizeFor,
  SEED_WAIT_NOTICE_MAX_MS,
  toRanges,
  notFromHeader,
  notFromPeers,
  wantPacing,
  WantPacer,
  type Handout,
  type PeerInfo,
  type PieceHashes,
  type PiecesVerified,
  type SeedFailed,
  type SeedIntake,
} from '@shoal/proto';
import {
  ResumeRefusedError,
  resumingBody,
  type OpenedBlob,
  type Reopen,
  type ResumingBody,
} from '@shoal/registry';
import { SpanKind, withSpan, withSpanOnFailure, type Logger } from '@shoal/runtime';

import type { FsContentStore } from '../cache/content-store.js';
import {
  HELD_BYTES,
  sameSource,
  SourcesFailedError,
  type SourceFailure,
  type BlobDownload,
  type OriginSource,
} from '../cache/download.js';
import type { AgentMetrics } from '../metrics.js';
import { ByteTally } from '../provenance/ledger.js';
import type { BlobTarget } from '../upstream/origin-fetcher.js';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { SwarmClient } from './client.js';
import type { HashPath } from './hash-reader.js';
import { PieceFetchError, type PieceClient } from './piece-client.js';
import { StallWatch } from './stall-watch.js';
import { timerDelay } from './timer-delay.js';
import type { RateLimiter } from '@shoal/runtime';

/** No agent named. */
const NOBODY: ReadonlySet<string> = new Set();
/** Requests in flight to one peer for one blob. */
const PER_PEER_REQUESTS = 4;
/** Requests in flight to a seed while other peers can serve: the seed's upload is for pieces nobody else has. */
const PER_SEED_REQUESTS = 2;
/**
 * Piece bytes in flight to the only source there is (the seed server on a cold pull): eight
 * 256 KiB pieces (blobs up to 64 MiB), four of the larger ones as to any source.
 */
const SOLE_SOURCE_BYTES = 2 * 1024 * 1024;
/**
 * How far the whole-blob hash stays behind the prefix while the seed's signed record is
 * followed, in bytes: should no record come, `finish` reads back at most this much (racing
 * the record). Once the agent has trusted a record, the hash waits altogether while the seed's
 * list of piece hashes is not whole (see `#holdHashForList`).
 */
const RECORD_HASH_LAG_BYTES = 64 * 1024 * 1024;
/**
 * Piece requests to one source that get a span of their own, per download, whatever their
 * outcome: enough for a trace to show when each source was first asked and how it answered;
 * after them a request is traced only when it fails (`withSpanOnFailure`).
 */
const TRACED_REQUESTS_PER_SOURCE = 2;
/** Copies of one piece requested at once in the endgame. */
const ENDGAME_COPIES = 2;
/** A piece is late for the endgame past this many times the download's typical piece time. */
const ENDGAME_LATE_FACTOR = 2;
/** ...and never before this, in ms (before any piece arrived: this alone). */
const ENDGAME_LATE_MIN_MS = 1000;
/** Failed requests after which a peer is skipped for this blob until a hand-out names it again. */
const MAX_PEER_FAILURES = 3;
/** How long a peer that sent a bad piece is kept out of every download, in ms. */
const BAD_PIECE_PENALTY_MS = 10 * 60_000;
/**
 * How long a peer or seed that refuses connections (it stopped; the tracker names it until it
 * notices) is left alone by every download, in ms. Short, so that one restarting is back soon;
 * without it each hand-out made every download try it again, a few refused connections per
 * piece received while the seed server was down.
 */
const UNREACHABLE_PENALTY_MS = 2000;
/**
 * Longest such penalty, in ms, reached by doubling while the source keeps refusing: a seed
 * server stopped for good is tried every few seconds, not every two (from each download, the
 * refusals were most of the failed piece requests between two healthy agents); one that
 * restarts is asked again within this.
 */
const UNREACHABLE_PENALTY_MAX_MS = 8000;
/**
 * Longest a peer whose upload slots are all taken (a 429 with none of our requests in flight)
 * is left alone, in ms: the wait starts at the typical piece time and doubles per such 429 in
 * a row up to this (`busyBackoff`); with requests of ours in flight there is no wait.
 */
const PEER_BUSY_BACKOFF_MS = 1000;
/**
 * A want no hand-out has answered for this long (ms) says no tracker reads the wants now (a
 * JetStream cluster that lost a server can keep the trackers' consumers away for several
 * seconds while the agents' publishes are stored): the download is unheard (see `#unheard`)
 * until a hand-out comes. A healthy tracker answers within milliseconds; a loaded or
 * degraded one takes longer (a want forwarded to a replica slow to answer is answered by
 * the forwarder after 2 s, one whose seed request failed is delivered again after 1 s), so
 * this stays well above those: an unheard download is not rationed by the seed.
 */
const UNANSWERED_WANT_MS = 4000;
/** How long a piece the seed rationed is asked of peers only, in ms: the first time... */
const SEED_DEFER_MS = 750;
/**
 * ...doubling with each refusal of the same piece up to this: past the seed's fan-out window
 * (`SHOAL_SEED_FANOUT_WINDOW_MS`, 5 s after a copy was sent), by when the tracker has
 * usually named the agent that got it.
 */
const SEED_DEFER_MAX_MS = 8000;
/**
 * Wants sent ahead of the interval, at most, while the blob's piece hashes are known (someone
 * holds pieces) but no hand-out has named a holder yet: on a cold pull the seed server starts
 * holding the blob a moment after the first want, and waiting a whole want interval to hear of
 * it was most of the latency Shoal added to a small image.
 */
const EARLY_WANTS = 5;
/** What the log says when a download reads the rest of its blob from the origin. */
const FALLBACK_MESSAGES = {
  stall: 'swarm stalled; reading the rest from the origin',
  'seed-failed':
    'the seed server gave the blob up and no peer holds the rest; reading it from the origin',
  'nats-down':
    'NATS has been unreachable for the stall timeout and no source can go on; reading the rest from the origin',
} as const;
/** Shortest gap between two wants, in ms. */
const EARLY_WANT_GAP_MS = 50;
/**
 * Largest piece received whole into memory, verified, and written with one write. Memory:
 * up to twice the concurrency of these per download (endgame copies).
 */
const WHOLE_PIECE_BYTES = 4 * 1024 * 1024;
/**
 * Bytes per write when a larger piece is written as it arrives (before it verifies). Each
 * streaming request holds two of these (one being written while the next fills), so the
 * concurrency's worth of them is most of a large blob's memory.
 */
const STREAM_BLOCK_BYTES = 512 * 1024;

export interface SwarmFetchSettings {
  readonly concurrency: number;
  readonly stallTimeoutMs: number;
  readonly wantIntervalMs: number;
  /**
   * Piece bytes per second below which arriving bytes do not hold off the stall (the pieces'
   * rate floor); absent or 0: any byte does.
   */
  readonly minRateBytes?: number;
  /** `RECORD_HASH_LAG_BYTES` unless given (tests use less). */
  readonly recordHashLagBytes?: number;
}

export interface SwarmFetchDeps {
  readonly client: SwarmClient;
  readonly pieces: PieceClient;
  readonly store: FsContentStore;
  /** Where whole-piece buffers come from; the download gives them back. */
  readonly pool: PieceBuffers;
  readonly requests: RegistryRequests;
  readonly downloadLimit: RateLimiter;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly settings: SwarmFetchSettings;
}

interface InFlight {
  readonly controller: AbortController;
  /** The picker's request: which piece of which source. */
  readonly picked: PickedRequest;
  /**
   * Writes into the download as the bytes arrive (the first request for a piece larger than
   * `WHOLE_PIECE_BYTES`), or receives the piece whole and writes it once verified.
   */
  readonly streaming: boolean;
  /** The request told the seed this download is unheard (`PIECE_UNHEARD_HEADER`). */
  toldUnheard: boolean;
  /** The agents the request named to the seed as ones it cannot get pieces from. */
  toldNotFrom: ReadonlySet<string>;
  done: Promise<void>;
}

export class SwarmFetch {
  readonly download: BlobDownload;
  /** Bytes received by source, and the peers that sent them. */
  readonly tally = new ByteTally();
  readonly #target: BlobTarget;
  readonly #deps: SwarmFetchDeps;
  readonly #blob: string;
  #pieceSize = 0;
  readonly #hashes: (string | undefined)[] = [];
  /** How many of the blob's pieces have a known hash (`#hashes` within the piece count). */
  #knownHashCount = 0;
  /**
   * The most bytes of the blob, from its start, the seed server is known to have taken in:
   * up to the last piece it hashed, or what its last intake notice said (`#onSeedIntake`).
   */
  #seedBytes = 0;
  /**
   * Since when (ms) this download has missed a piece the seed hashed, while it does: the
   * pieces the seed rations reach the others from a peer a little later, and only a download
   * behind the seed for longer than its stall timeout is stuck on something else than the
   * seed's intake (`#onSeedIntake`).
   */
  #behindSince: number | undefined;
  /**
   * The wait the seed tells of (for the blob's first byte, or for the rest of a transfer that
   * broke off at `received`): when this download first heard of it, and how long it has
   * lasted so far (the seed's count, or the time since then, whichever is longer).
   */
  #wait: { readonly received: number; readonly heardAt: number; waitedMs: number } | undefined;
  /** How long the seed's earlier waits lasted, in ms: a download counts them all together. */
  #waitedBefore = 0;
  /**
   * The hash each held piece verified against, by index (from a peer, the seed or the
   * origin): what the seed's signed record must bind for the download to skip its whole-blob
   * hash. A piece that verified against nothing (origin bytes before any hash was known) has
   * none, and the download hashes the blob.
   */
  readonly #verifiedWith: (string | undefined)[] = [];
  /** Bytes entered the download without a piece check (a whole read from the origin). */
  #unchecked = false;
  /** The seed's signed `pieces-verified` record, once heard. */
  #record: PiecesVerified | undefined;
  /**
   * The record binds the complete list of hashes this fetch verifies against: the list is
   * frozen and the download no longer hashes the blob (`#trustRecord`).
   */
  #trusted = false;
  /**
   * How the whole-blob hash follows the prefix while the seed's record may spare it (see
   * `#holdHashForList`): `none`, no record is followed (at the prefix); `lagging`, a set
   * distance behind; `held`, not at all until the seed's list of piece hashes is whole;
   * `released`, a record is no longer waited on this way (behind by `lagDigest`'s last word).
   */
  #hashFollows: 'none' | 'lagging' | 'held' | 'released' = 'none';
  /** Settles `#whenTrusted`. */
  #onTrusted: () => void = () => undefined;
  /** Settles once `#trusted` is set: `finish` races it against the blob's hash. */
  readonly #whenTrusted = new Promise<void>((resolve) => {
    this.#onTrusted = resolve;
  });
  /** Which piece to ask of which peer: the pieces held, the peers' holdings and slots. */
  readonly #picker: PiecePicker;
  /** Pieces an endgame copy is writing now. */
  readonly #committing = new Set<number>();
  /** Where each peer named by a hand-out is reached. */
  readonly #peers = new Map<string, PeerInfo>();
  /** Requests in flight per piece: the peer each went to, and whether it writes as it reads. */
  readonly #inFlight = new Map<number, Set<InFlight>>();
  /** Requests traced so far, by source (see `TRACED_REQUESTS_PER_SOURCE`). */
  readonly #tracedRequests = new Map<string, number>();
  /** When the swarm has stalled: nothing received for the stall timeout. */
  readonly #stall: StallWatch;
  /** Tells the stall watch of piece bytes as they arrive; one function for every request. */
  readonly #onBytes = (bytes: number): void => this.#stall.received(bytes);
  /** The seed server that gave the blob up (its `seed-failed` notice), if one did. */
  #seedFailed: string | undefined;
  /**
   * Peers that answered 404 for a piece of this blob a hand-out said they held (their download
   * failed, a full disk; they evicted it), until one serves a piece again: named to the seed
   * server as ones this agent cannot get pieces from, since the copies it sent them are gone.
   */
  readonly #lostHolders = new Set<string>();
  /**
   * Headers every piece request carries: this agent's id, and the latest hand-out token once
   * one came (the seed's rationing tells askers apart by the id, token-checked or not).
   */
  #auth: Record<string, string>;
  #wake: (() => void) | undefined;
  /** When the next want goes out (`@shoal/proto` pacing). */
  readonly #wants: WantPacer;
  /**
   * The first piece hashes came while no hand-out had named a holder: someone (the seed server
   * on a cold pull) holds pieces now, so the next want goes out at once rather than after the
   * early wants' gap, which was most of the wait between the hashes and the first piece GET.
   */
  #wantNow = false;
  /** Pieces the latest have announced. */
  #announced = 0;
  /** Whether the download was unheard at its loop's last look (see `#unheard`). */
  #wasUnheard = false;
  /** The origin source that served the last read of a late origin fallback, tried first next. */
  #served: OriginSource | undefined;
  /**
   * Sources the origin refused (401, 403) during this fetch, with its answer: not asked again
   * for the next ranges, and each one's answer still given to its reader should all fail.
   */
  readonly #refused: SourceFailure[] = [];

  constructor(download: BlobDownload, target: BlobTarget, deps: SwarmFetchDeps) {
    this.download = download;
    this.#target = target;
    this.#deps = deps;
    this.#blob = target.digest.toString();
    this.#auth = { [PIECE_PEER_HEADER]: deps.client.self.id };
    this.#wants = new WantPacer(wantPacing(deps.settings.wantIntervalMs));
    this.#stall = new StallWatch(
      deps.settings.stallTimeoutMs,
      Date.now,
      deps.settings.minRateBytes ?? 0,
    );
    this.#picker = new PiecePicker({
      settings: {
        concurrency: deps.settings.concurrency,
        heldBytes: HELD_BYTES,
        perSource: PER_PEER_REQUESTS,
        perSeed: PER_SEED_REQUESTS,
        soleSourceBytes: SOLE_SOURCE_BYTES,
        endgameCopies: ENDGAME_COPIES,
        endgameLateFactor: ENDGAME_LATE_FACTOR,
        endgameLateMinMs: ENDGAME_LATE_MIN_MS,
        maxFailures: MAX_PEER_FAILURES,
        busyBackoffMs: PEER_BUSY_BACKOFF_MS,
        seedDeferMs: SEED_DEFER_MS,
        seedDeferMaxMs: SEED_DEFER_MAX_MS,
      },
      now: Date.now,
      random: Math.random,
      excluded: (id) => deps.client.isPenalized(id),
    });
  }

  /** True when piece `index` is held (verified and written). */
  hasPiece(index: number): boolean {
    return this.#picker.has(index);
  }

  /**
   * A held piece's bytes (verified against its hash when it arrived), in a buffer from
   * `alloc`, or undefined.
   */
  async readPiece(index: number, alloc?: (size: number) => Buffer): Promise<Buffer | undefined> {
    if (!this.#picker.has(index)) {
      return undefined;
    }
    const { start, end } = pieceBounds(index, this.download.size ?? 0, this.#pieceSize);
    return this.download.readAt(start, end - start, alloc);
  }

  /** Span attributes describing how the fetch went, for the end of its span. */
  summary(): Record<string, number> {
    return {
      'shoal.pieces': this.#picker.count,
      'shoal.pieces_held': this.#picker.held.size,
      'shoal.peers': this.#peers.size,
    };
  }

  /** The layout once known: piece size and count. */
  get layout(): { pieceSize: number; count: number } | undefined {
    const count = this.#picker.count;
    return count === 0 ? undefined : { pieceSize: this.#pieceSize, count };
  }

  /** Runs the fetch to its end: verified and committed, or failed. Never throws. */
  async run(signal: AbortSignal): Promise<void> {
    const { client, logger, metrics } = this.#deps;
    const stop = new AbortController();
    const onAbort = (): void => stop.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    const offHandouts = client.onHandout(this.#blob, (h) => this.#onHandout(h));
    const offIntake = client.onSeedIntake(this.#blob, (notice) => this.#onSeedIntake(notice));
    const offNatsDown = client.onNatsDown(() => this.#wake?.());
    // The seed no longer refuses this agent (see `#requestHeaders`): the loop asks it again
    // at once for what it refused.
    const offUnheard = client.onUnheard(() => this.#wake?.());
    // The seed's signed record, if this agent holds its key: with it the whole-blob hash stops.
    const record = client.followRecord(this.#blob, stop.signal, (heard) => {
      this.#record = heard;
      this.#trustRecord();
    });
    if (record !== undefined) {
      // Until this agent has trusted a record since it started, the hash keeps its distance:
      // perhaps the seed servers sign none (no record key, an older version), and `finish`
      // then has at most that much left to hash. After that it is held while the seed's list
      // is not whole (`#holdHashForList`, here or with a later batch).
      this.#hashFollows = 'lagging';
      this.download.lagDigest(this.#recordHashLag());
      this.#holdHashForList();
    }
    // After the record's hold is set: a batch can only change it from there.
    const hashes = client
      .followHashes(
        this.#blob,
        stop.signal,
        (batch, path) => this.#onHashes(batch, path),
        (notice) => this.#onSeedFailed(notice),
      )
      .catch((error: unknown) =>
        logger.warn({ err: error, blob: this.#blob }, 'piece hashes unavailable'),
      );
    try {
      const end = await this.#fromSwarm(stop.signal);
      // Done with the swarm: what the seed takes in no longer matters to this download.
      offIntake();
      if (end !== 'complete' && end !== 'aborted' && !signal.aborted) {
        // The rest comes from the origin: the seed's list may never be whole, nor its record
        // come. The hash catches up meanwhile rather than all of it waiting for `finish`.
        this.#releaseHash(0);
        metrics.swarmFallbacks.inc({ reason: end });
        logger.info(
          { blob: this.#blob, held: this.#picker.held.size, of: this.#picker.count },
          FALLBACK_MESSAGES[end],
        );
        await this.#abortAll();
        await this.#fromOrigin(signal);
      }
      if (signal.aborted) {
        throw new Error('shutting down');
      }
      const state = await this.download.finish(this.#deps.store, {
        vouched: () => this.#vouched(),
        ...(record === undefined ? {} : { vouching: this.#whenTrusted }),
        checked: (by) => metrics.blobChecks.inc({ by: by === 'record' ? 'seed-record' : 'digest' }),
      });
      // Evicted at once by a small quota? Then the swarm must not hear it is held.
      if (state === 'verified' && this.#deps.store.has(this.#target.digest)) {
        // Read from the origin before any piece hash came (the seed server was down), the
        // layout is still the one every holder uses: it follows from the size alone.
        const size = this.download.size ?? 0;
        const count =
          this.#picker.count > 0 ? this.#picker.count : pieceCount(size, pieceSizeFor(size));
        client.announce(this.#blob, [[0, count]], true);
      }
    } catch (error) {
      await this.download.fail(error);
      if (this.#picker.held.size > 0) {
        client.announce(this.#blob, [], false);
      }
    } finally {
      await this.#abortAll();
      // Whatever the end: the bytes hashed are spent.
      metrics.blobHashedBytes.inc(this.download.hashedBytes);
      stop.abort();
      signal.removeEventListener('abort', onAbort);
      offHandouts();
      offIntake();
      offNatsDown();
      offUnheard();
      await hashes;
      await record;
    }
  }

  /**
   * Fetches pieces from peers until all are held, the swarm stalls, or the seed server gave
   * the blob up and no peer holds a missing piece.
   */
  async #fromSwarm(
    signal: AbortSignal,
  ): Promise<'complete' | 'stall' | 'seed-failed' | 'nats-down' | 'aborted'> {
    const { client } = this.#deps;
    let lastWant = 0;
    let earlyWants = 0;
    this.#stall.progress();
    while (!signal.aborted) {
      if (this.#picker.done) {
        return 'complete';
      }
      if (this.download.state === 'failed') {
        // A write failed (a full disk): no source can help.
        throw this.download.error ?? new Error('the download failed');
      }
      const now = Date.now();
      if (this.#stall.stalled()) {
        return 'stall';
      }
      // Paced (see `@shoal/proto` pacing): at once, then when starved, or when the tracker
      // did not answer a have with fresh peers, or (long) when it named no holder and owes a
      // push, so the wants of one download do not grow with how long it lasts. A few more at
      // the start, while pieces exist but nobody known holds them.
      const early = earlyWants < EARLY_WANTS && this.#picker.count > 0 && !this.#picker.anyHolder();
      // Starved: no known source holds a missing piece, or no piece came for a while (the
      // seed rations a piece to a few, and who got it is news only the tracker has).
      const noHolder = !this.#picker.holdsMissing(true);
      if (
        this.#wants.due(now, noHolder) ||
        (early && (this.#wantNow || now - lastWant >= EARLY_WANT_GAP_MS))
      ) {
        this.#wantNow = false;
        if (!this.#wants.due(now, noHolder)) {
          earlyWants += 1;
        } else {
          this.#wants.sent(now, noHolder);
        }
        lastWant = now;
        void client.want({
          blob: this.#blob,
          registry: this.#target.registry.host,
          repository: this.#target.name,
          have: toRanges(this.#picker.held),
        });
      }
      // After the want: one NATS did not take is kept and sent once it is back (see `want`).
      if (now >= this.#natsDownDeadline()) {
        return 'nats-down';
      }
      const unheard = this.#unheard(now);
      if (unheard && !this.#wasUnheard) {
        this.#deps.metrics.swarmUnheard.inc({
          reason: this.#deps.client.unheard ? 'publish' : 'unanswered-want',
        });
        // The seed no longer refuses this download (see `#requestHeaders`): what it refused
        // is asked of it again at once rather than after waiting for news that cannot come.
        this.#picker.endSeedDeferrals();
      }
      this.#wasUnheard = unheard;
      // Rarest first, endgame at the tail: whatever the picker starts now.
      for (const picked of this.#picker.next()) {
        this.#request(picked, signal);
      }
      if (
        this.#seedFailed !== undefined &&
        this.#inFlight.size === 0 &&
        !this.#picker.holdsMissing()
      ) {
        // Nobody will bring the missing pieces: waiting out the stall timeout gains nothing.
        return 'seed-failed';
      }
      const wantAt =
        early && earlyWants < EARLY_WANTS
          ? lastWant + EARLY_WANT_GAP_MS
          : // Infinity when no want is due until something happens (an event wakes the loop).
            this.#wants.nextDueMs(Date.now(), noHolder);
      const unansweredSince = this.#wants.unansweredSinceMs;
      // A late publish acknowledgement wakes the loop itself (`onUnheard`).
      const unheardAt =
        unheard || unansweredSince === undefined ? Infinity : unansweredSince + UNANSWERED_WANT_MS;
      await this.#sleepUntil(
        Math.min(wantAt, this.#stall.deadlineMs, this.#natsDownDeadline(), unheardAt),
      );
    }
    return 'aborted';
  }

  /**
   * True while nobody can tell this download who got the pieces the seed sent elsewhere: this
   * agent's haves or wants do not reach the swarm (`SwarmClient.unheard`: refused, or late
   * for their acknowledgement), or its want has gone unanswered for `UNANSWERED_WANT_MS` (no
   * tracker reads the wants). The seed is told so with
   * each request and does not refuse it (`PIECE_UNHEARD_HEADER`).
   */
  #unheard(now: number): boolean {
    const since = this.#wants.unansweredSinceMs;
    return this.#deps.client.unheard || (since !== undefined && now - since >= UNANSWERED_WANT_MS);
  }

  /**
   * When a download that cannot go on without NATS stops waiting for it (ms): once the
   * connection has been down for the stall timeout. With NATS gone no hand-out or piece hash
   * can come, and each download started during an outage waited out a stall timeout of its
   * own before the origin (10 s per blob by default); now only those started within the
   * first stall timeout of an outage wait, and no longer than they did before, so a server
   * restarting or a client moving to another server of the cluster keeps pulls in the swarm.
   * Infinity while NATS is up, or while the download can go on without it: requests in
   * flight, or a source it may still ask holds a missing piece (peers serve over HTTP).
   */
  #natsDownDeadline(): number {
    const since = this.#deps.client.natsDownSince;
    if (since === undefined || this.#inFlight.size > 0 || this.#picker.holdsMissing()) {
      return Infinity;
    }
    return since + this.#deps.settings.stallTimeoutMs;
  }

  /**
   * Sleeps until `deadline` (ms), or earlier when the picker or a peer's penalty has a
   * deadline of its own, or until an event wakes the loop (a hand-out, a hash batch, a seed's
   * notice, a settled request). No fixed tick: on a slow link a download spends its time
   * waiting on bytes, and a timer firing four times a second per blob was CPU for nothing.
   */
  async #sleepUntil(deadline: number): Promise<void> {
    let at = deadline;
    const picker = this.#picker.nextDeadline();
    if (picker !== undefined) {
      at = Math.min(at, picker);
    }
    for (const id of this.#peers.keys()) {
      const ends = this.#deps.client.penaltyEnds(id);
      if (ends !== undefined) {
        // Its end is the first moment `isPenalized` says false (it compares with `<`).
        at = Math.min(at, ends + 1);
      }
    }
    const wait = timerDelay(at - Date.now());
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, wait);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Runs a request the picker started, and hands its outcome back to the picker. */
  #request(picked: PickedRequest, signal: AbortSignal): void {
    const controller = new AbortController();
    const { index } = picked;
    const { start, end } = pieceBounds(index, this.download.size ?? 0, this.#pieceSize);
    const streaming = picked.first && end - start > WHOLE_PIECE_BYTES;
    const entry: InFlight = {
      controller,
      picked,
      streaming,
      toldUnheard: false,
      toldNotFrom: NOBODY,
      done: Promise.resolve(),
    };
    const onAbort = (): void => controller.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    let requests = this.#inFlight.get(index);
    if (requests === undefined) {
      requests = new Set();
      this.#inFlight.set(index, requests);
    }
    requests.add(entry);
    let outcome: RequestOutcome = 'dropped';
    entry.done = this.#fetchPiece(picked, entry)
      .then((result) => {
        outcome = result;
      })
      .finally(() => {
        this.#picker.settle(picked, outcome);
        if (outcome === 'busy' && picked.seed) {
          if (entry.toldUnheard) {
            // Not rationed (the seed does not ration an unheard asker): every upload slot
            // taken, or a seed that does not know the header. The piece's deferral stands,
            // as a back-off.
          } else if (this.#unheard(Date.now())) {
            // Rationed before the seed was told this download is unheard: nobody can say who
            // got it, so it is asked again at once, this time with the header.
            this.#picker.endSeedDeferrals();
          } else {
            // The seed sent the piece to another agent: ask the tracker who, soon.
            this.#wants.rationed(Date.now());
          }
        }
        signal.removeEventListener('abort', onAbort);
        const set = this.#inFlight.get(index);
        set?.delete(entry);
        if (set?.size === 0) {
          this.#inFlight.delete(index);
        }
        this.#wake?.();
      });
  }

  /**
   * Fetches one piece from one peer. A piece up to `WHOLE_PIECE_BYTES` is received whole into
   * memory, hashed, and written with one write once it matches its hash; its bytes then stay
   * in the download's memory for the whole-blob hash and for readers. The first request for a
   * larger piece writes into the download in blocks as they arrive, hashing them on the way
   * (memory: one block); the piece counts only if the hash matches. An endgame copy of a large
   * piece is received whole, and written only after the streaming request for the same piece
   * has stopped, so two writers never overlap.
   */
  async #fetchPiece(picked: PickedRequest, entry: InFlight): Promise<RequestOutcome> {
    const { pieces, metrics, logger, downloadLimit } = this.#deps;
    const { signal } = entry.controller;
    const { index } = picked;
    const source = picked.seed ? 'seed' : 'peer';
    const peer = this.#peers.get(picked.source);
    if (peer === undefined) {
      return 'dropped';
    }
    const { start, end } = pieceBounds(index, this.download.size ?? 0, this.#pieceSize);
    const hasher = createHash('sha256');
    try {
      const waitStarted = Date.now();
      await downloadLimit.take(end - start);
      await this.#target.limit?.take(end - start);
      // Time spent waiting for the download budget is the operator's choice, not a stalled
      // swarm: it does not count toward the stall timeout. (Only the wait itself: a request
      // that then fails must not look like progress.)
      this.#stall.exclude(Date.now() - waitStarted);
      if (signal.aborted) {
        return 'dropped';
      }
      const requestedMs = performance.now();
      const headers = this.#requestHeaders(picked);
      entry.toldUnheard = headers[PIECE_UNHEARD_HEADER] !== undefined;
      const notFrom = headers[PIECE_NOT_FROM_HEADER];
      entry.toldNotFrom = notFrom === undefined ? NOBODY : new Set(notFromPeers(notFrom));
      // The first few requests to each source get a span of their own, whatever their
      // outcome (and the source's SERVER span below it); the others only when they fail. A
      // span per piece at both ends made traces of hundreds of spans, and a trace store's
      // load grow with every piece of every node's pulls.
      const tracedSoFar = this.#tracedRequests.get(peer.id) ?? 0;
      const traced = tracedSoFar < TRACED_REQUESTS_PER_SOURCE;
      if (traced) {
        this.#tracedRequests.set(peer.id, tracedSoFar + 1);
      }
      const bytes = await (traced ? withSpan : withSpanOnFailure)(
        'piece GET',
        {
          kind: SpanKind.CLIENT,
          attributes: {
            'shoal.piece': index,
            'shoal.peer': peer.id,
            'shoal.source': source,
            'server.address': new URL(peer.url).host,
          },
          // Refused for now (rationed, every slot taken) or called off (the endgame's other
          // copy landed, the download ended): how a swarm runs, not a failure worth a span.
          failed: (error: unknown) =>
            !signal.aborted &&
            !(error instanceof PieceFetchError && error.code === 'PIECE_RATIONED'),
        },
        async () => {
          if (!entry.streaming) {
            const copy = await pieces.fetch(
              peer.url,
              this.#blob,
              index,
              end - start,
              signal,
              (size) => this.#deps.pool.take(size),
              headers,
              this.#onBytes,
            );
            hasher.update(copy);
            return copy;
          }
          await pieces.stream(
            peer.url,
            this.#blob,
            index,
            end - start,
            signal,
            STREAM_BLOCK_BYTES,
            async (block, offset) => {
              hasher.update(block);
              await this.download.writeAt(start + offset, block);
              // Written: the block is free for the next one.
              this.#deps.pool.give(block);
            },
            (size) => this.#deps.pool.take(size),
            headers,
            this.#onBytes,
          );
          return undefined;
        },
      );
      if (this.#picker.has(index)) {
        this.#giveBack(bytes);
        return 'dropped';
      }
      const expected = this.#hashes[index];
      if (expected === undefined || hasher.digest('hex') !== expected) {
        this.#giveBack(bytes);
        metrics.pieces.inc({ source, result: 'bad' });
        metrics.verificationFailures.inc({ kind: 'piece' });
        // The picker drops the peer for this blob; the penalty keeps it out of every download.
        this.#deps.client.penalize(peer.id, BAD_PIECE_PENALTY_MS);
        logger.warn(
          { blob: this.#blob, piece: index, peer: peer.id },
          'peer sent a bad piece; dropping it',
        );
        return 'bad';
      }
      if (bytes !== undefined) {
        // Stop the streaming request for this piece and let its last write land first.
        const streams = [...(this.#inFlight.get(index) ?? [])].filter((r) => r.streaming);
        for (const other of streams) {
          other.controller.abort();
        }
        await Promise.all(streams.map((other) => other.done));
        if (this.#picker.has(index) || this.#committing.has(index)) {
          this.#giveBack(bytes);
          return 'dropped';
        }
        // Two endgame copies may both get here; the first one writes.
        this.#committing.add(index);
        try {
          await this.download.writePiece(start, bytes);
        } finally {
          this.#committing.delete(index);
        }
      }
      this.#verifiedWith[index] = expected;
      this.#markHave(index, picked.seed);
      this.#deps.client.answered(peer.id);
      this.#lostHolders.delete(peer.id);
      metrics.pieces.inc({ source, result: 'ok' });
      metrics.pieceSeconds.observe({ source }, (performance.now() - requestedMs) / 1000);
      metrics.fetchedBytes.inc({ source }, end - start);
      this.tally.add(source, end - start, peer.id);
      // The endgame's other copies of this piece are no longer needed.
      for (const other of this.#inFlight.get(index) ?? []) {
        if (other !== entry) {
          other.controller.abort();
        }
      }
      return 'ok';
    } catch (error) {
      if (error instanceof PieceFetchError && error.code === 'PIECE_RATIONED') {
        // A seed that handed the piece out already, or a peer with every upload slot taken:
        // the picker asks elsewhere for a moment. The seed names the other pieces it would
        // refuse now, as this request asked: those wait for peers too (not when it was told
        // this download is unheard: it does not ration it, and the refusal is a full seed's).
        if (picked.seed && !entry.toldUnheard && error.rationed.length > 0) {
          this.#picker.seedRationed(error.rationed, entry.toldNotFrom);
        }
        metrics.pieces.inc({ source, result: 'deferred' });
        return 'busy';
      }
      if (!signal.aborted && this.download.state === 'running') {
        if (error instanceof PieceFetchError && error.code === 'PIECE_MISSING' && !picked.seed) {
          this.#lostHolders.add(peer.id);
        }
        const silent = error instanceof PieceFetchError && error.code === 'PIECE_SILENT';
        const unreachable =
          silent || (error instanceof PieceFetchError && error.code === 'PIECE_UNREACHABLE');
        if (silent && !this.#deps.client.isPenalized(peer.id)) {
          // Every request to it fails at once: the first one counts and tells (at info the
          // first time, at debug for each probe after, which may go on for as long as the
          // tracker names a vanished peer).
          metrics.silentSources.inc({ source });
          const probe = this.#picker.isProbing(peer.id);
          logger[probe ? 'debug' : 'info'](
            { err: error, blob: this.#blob, peer: peer.id },
            'piece source went silent; leaving it alone for a while and asking others',
          );
        }
        if (unreachable) {
          // A source that refuses connections (a stopped seed server the tracker still names)
          // or went silent (it vanished: packets dropped) is left alone by every download for
          // a while, doubling while it stays so, and probed one request at a time after: a
          // short stall of a blob's only source costs seconds, and the stall rule, not this
          // penalty, decides when to go to the origin.
          this.#deps.client.refused(peer.id, UNREACHABLE_PENALTY_MS, UNREACHABLE_PENALTY_MAX_MS);
        }
        metrics.pieces.inc({ source, result: 'failed' });
        logger.debug(
          { err: error, blob: this.#blob, piece: index, peer: peer.id },
          'piece request failed',
        );
        return unreachable ? 'unreachable' : 'failed';
      }
      return 'dropped';
    }
  }

  /**
   * Trusts the seed's signed record once it binds the complete list of piece hashes this
   * fetch knows, for this size and layout, and every piece held so far verified against that
   * list: the list is frozen (later batches cannot change what pieces verify against) and the
   * download stops hashing the blob. The seed server signs the record only once the blob it
   * read from the origin matched its digest: bytes that match the hashes of bytes that
   * matched the digest are those bytes (sha256 collisions aside, as for the digest itself).
   * The signature, checked with the seed's public key, is what makes the record the seed's.
   */
  #trustRecord(): void {
    const record = this.#record;
    const count = this.#picker.count;
    const size = this.download.size;
    if (this.#trusted || this.#unchecked || record === undefined || count === 0) {
      return;
    }
    if (size === undefined) {
      return;
    }
    if (
      record.size === size &&
      record.pieceSize === this.#pieceSize &&
      this.#knownHashCount < count
    ) {
      // Not every hash is known yet: looked at again with each batch.
      return;
    }
    const hashes = this.#hashes.slice(0, count).filter((hash) => hash !== undefined);
    if (
      record.size !== size ||
      record.pieceSize !== this.#pieceSize ||
      pieceListDigest(hashes) !== record.hashes ||
      [...this.#picker.held].some((index) => this.#verifiedWith[index] !== hashes[index])
    ) {
      // This record cannot vouch for what this download holds: its hash catches up rather
      // than waiting (a later record may still be trusted).
      this.#releaseHash(0);
      return;
    }
    this.#trusted = true;
    this.#deps.client.recordTrusted();
    this.download.skipDigest();
    this.#onTrusted();
    this.#deps.logger.debug(
      { blob: this.#blob },
      "the seed's signed record vouches for the pieces",
    );
  }

  /**
   * True when the seed server vouches for every piece: the record was trusted, and each piece
   * verified against the hash the record binds (which the frozen list guarantees; checked
   * again, it costs a comparison per piece). Otherwise the download hashes the blob.
   */
  #vouched(): boolean {
    const count = this.#picker.count;
    let vouched = this.#trusted && !this.#unchecked && count > 0;
    for (let index = 0; vouched && index < count; index++) {
      const hash = this.#hashes[index];
      vouched = hash !== undefined && this.#verifiedWith[index] === hash;
    }
    return vouched;
  }

  /** Returns a piece buffer nobody will use to the pool. */
  #giveBack(bytes: Buffer | undefined): void {
    if (bytes !== undefined) {
      this.#deps.pool.give(bytes);
    }
  }

  /**
   * Records a verified piece on disk and moves the readable prefix over it. `fromSeed`: it
   * came from a seed, which rations its pieces: the other agents it refuses the piece to can get it
   * only from a holder the tracker names, so it is announced with the next batch rather than
   * at the next step (`haveDue`). A rationing seed sends each piece about once, so these haves
   * add about one per piece of the blob across the swarm, not per agent (with rationing off,
   * up to one per piece per agent, batched by the have interval).
   */
  #markHave(index: number, fromSeed = false): void {
    this.#picker.markHave(index);
    this.#stall.progress();
    if (this.#caughtUp()) {
      this.#behindSince = undefined;
    }
    const size = this.download.size ?? 0;
    this.download.advance(Math.min(size, this.#picker.prefix * this.#pieceSize));
    // Announced as the held pieces double, then every sixty-fourth of the blob (`haveDue`; the
    // complete one `run` sends once the blob is verified): peers learn of this holder early,
    // and the have stream does not grow with how long the download lasts.
    const held = this.#picker.held.size;
    this.#wants.gotPiece(Date.now());
    if (
      held < this.#picker.count &&
      (fromSeed || haveDue(this.#announced, held, this.#picker.count))
    ) {
      this.#announced = held;
      this.#wants.announced(Date.now());
      this.#deps.client.announce(this.#blob, toRanges(this.#picker.held), false);
    }
  }

  /**
   * Holds the whole-blob hash back while the seed's record is awaited and its list of piece
   * hashes is not whole. The seed signs the record once its own read of the blob matched the
   * digest, and publishes it right after the last hashes; until then this download can hold
   * only pieces the seed has hashed, so on a cold pull its prefix runs right behind the seed
   * and, with a hash merely lagging, most of a large blob was read back and hashed for
   * nothing just before the record came (a 160 MiB layer: 96 MiB). Only once this agent has
   * trusted a record (the seeds sign them): should the record not come after all, the hash
   * catches up once the list is whole, and `finish` may wait on that read-back.
   */
  #holdHashForList(): void {
    if (
      this.#hashFollows === 'lagging' &&
      this.#deps.client.recordsCome &&
      !this.#hashListWhole()
    ) {
      this.#hashFollows = 'held';
      this.download.lagDigest(Number.POSITIVE_INFINITY);
    }
  }

  /** Ends the wait for a record: the hash follows the prefix, `lagBytes` behind it. */
  #releaseHash(lagBytes: number): void {
    if (this.#hashFollows !== 'none') {
      this.#hashFollows = 'released';
    }
    this.download.lagDigest(lagBytes);
  }

  /**
   * The list just became whole and no record was heard yet: it is published right after the
   * last hashes, or not at all (a seed without a record key). Hashed from here on, keeping
   * the distance.
   */
  #releaseHashOnceListWhole(): void {
    if (this.#hashFollows === 'held' && !this.#trusted && this.#hashListWhole()) {
      this.#releaseHash(this.#recordHashLag());
    }
  }

  #recordHashLag(): number {
    return this.#deps.settings.recordHashLagBytes ?? RECORD_HASH_LAG_BYTES;
  }

  /** Every piece's hash is known. */
  #hashListWhole(): boolean {
    const count = this.#picker.count;
    return count > 0 && this.#knownHashCount === count;
  }

  #onHashes(batch: PieceHashes, path: HashPath): void {
    if (this.#picker.count === 0) {
      // Heard live: the seed server is ingesting the blob for this cold pull, and a want now
      // learns of it as a holder. Stored hashes (a warm pull) come before the first hand-out,
      // which names holders anyway: a want then only adds one.
      this.#wantNow = path === 'live' && !this.#picker.anyHolder();
      this.#pieceSize = batch.pieceSize;
      this.#picker.setLayout(pieceCount(batch.size, batch.pieceSize), batch.pieceSize);
      this.download.setSize(batch.size);
    }
    if (
      batch.pieceSize !== this.#pieceSize ||
      batch.size !== this.download.size ||
      // The list the seed's record binds is frozen: nothing may change what pieces verify against.
      this.#trusted
    ) {
      return;
    }
    const count = this.#picker.count;
    const caughtUp = this.#caughtUp();
    batch.hashes.forEach((hash, i) => {
      const index = batch.first + i;
      if (index < count && this.#hashes[index] === undefined) {
        this.#knownHashCount += 1;
      }
      this.#hashes[index] = hash;
    });
    if (caughtUp && !this.#caughtUp()) {
      this.#behindSince = Date.now();
    }
    this.#trustRecord();
    // Another download may have trusted a record since this one began lagging.
    this.#holdHashForList();
    this.#releaseHashOnceListWhole();
    // A seed part-way through the blob holds every piece hashed so far: the picker asks it.
    this.#picker.hashesKnown(batch.first, batch.hashes.length);
    const hashedTo = pieceBounds(
      batch.first + batch.hashes.length - 1,
      batch.size,
      batch.pieceSize,
    ).end;
    this.#seedBytes = Math.max(this.#seedBytes, hashedTo);
    this.#stall.progress();
    this.#wake?.();
  }

  /**
   * The seed server is still taking the blob in, though none of its pieces landed lately:
   * what it received since this download last heard of it counts as bytes moving, at the
   * pieces' rate floor (`StallWatch.received`), as a peer's bytes do. A download that holds
   * every piece the seed hashed would otherwise read the rest from the origin after its stall
   * timeout, through the link the seed is reading by, when the origin sends a piece more
   * slowly than that (a slow registry, large pieces, many layers at once). Before the blob's
   * first byte the seed says how long it has waited on its source instead, and so it does
   * while it asks again for the rest of a transfer that broke off: that counts as the swarm
   * moving while the seed's waits, all together, are no longer than `SEED_WAIT_NOTICE_MAX_MS`
   * (each by the seed's count and since this download first heard of it: a seed run started
   * again counts from 0), so an origin slow to answer is asked by the seed alone; the seed's
   * own timeouts usually end a wait before. A wait at more bytes than the last one is a new
   * one (the seed got bytes in between); one at the same bytes or fewer goes on the last.
   *
   * Neither counts for a download that has missed a piece the seed has for longer than its
   * stall timeout (it cannot reach the seed, or the peers do not pass the piece on): that one
   * waits on that piece's bytes, and on the stall timeout as before, whatever the seed takes
   * in; nor once the seed gave the blob up (a late notice: core NATS and the hash stream are
   * not ordered).
   */
  #onSeedIntake(notice: SeedIntake): void {
    const size = this.download.size;
    if (notice.size !== undefined && size !== undefined && notice.size !== size) {
      return;
    }
    const behindMs = this.#behindSince === undefined ? 0 : Date.now() - this.#behindSince;
    const heeded = this.#seedFailed === undefined && behindMs <= this.#deps.settings.stallTimeoutMs;
    if (notice.waitingMs !== undefined) {
      const now = performance.now();
      let wait = this.#wait;
      if (wait === undefined || notice.received > wait.received) {
        // Bytes came since the last wait (then the transfer broke off): a wait of its own,
        // counted with the ones before, so that an origin that keeps breaking off and
        // answering late cannot hold the download for ever.
        this.#waitedBefore += wait?.waitedMs ?? 0;
        wait = { received: notice.received, heardAt: now, waitedMs: 0 };
        this.#wait = wait;
      }
      wait.waitedMs = Math.max(wait.waitedMs, notice.waitingMs, now - wait.heardAt);
      if (heeded && this.#waitedBefore + wait.waitedMs <= SEED_WAIT_NOTICE_MAX_MS) {
        this.#stall.progress();
      }
      return;
    }
    if (notice.received <= this.#seedBytes) {
      return;
    }
    const grew = notice.received - this.#seedBytes;
    this.#seedBytes = notice.received;
    if (heeded) {
      // The loop's sleep ends at the stall deadline at the earliest; it finds it moved on then.
      this.#stall.received(grew);
    }
  }

  /** True when this download holds every piece whose hash it knows. */
  #caughtUp(): boolean {
    return this.#picker.held.size >= this.#knownHashCount;
  }

  /** The seed server gave the blob up: it is asked for nothing more, and the loop looks again. */
  #onSeedFailed(notice: SeedFailed): void {
    if (this.#seedFailed !== undefined) {
      return;
    }
    this.#seedFailed = notice.seed;
    this.#picker.drop(notice.seed);
    // No record will come for this run: the hash catches up rather than waiting for one.
    this.#releaseHash(0);
    this.#deps.logger.info(
      { blob: this.#blob, seed: notice.seed, reason: notice.reason },
      'the seed server gave the blob up',
    );
    this.#wake?.();
  }

  /**
   * The headers of a piece request: who asks, its token, and to the seed server the peers this
   * agent cannot get the piece from, so the seed's rationing does not hold against it the
   * copies they got: those it could not reach lately (first: a header names 16 at most), those
   * that sent it a bad piece (a corrupting peer got the seed's only copy), those holding it
   * that are late for this download (a slow peer that got the seed's only copy), and those
   * that no longer hold what they were handed out for (`#lostHolders`); and whether the swarm
   * hears this download now (see `#unheard`).
   */
  #requestHeaders(picked: PickedRequest): Record<string, string> {
    if (!picked.seed) {
      return this.#auth;
    }
    const notFrom = this.#deps.client.notFromPeers();
    for (const peer of [...this.#picker.lateHolders(picked.index), ...this.#lostHolders]) {
      if (!notFrom.includes(peer)) {
        notFrom.push(peer);
      }
    }
    const unheard = this.#unheard(Date.now());
    const { starvedLateMs } = picked;
    if (notFrom.length === 0 && !unheard && starvedLateMs === undefined) {
      return this.#auth;
    }
    return {
      ...this.#auth,
      ...(notFrom.length === 0 ? {} : { [PIECE_NOT_FROM_HEADER]: notFromHeader(notFrom) }),
      ...(unheard ? { [PIECE_UNHEARD_HEADER]: '1' } : {}),
      ...(starvedLateMs === undefined
        ? {}
        : { [PIECE_STARVED_HEADER]: String(Math.round(starvedLateMs)) }),
    };
  }

  #onHandout(message: Handout): void {
    const self = this.#deps.client.self.id;
    this.#wants.handout(
      message.peers.some((p) => p.peer.id !== self && (p.complete || p.pieces.length > 0)),
    );
    if (message.token !== undefined) {
      this.#auth = pieceAuthHeaders(message.token, this.#deps.client.self.id);
    }
    for (const entry of message.peers) {
      if (entry.peer.id === this.#deps.client.self.id) {
        continue;
      }
      this.#peers.set(entry.peer.id, entry.peer);
      this.#picker.advertise({
        id: entry.peer.id,
        seed: entry.seed,
        complete: entry.complete,
        pieces: entry.pieces,
      });
    }
    this.#deps.metrics.swarmPeers.set(this.#peers.size);
    this.#wake?.();
  }

  /** Stops every piece request and waits until none can still write. */
  async #abortAll(): Promise<void> {
    const requests = [...this.#inFlight.values()].flatMap((set) => [...set]);
    for (const request of requests) {
      request.controller.abort();
    }
    await Promise.all(requests.map((request) => request.done));
  }

  /**
   * GETs the blob (or bytes `[range.from, range.until)` of it) at the origin. First with the
   * source that served the last range (so a failing one is not tried first for every missing
   * range), else with the credentials of the client that started the download, then with
   * those of the clients reading it now, newest first. Each source is asked at its own
   * registry: a credential never goes to another. A source that fails for any reason (refused,
   * 404, 429, 5xx, no answer) does not end the read: its registry may be the only one in
   * trouble, as the download is shared by digest across registries; the next is asked. One the
   * registry refused (401, 403) is not asked again by this fetch. When every source failed,
   * throws a `SourcesFailedError` carrying each one's outcome, so each reader gets its own
   * registry's answer. The body resumes itself from the byte it stopped at, with the source
   * that answered, when the transfer breaks off (`resumingBody`); when that source's registry
   * refuses the resume (a token that expired mid-read), it goes on from that byte with the
   * next source (`#nextOriginSource`).
   */
  async #originOpen(
    range: { readonly from: number; readonly until?: number; readonly size: number } | undefined,
    signal: AbortSignal,
  ): Promise<{ readonly opened: OpenedBlob; readonly body: AsyncGenerator<Buffer> }> {
    // A part of the blob is asked for with a Range header; the whole blob (from byte 0 to its
    // end, its size known or not) without.
    const ranged = range !== undefined && (range.from > 0 || range.until !== undefined);
    const own: OriginSource = {
      registry: this.#target.registry,
      name: this.#target.name,
      authorization: this.#target.authorization,
    };
    const offered = this.download.sources;
    // The one that served last, unless its reader has left since (then it is not used again).
    const served = this.#served;
    const lead =
      served !== undefined &&
      (sameSource(served, own) || offered.some((s) => sameSource(s, served)))
        ? served
        : own;
    const sources: OriginSource[] = [];
    for (const source of [lead, own, ...offered]) {
      if (!sources.some((s) => sameSource(s, source))) {
        sources.push(source);
      }
    }
    const failures: SourceFailure[] = [];
    for (const source of sources) {
      const refused = this.#refused.find((r) => sameSource(r.source, source));
      if (refused !== undefined) {
        // Refused by its registry before: asking again would only be refused again.
        failures.push(refused);
        continue;
      }
      const open = this.#originReader(source, range?.until, signal);
      let opened: OpenedBlob;
      try {
        opened = await open(range?.from ?? 0);
      } catch (error) {
        if (signal.aborted) {
          throw error;
        }
        this.#deps.logger.info(
          { blob: this.#blob, registry: source.registry.host, err: error },
          'the origin did not answer a late read; trying the next source',
        );
        failures.push({ source, answer: undefined });
        continue;
      }
      // A whole read wants the blob (200); a range, its part (206), or the whole blob from a
      // registry that ignores Range (200).
      if (opened.status === 200 || (ranged && opened.status === 206)) {
        let body: ResumingBody;
        /** The source reading now, and every one this read has asked. */
        let reading = source;
        const asked = [source];
        try {
          body = resumingBody(opened, {
            signal,
            reopen: open,
            ...(range === undefined ? {} : { from: { byte: range.from, size: range.size } }),
            ...(range?.until === undefined ? {} : { until: range.until }),
            onResume: (at, cause) => {
              this.#deps.metrics.originResumes.inc();
              this.#deps.logger.warn(
                { blob: this.#blob, registry: reading.registry.host, at, err: cause },
                "the origin's blob transfer broke off: asked again from where it stopped",
              );
            },
            nextSource: (why) => {
              const next = this.#nextOriginSource(reading, why, asked, own);
              asked.push(next);
              reading = next;
              this.#served = next;
              this.#deps.metrics.originSourceMoves.inc({
                reason: why instanceof ResumeRefusedError ? 'refused' : 'failed',
              });
              return this.#originReader(next, range?.until, signal);
            },
          });
        } catch (error) {
          // Another range than the one asked for, or another size: not this blob's bytes.
          this.#deps.logger.info(
            { blob: this.#blob, registry: source.registry.host, err: error },
            'the origin answered a late read with another range or size; trying the next source',
          );
          failures.push({ source, answer: undefined });
          continue;
        }
        this.#served = source;
        return { opened, body: body.blocks };
      }
      const failure = {
        source,
        answer: { status: opened.status, headers: opened.headers, body: opened.answer },
      };
      failures.push(failure);
      if (opened.status === 401 || opened.status === 403) {
        this.#refused.push(failure);
      }
    }
    // The download's own outcome first: it is the one for whoever cannot be told their own.
    const ownFirst = [
      ...failures.filter((f) => sameSource(f.source, own)),
      ...failures.filter((f) => !sameSource(f.source, own)),
    ];
    throw new SourcesFailedError(ownFirst);
  }

  /**
   * `(from) => ` the blob (up to byte `until`, if given) from byte `from` on, at `source`'s
   * registry with its credential.
   */
  #originReader(source: OriginSource, until: number | undefined, signal: AbortSignal): Reopen {
    return (from) =>
      this.#deps.requests.openBlob({
        registry: source.registry,
        name: source.name,
        digest: this.#target.digest,
        authorization: source.authorization,
        signal,
        from,
        ...(until === undefined ? {} : { until }),
        // The client is already receiving this blob: a rate limit met by other requests must
        // not fail its pull; the registry answers for itself.
        started: true,
      });
  }

  /**
   * The source to read the rest of a late read with, once `reading` can go no further (`why`):
   * its registry refused to resume (a token that expired mid-read: then it is not asked again
   * by this fetch), or its first answer after a move failed. The download's own source, then
   * the readers' now, newest first, skipping those refused and those this read `asked`.
   * When none is left, throws a `SourcesFailedError` carrying each one's outcome, as a read
   * that no source opened does.
   */
  #nextOriginSource(
    reading: OriginSource,
    why: Error,
    asked: readonly OriginSource[],
    own: OriginSource,
  ): OriginSource {
    const fields = { blob: this.#blob, registry: reading.registry.host };
    if (why instanceof ResumeRefusedError) {
      this.#refused.push({ source: reading, answer: why.answer });
      this.#served = undefined;
      this.#deps.logger.warn(
        { ...fields, at: why.at, err: why },
        "the origin refused to resume a late read with its source's credential; " +
          'reading the rest with the next source',
      );
    } else {
      this.#deps.logger.info(
        { ...fields, err: why },
        'the origin did not answer a late read with the rest; trying the next source',
      );
    }
    const sources: OriginSource[] = [];
    for (const source of [own, ...this.download.sources]) {
      if (!sources.some((s) => sameSource(s, source))) {
        sources.push(source);
      }
    }
    const refused = (source: OriginSource): SourceFailure | undefined =>
      this.#refused.find((r) => sameSource(r.source, source));
    const next = sources.find(
      (source) => refused(source) === undefined && !asked.some((a) => sameSource(a, source)),
    );
    if (next !== undefined) {
      return next;
    }
    // The download's own outcome first: it is the one for whoever cannot be told their own.
    throw new SourcesFailedError(
      sources.map((source) => refused(source) ?? { source, answer: undefined }),
    );
  }

  /** Reads what the swarm did not deliver from the origin, with the clients' credentials. */
  async #fromOrigin(signal: AbortSignal): Promise<void> {
    const { metrics, pool } = this.#deps;
    const size = this.download.size;
    if (size === undefined || this.#picker.count === 0) {
      // Nothing is known about the pieces: the blob is read whole, in order, from what was
      // appended before on (of the size the download knows, if it does: then resumable
      // whatever the answer's headers say). It stays whole, from whichever source, when piece
      // hashes come meanwhile: the bytes it appended are not pieces the picker holds.
      const from = this.download.available;
      if (size === undefined && from > 0) {
        throw new Error(
          `the origin read stopped at byte ${String(from)} of a blob of unknown size`,
        );
      }
      const { opened, body } = await this.#originOpen(
        size === undefined ? undefined : { from, size },
        signal,
      );
      if (size === undefined && opened.size !== undefined) {
        // A whole read's answer (from byte 0): its length is the blob's.
        this.download.setSize(opened.size);
      }
      // No piece check: the download hashes the blob, whatever a record says.
      this.#unchecked = true;
      this.#releaseHash(0);
      for await (const block of body) {
        // The block is lent until the next: the download keeps a copy of its own.
        const copy = pool.take(block.length);
        copy.set(block);
        await this.download.append(copy, true);
        metrics.fetchedBytes.inc({ source: 'origin' }, block.length);
        this.tally.add('origin', block.length);
      }
      return;
    }
    for (const [first, last] of toRanges(this.#picker.missing())) {
      const from = first * this.#pieceSize;
      const until = Math.min(size, last * this.#pieceSize);
      const { body } = await this.#originOpen({ from, until, size }, signal);
      await this.#piecesFromStream(body, first, last);
    }
  }

  /**
   * Cuts an origin body from piece `first` on into pieces `[first, last)`, checking known
   * hashes; what comes after them is not read.
   */
  async #piecesFromStream(body: AsyncIterable<Buffer>, first: number, last: number): Promise<void> {
    const size = this.download.size ?? 0;
    let index = first;
    let bounds = pieceBounds(index, size, this.#pieceSize);
    let piece = this.#deps.pool.take(bounds.end - bounds.start);
    let filled = 0;
    for await (const chunk of body) {
      let rest = chunk;
      while (rest.length > 0 && index < last) {
        const take = Math.min(rest.length, piece.length - filled);
        rest.copy(piece, filled, 0, take);
        filled += take;
        rest = rest.subarray(take);
        if (filled === piece.length) {
          const expected = this.#hashes[index];
          if (
            expected !== undefined &&
            createHash('sha256').update(piece).digest('hex') !== expected
          ) {
            this.#deps.metrics.pieces.inc({ source: 'origin', result: 'bad' });
            throw new Error(`origin bytes of piece ${index} do not match its hash`);
          }
          if (!this.#picker.has(index)) {
            await this.download.writePiece(bounds.start, piece);
            this.#verifiedWith[index] = expected;
            this.#markHave(index);
            this.#deps.metrics.pieces.inc({ source: 'origin', result: 'ok' });
            this.#deps.metrics.fetchedBytes.inc({ source: 'origin' }, piece.length);
            this.tally.add('origin', piece.length);
          }
          index += 1;
          if (index < last) {
            bounds = pieceBounds(index, size, this.#pieceSize);
            piece = this.#deps.pool.take(bounds.end - bounds.start);
            filled = 0;
          }
        }
      }
      if (index >= last) {
        // A registry that ignores Range sends the rest of the blob too: its transfer is
        // cancelled as the loop ends.
        break;
      }
    }
    if (index < last) {
      throw new Error(`origin range ended at piece ${index} of ${last}`);
    }
  }
}
