/**
 * The agent's side of the control plane: wants and haves published to JetStream, hand-outs
 * received on the agent's own core-NATS subject, piece hashes read from the seed server's
 * stream once per blob (direct gets, and the subject while the seed still hashes). Haves are
 * batched per blob and carry the full piece set, so the agent's message rate depends on what
 * it downloads, never on how many peers are in the swarm.
 */
import type { KeyObject } from 'node:crypto';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  encodeUnchecked,
  MAX_PIECE_RANGES,
  handout,
  handoutSubject,
  peerGone,
  peerGoneSubject,
  pieceHave,
  pieceHaveSubject,
  pieceWant,
  pieceWantSubject,
  seedIntake,
  seedIntakeSubject,
  type Handout,
  type PeerInfo,
  type PieceHashes,
  type PieceRanges,
  type PiecesVerified,
  type SeedFailed,
  type SeedIntake,
} from '@shoal/proto';
import { activeSpan, untilAborted, type Logger, type Span } from '@shoal/runtime';
import { followNatsLink, traceHeaders, type NatsLink } from '@shoal/runtime/nats';

import type { AgentMetrics } from '../metrics.js';
import { DirectGetCheck, readPieceHashes, type HashPath } from './hash-reader.js';
import { SourcePenalties } from './penalties.js';
import { followSeedRecord } from './seed-record.js';

/**
 * How long a publish may wait once the client is closing, in ms: a NATS outage at SIGTERM
 * costs the shutdown one such wait for the haves and one for peer-gone, not 5 s per queued
 * have (every blob cached since the outage), which ran past the deadline and exited 1.
 */
const CLOSE_PUBLISH_TIMEOUT_MS = 1_000;

/**
 * Publish failures that sending again cannot mend (this peer may not publish the subject, or
 * the subject is malformed): the have is dropped rather than retried with every batch. A
 * missing stream (no responders) is not one: a NATS server restarting answers so for a while.
 */
const PERMANENT_PUBLISH_ERRORS = new Set([
  'PermissionViolationError',
  'InvalidSubjectError',
  'InvalidArgumentError',
]);

function isPermanent(error: unknown): boolean {
  return error instanceof Error && PERMANENT_PUBLISH_ERRORS.has(error.name);
}

/**
 * The first wait before wants NATS refused on a connection that stays up are sent again, in
 * ms; it doubles while they keep failing, up to `WANT_RETRY_MAX_MS`.
 */
const WANT_RETRY_MS = 500;
const WANT_RETRY_MAX_MS = 4_000;

/**
 * A have or want publish not acknowledged for this long (ms) makes the agent unheard (see
 * `SwarmClient.unheard`) until it settles. An ack normally takes milliseconds; a stream whose
 * leader went with its server holds a publish sent to it for the whole request timeout (5 s),
 * and every have queued after it waits too, with nothing failed yet to tell.
 */
const LATE_ACK_MS = 1500;

/** A publish still unacknowledged when the connection was made anew. */
class ReconnectedError extends Error {
  constructor() {
    super('NATS reconnected before the publish was acknowledged');
    this.name = 'ReconnectedError';
  }
}

export interface WantRequest {
  readonly blob: string;
  readonly registry: string;
  readonly repository: string;
  readonly have: PieceRanges;
}

interface PendingHave {
  pieces: PieceRanges;
  complete: boolean;
}

export class SwarmClient {
  readonly self: PeerInfo;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #directGets: DirectGetCheck;
  readonly #uploads: boolean;
  readonly #logger: Logger;
  readonly #metrics: AgentMetrics;
  readonly #listeners = new Map<string, Set<(h: Handout) => void>>();
  readonly #pendingHaves = new Map<string, PendingHave>();
  readonly #haveIntervalMs: number;
  /** Armed while haves are queued, so an agent with nothing to announce runs no timer. */
  #haveTimer: NodeJS.Timeout | undefined;
  #subscription: Subscription | undefined;
  #closed = false;
  /** The last have publish failed (NATS away): logged once per outage, not tried at close. */
  #publishFailing = false;
  /** A want NATS did not take waits to be sent again (see `unheard`). */
  #wantsFailing = false;
  /** The last have publish failed for a reason sending again can mend (see `unheard`). */
  #havesFailing = false;
  /** Told when this agent becomes unheard (see `unheard`). */
  readonly #unheardListeners = new Set<() => void>();
  /** The have and want publishes awaiting their acknowledgement, by when each went (ms). */
  readonly #unacked = new Set<{ readonly sinceMs: number }>();
  #flushing: Promise<void> = Promise.resolve();
  /** The connection's state; followed from the first `start` (which runs again when hand-outs fail). */
  #natsLink: NatsLink | undefined;
  /** Told when the connection to NATS goes down (a download with no source stops waiting). */
  readonly #natsDownListeners = new Set<() => void>();
  /**
   * Aborted (and replaced) when the connection is made anew: a have published on the old
   * one, to a server that vanished silently, never gets its acknowledgement, and waiting out
   * its timeout held every later have back for seconds after NATS was back.
   */
  #connection = new AbortController();
  /**
   * Wants NATS did not take, by blob, with the order they were made in: sent again once it is
   * back (see `want`). Only the latest of a blob is kept: a resent older want that fails or
   * succeeds after a newer one failed neither replaces nor drops it.
   */
  readonly #lostWants = new Map<
    string,
    { readonly request: WantRequest; readonly order: number; sending: boolean }
  >();
  /** The order of the next want made (see `#lostWants`). */
  #wantOrder = 0;
  /** Sends the lost wants again while the connection stays up (see `#retryLostWants`). */
  #wantRetryTimer: NodeJS.Timeout | undefined;
  #wantRetryMs = WANT_RETRY_MS;
  /** Download spans that have their first want recorded. */
  readonly #wantMarked = new WeakSet<Span>();
  /** Peers every download leaves alone for now (a bad piece, refused connections). */
  readonly #penalties: SourcePenalties;
  /** The seed servers' record public keys; empty: no record is trusted (nor read). */
  readonly #recordKeys: readonly KeyObject[];
  /** A download trusted a seed's record since this agent started (`recordTrusted`). */
  #recordsCome = false;

  constructor(options: {
    nc: NatsConnection;
    js: JetStreamClient;
    /** For direct gets of piece hashes. */
    jsm: JetStreamManager;
    self: PeerInfo;
    /** False for a leecher: it announces nothing, so nobody asks it for pieces. */
    uploads: boolean;
    haveIntervalMs: number;
    logger: Logger;
    metrics: AgentMetrics;
    /** The penalties' clock, in ms (default `Date.now`; tests pass a fake one). */
    now?: () => number;
    /** The seed servers' record public keys (`SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE`). */
    recordKeys?: readonly KeyObject[];
  }) {
    this.#penalties = new SourcePenalties(options.now);
    this.#recordKeys = options.recordKeys ?? [];
    this.self = options.self;
    this.#nc = options.nc;
    this.#js = options.js;
    this.#jsm = options.jsm;
    this.#directGets = new DirectGetCheck(options.jsm);
    this.#uploads = options.uploads;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#haveIntervalMs = options.haveIntervalMs;
  }

  /** Starts receiving hand-outs; a subscription that fails is reopened after a second. */
  start(): void {
    if (this.#natsLink === undefined) {
      this.#natsLink = followNatsLink(this.#nc, (up) => {
        this.#metrics.natsConnected.set(up ? 1 : 0);
        if (up) {
          this.#connection.abort();
          this.#connection = new AbortController();
          this.#resendLostWants();
        } else {
          for (const listener of this.#natsDownListeners) {
            listener();
          }
          this.#tellUnheard();
        }
      });
      this.#metrics.natsConnected.set(this.#natsLink.up ? 1 : 0);
    }
    const subscription = this.#nc.subscribe(handoutSubject(this.self.id));
    this.#subscription = subscription;
    void (async () => {
      try {
        for await (const msg of subscription) {
          const decoded = decodeMessage(handout, msg.data);
          if (!decoded.ok) {
            this.#metrics.eventsRejected.inc({ type: 'handout' });
            this.#logger.warn({ error: decoded.error.slice(0, 512) }, 'invalid hand-out dropped');
            continue;
          }
          this.#metrics.eventsReceived.inc({ type: 'handout' });
          // A source named again after refusing may be back (a restarted seed server is named
          // as soon as it announces): its doubled penalty is cut back (`handedOut`).
          for (const entry of decoded.value.peers) {
            this.#penalties.handedOut(entry.peer.id);
          }
          for (const listener of this.#listeners.get(decoded.value.blob) ?? []) {
            listener(decoded.value);
          }
        }
      } catch (error) {
        // A permissions violation or a server error ends the subscription; downloads fall
        // back to the origin meanwhile, so keep trying rather than crash the mirror.
        this.#logger.error({ err: error }, 'hand-out subscription failed; reopening');
        if (!this.#closed) {
          setTimeout(() => {
            if (!this.#closed) {
              this.start();
            }
          }, 1000).unref();
        }
      }
    })();
  }

  /**
   * Since when (ms) NATS has been unreachable: the connection dropped (closed by the server,
   * or given up after unanswered pings) and is not back yet. Undefined while it is up.
   */
  get natsDownSince(): number | undefined {
    return this.#natsLink?.downSince;
  }

  /**
   * True while this agent's haves or wants do not reach the swarm's streams: NATS is down for
   * it, the last publish of either failed (a JetStream cluster electing a stream's new
   * leader after a server went refuses them for seconds on a connection that stays up), or
   * one has waited for its acknowledgement longer than `LATE_ACK_MS`. Both are sent again
   * until NATS takes them, which ends it. Told to the seed server with each
   * piece request (`PIECE_UNHEARD_HEADER`): sent to the agent that got a piece, this one
   * could not learn which.
   */
  get unheard(): boolean {
    const late = this.lateAckAtMs;
    return (
      this.#natsLink?.up === false ||
      this.#wantsFailing ||
      this.#havesFailing ||
      (late !== undefined && Date.now() >= late)
    );
  }

  /**
   * When (ms since the epoch) the oldest have or want publish still awaiting its
   * acknowledgement makes this agent unheard (`LATE_ACK_MS` after it went), or undefined when
   * none is pending. `onUnheard` tells it then.
   */
  get lateAckAtMs(): number | undefined {
    let oldest: number | undefined;
    for (const { sinceMs } of this.#unacked) {
      oldest = oldest === undefined ? sinceMs : Math.min(oldest, sinceMs);
    }
    return oldest === undefined ? undefined : oldest + LATE_ACK_MS;
  }

  /** Waits for a have or want publish's acknowledgement, counted while pending (see `lateAckAtMs`). */
  async #acked(published: Promise<unknown>, connection: AbortSignal): Promise<void> {
    const entry = { sinceMs: Date.now() };
    this.#unacked.add(entry);
    // Late: the downloads are told then (one waiting would not look again before its next event).
    const late = setTimeout(() => this.#tellUnheard(), LATE_ACK_MS);
    late.unref();
    try {
      await untilAborted(published, connection, () => new ReconnectedError());
    } finally {
      clearTimeout(late);
      this.#unacked.delete(entry);
    }
  }

  /** Calls `listener` each time this agent becomes unheard (see `unheard`), until the returned function is called. */
  onUnheard(listener: () => void): () => void {
    this.#unheardListeners.add(listener);
    return () => this.#unheardListeners.delete(listener);
  }

  /** Records whether the last want or have publish failed; tells the listeners when it makes this agent unheard. */
  #publishFailed(kind: 'want' | 'have', failed: boolean): void {
    const before = this.unheard;
    if (kind === 'want') {
      this.#wantsFailing = failed;
    } else {
      this.#havesFailing = failed;
    }
    // Failed: unheard now, whatever it was.
    if (failed && !before) {
      this.#tellUnheard();
    }
  }

  #tellUnheard(): void {
    for (const listener of this.#unheardListeners) {
      listener();
    }
  }

  /** Calls `listener` each time the connection to NATS goes down, until the returned function is called. */
  onNatsDown(listener: () => void): () => void {
    this.#natsDownListeners.add(listener);
    return () => this.#natsDownListeners.delete(listener);
  }

  /**
   * Calls `onNotice` with each `seed-intake` notice about `blob` (the seed server still taking
   * it in while none of its pieces lands) until the returned function is called (once or
   * more): one core subscription per download. An invalid notice is counted, logged and
   * dropped.
   */
  onSeedIntake(blob: string, onNotice: (notice: SeedIntake) => void): () => void {
    let subscription: Subscription | undefined;
    try {
      subscription = this.#nc.subscribe(seedIntakeSubject(blob), {
        callback: (error, message) => {
          if (error !== null) {
            return;
          }
          const decoded = decodeMessage(seedIntake, message.data);
          if (!decoded.ok || decoded.value.blob !== blob) {
            this.#metrics.eventsRejected.inc({ type: 'seed-intake' });
            this.#logger.warn({ blob }, 'an invalid seed-intake notice; ignored');
            return;
          }
          this.#metrics.eventsReceived.inc({ type: 'seed-intake' });
          onNotice(decoded.value);
        },
      });
    } catch (error) {
      // The connection is closed: no notice comes, and the download waits as without them.
      this.#logger.debug({ blob, err: error }, 'seed-intake notices not followed');
    }
    return () => {
      // Called once the download is done with the swarm, and again at its end.
      subscription?.unsubscribe();
      subscription = undefined;
    };
  }

  /** Calls `listener` with every hand-out for `blob` until the returned function is called. */
  onHandout(blob: string, listener: (h: Handout) => void): () => void {
    let set = this.#listeners.get(blob);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(blob, set);
    }
    // The first hand-out is a phase of the download's timeline, recorded in its span.
    const span = activeSpan();
    let first = true;
    const heard = (h: Handout): void => {
      if (first) {
        first = false;
        span?.addEvent('first hand-out received', { 'shoal.peers': h.peers.length });
      }
      listener(h);
    };
    set.add(heard);
    return () => {
      set.delete(heard);
      if (set.size === 0) {
        this.#listeners.delete(blob);
      }
    };
  }

  /** Keeps a peer that sent a bad piece out of every download for `ms`. */
  penalize(peer: string, ms: number): void {
    this.#penalties.penalize(peer, ms);
  }

  /** A peer refused a connection: see `SourcePenalties.refused`. */
  refused(peer: string, baseMs: number, maxMs: number): void {
    this.#penalties.refused(peer, baseMs, maxMs);
  }

  /** A peer answered a piece request: its refused connections are forgotten. */
  answered(peer: string): void {
    this.#penalties.answered(peer);
  }

  /**
   * Peers this agent cannot get pieces from (see `SourcePenalties`): those that refused
   * connections lately and have not answered since, the latest first, then those that sent
   * a bad piece, under its penalty.
   */
  notFromPeers(): string[] {
    const peers = this.#penalties.unreachable();
    for (const peer of this.#penalties.corrupting()) {
      if (!peers.includes(peer)) {
        peers.push(peer);
      }
    }
    return peers;
  }

  /** True while a peer is penalised. */
  isPenalized(peer: string): boolean {
    return this.#penalties.isPenalized(peer);
  }

  /** When a peer's penalty ends (ms), or undefined when it has none now. */
  penaltyEnds(peer: string): number | undefined {
    return this.#penalties.penaltyEnds(peer);
  }

  /**
   * Asks the tracker for peers. Failures are logged: the download goes on (or falls back).
   * The want carries the active trace context, so the tracker's answer joins the trace.
   */
  async want(request: WantRequest): Promise<void> {
    await this.#publishWant(request, this.#wantOrder++);
  }

  /** Publishes a want made `order`-th (see `#lostWants`); see `want`. */
  async #publishWant(request: WantRequest, order: number): Promise<void> {
    const headers = traceHeaders();
    const connection = this.#connection.signal;
    try {
      const published = this.#js.publish(
        pieceWantSubject(request.blob, this.self.id),
        encodeMessage(pieceWant, {
          type: 'piece-want',
          blob: request.blob,
          peer: this.self,
          have: request.have,
          registry: request.registry,
          repository: request.repository,
          limit: 16,
        }),
        headers === undefined ? undefined : { headers },
      );
      await this.#acked(published, connection);
      if ((this.#lostWants.get(request.blob)?.order ?? Infinity) <= order) {
        this.#lostWants.delete(request.blob);
      }
      this.#wantRetryMs = WANT_RETRY_MS;
      // Heard again once no lost want waits any more (the others go again soon).
      this.#publishFailed('want', this.#lostWants.size > 0);
      this.#metrics.eventsPublished.inc({ type: 'piece-want' });
      // The first want of a download is a phase of its timeline; the rest would only fill
      // its span with events.
      const span = activeSpan();
      if (span !== undefined && !this.#wantMarked.has(span)) {
        this.#wantMarked.add(span);
        span.addEvent('piece-want stored');
      }
    } catch (error) {
      // Once per run of failures (a retry that fails again says so at debug).
      const retrying = this.#wantRetryMs > WANT_RETRY_MS;
      this.#logger[retrying ? 'debug' : 'warn'](
        { err: error, blob: request.blob },
        'could not publish a want',
      );
      if (this.#closed || isPermanent(error)) {
        return;
      }
      this.#publishFailed('want', true);
      // Kept for the next connection: a blob read from the origin while NATS was away has
      // no piece hashes (only a seed server publishes them, and only when a want asks for
      // one), and once its haves are in, the tracker counts this node as able to finish it
      // and asks no seed: every later pull of it would stall and read the origin too.
      if ((this.#lostWants.get(request.blob)?.order ?? -1) <= order) {
        this.#lostWants.set(request.blob, { request, order, sending: false });
      }
      if (error instanceof ReconnectedError) {
        // The connection it went out on is gone; the new one is up.
        this.#resendLostWants();
      } else {
        this.#retryLostWants();
      }
    }
  }

  /**
   * Sends the lost wants again after a short wait, doubling while they keep failing. NATS
   * refused them on a connection that may stay up (a JetStream cluster electing the stream's
   * new leader after a server went answers "no responders" for seconds): no reconnect would
   * resend them, and the download, which counts its want as asked, waited its unanswered-want
   * gap (8 s and more) before asking again.
   */
  #retryLostWants(): void {
    if (this.#wantRetryTimer !== undefined || this.#closed) {
      return;
    }
    const waitMs = this.#wantRetryMs;
    this.#wantRetryMs = Math.min(WANT_RETRY_MAX_MS, waitMs * 2);
    this.#wantRetryTimer = setTimeout(() => {
      this.#wantRetryTimer = undefined;
      // While NATS is down, its reconnection resends them.
      if (this.#natsLink?.up !== false) {
        this.#resendLostWants();
      }
    }, waitMs);
    this.#wantRetryTimer.unref();
  }

  /** Publishes again the wants NATS did not take (see `want`), the latest of each blob. */
  #resendLostWants(): void {
    for (const lost of this.#lostWants.values()) {
      // Kept until a copy of it is taken (or a newer want replaces it); one copy at a time.
      if (!lost.sending) {
        lost.sending = true;
        void this.#publishWant(lost.request, lost.order);
      }
    }
  }

  /**
   * Queues the pieces now held of `blob`; sent with the next batch, at most the have interval
   * after the first have queued since the last batch went.
   */
  announce(blob: string, pieces: PieceRanges, complete: boolean): void {
    if (!this.#uploads) {
      return;
    }
    this.#pendingHaves.set(blob, { pieces, complete });
    this.#scheduleHaves();
  }

  /** Sends the queued haves the have interval from now, unless a batch is already due. */
  #scheduleHaves(): void {
    if (this.#haveTimer === undefined && !this.#closed) {
      this.#haveTimer = setTimeout(() => {
        this.#haveTimer = undefined;
        void this.flushHaves();
      }, this.#haveIntervalMs);
      this.#haveTimer.unref();
    }
  }

  /** Sends the queued haves now, after any flush still in progress, so order is kept. */
  flushHaves(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#flushHaves());
    return this.#flushing;
  }

  async #flushHaves(): Promise<void> {
    const batch = [...this.#pendingHaves];
    this.#pendingHaves.clear();
    for (const [blob, have] of batch) {
      if (this.#closed && this.#publishFailing) {
        // Every other have would wait its timeout too, past the shutdown's deadline: the
        // tracker learns of them from this peer's next start, or forgets them with peer-gone.
        break;
      }
      try {
        const message = {
          type: 'piece-have' as const,
          blob,
          peer: this.self,
          pieces: have.pieces,
          complete: have.complete,
          seed: false,
        };
        const published = this.#js.publish(
          pieceHaveSubject(blob, this.self.id),
          // Not validated again (see `encodeUnchecked`): the digest the mirror parsed, this
          // agent's validated configuration, and a piece set made from its own bitmap. A set
          // of more runs than a message may carry (a blob of over 8,192 pieces held in
          // scattered runs) is refused here, as before, not stored for every tracker to refuse.
          have.pieces.length > MAX_PIECE_RANGES
            ? encodeMessage(pieceHave, message)
            : encodeUnchecked(pieceHave, message),
          this.#closed ? { timeout: CLOSE_PUBLISH_TIMEOUT_MS } : {},
        );
        // Sent again over the new connection at once (a have says the whole piece set, so a
        // copy that did arrive changes nothing).
        await this.#acked(published, this.#connection.signal);
        this.#metrics.eventsPublished.inc({ type: 'piece-have' });
        this.#publishFailing = false;
        this.#publishFailed('have', false);
      } catch (error) {
        const first = !this.#publishFailing;
        this.#publishFailing = true;
        // A have refused for good (a permissions violation) is dropped, and says nothing of
        // whether the swarm hears the others.
        if (!isPermanent(error)) {
          this.#publishFailed('have', true);
        }
        // A have lost to a NATS outage (a server restarting) would leave the tracker without
        // these pieces until the next re-announcement, minutes away, and peers would stall on
        // them and read them from the origin: it goes with the next batch, unless a newer
        // have of the blob (which says as much or more) was queued meanwhile.
        const requeued = !this.#pendingHaves.has(blob) && !this.#closed && !isPermanent(error);
        if (requeued) {
          this.#pendingHaves.set(blob, have);
          this.#scheduleHaves();
        }
        // Once per outage: every have fails the same way until NATS is back.
        if (first) {
          this.#logger.warn({ err: error, blob, requeued }, 'could not publish a have');
        } else {
          this.#logger.debug({ err: error, blob, requeued }, 'could not publish a have');
        }
      }
    }
  }

  /**
   * Delivers a blob's piece hashes to `onBatch` until every piece's hash has come or
   * `signal` aborts: the stored batches by direct get, new ones live while the seed still
   * hashes (cut-through), no consumer per download (see `hash-reader.ts`). A seed server that
   * gives the blob up says so on the same subject: `onSeedFailed`. `path` says how a batch
   * came: `live` while the seed server publishes it, `stored` (or `consumer`) read back.
   */
  followHashes(
    blob: string,
    signal: AbortSignal,
    onBatch: (batch: PieceHashes, path: HashPath) => void,
    onSeedFailed?: (notice: SeedFailed) => void,
  ): Promise<void> {
    return readPieceHashes(
      {
        nc: this.#nc,
        js: this.#js,
        jsm: this.#jsm,
        directGets: this.#directGets,
        metrics: this.#metrics,
        logger: this.#logger,
      },
      blob,
      signal,
      onBatch,
      onSeedFailed,
    );
  }

  /**
   * True once a download of this agent trusted a seed's signed record: the seed servers sign
   * their records, so a download can expect one for its blob (see `SwarmFetch`'s hash hold).
   */
  get recordsCome(): boolean {
    return this.#recordsCome;
  }

  /** A download trusted a seed's signed record (see `recordsCome`). */
  recordTrusted(): void {
    this.#recordsCome = true;
  }

  /**
   * Follows `blob`'s signed `pieces-verified` record until `signal` aborts: `onRecord` gets it
   * once, when one of the seed servers' record keys signed it. Undefined (nothing followed)
   * when this agent holds no record key.
   */
  followRecord(
    blob: string,
    signal: AbortSignal,
    onRecord: (record: PiecesVerified) => void,
  ): Promise<void> | undefined {
    if (this.#recordKeys.length === 0) {
      return undefined;
    }
    return followSeedRecord(
      {
        nc: this.#nc,
        jsm: this.#jsm,
        directGets: this.#directGets,
        keys: this.#recordKeys,
        metrics: this.#metrics,
        logger: this.#logger,
      },
      blob,
      signal,
      onRecord,
    );
  }

  /** Flushes haves, tells the swarm this peer is leaving, and stops receiving. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#haveTimer);
    this.#haveTimer = undefined;
    clearTimeout(this.#wantRetryTimer);
    this.#wantRetryTimer = undefined;
    if (this.#publishFailing) {
      // NATS is away: the haves left would each wait their timeout, past the shutdown's
      // deadline (and a flush in progress stops at its next have). Only peer-gone is tried.
      this.#logger.warn(
        { haves: this.#pendingHaves.size },
        'NATS unreachable at close: haves not sent',
      );
      this.#pendingHaves.clear();
    } else {
      await this.flushHaves();
    }
    if (this.#uploads) {
      // Best effort, bounded: NATS away at close must not cost the shutdown its deadline.
      await this.#js
        .publish(
          peerGoneSubject(this.self.id),
          encodeMessage(peerGone, { type: 'peer-gone', peer: this.self.id }),
          { timeout: CLOSE_PUBLISH_TIMEOUT_MS },
        )
        .catch(() => undefined);
    }
    this.#subscription?.unsubscribe();
  }
}
