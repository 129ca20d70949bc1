/**
 * Follows all of SHOAL_SWARM with an ordered consumer, from the first message, and feeds the
 * view. That replay is how a (re)started tracker rebuilds its view: the stream keeps the
 * latest have per (blob, peer) and the latest peer-gone per peer, which is the whole state.
 */
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { PEER_GONE_SUBJECTS, PIECE_HAVE_SUBJECTS, STREAMS } from '@shoal/proto';

import type { BlobShard } from '../shard/shard.js';
import { haveSubjectKey } from '../shard/shard.js';
import { handlePeerGone } from './peer-gone.js';
import { handlePieceHave } from './piece-have.js';
import { superviseConsumption, type ConsumeLoop } from '@shoal/runtime/nats';
import type { SwarmEvent, SwarmEventDeps } from './swarm-event.js';

/** Subject prefixes, from the wildcard subjects `shoal.swarm.v1.have.>` and `...gone.>`. */
const HAVE_PREFIX = PIECE_HAVE_SUBJECTS.slice(0, -1);
const GONE_PREFIX = PEER_GONE_SUBJECTS.slice(0, -1);

/** How often catch-up is re-checked against the stream when no message says so, in ms. */
const CATCH_UP_POLL_MS = 1_000;
/** Wait before reopening the consumer after a failure, in ms. */
const RETRY_DELAY_MS = 1_000;
/**
 * How often the stream is checked for having been made anew under a consumer that goes on,
 * in ms: in a NATS cluster, an R1 stream whose server came back with its volume lost is
 * re-created there by the cluster, same name and creation time, sequence from 0, and the
 * consumer comes back with it, positioned past the new stream's end. Nothing ends, so only
 * the stream's last sequence, fallen below the last one applied, tells.
 */
const STREAM_CHECK_MS = 5_000;

export interface SwarmStreamDeps extends SwarmEventDeps {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /**
   * This replica's share of the blobs: haves of other replicas' blobs are kept undecoded and
   * not applied. Undefined: every have is applied.
   */
  readonly shard?: BlobShard;
}

export class SwarmStreamConsumer {
  readonly #deps: SwarmStreamDeps;
  #loop: ConsumeLoop | undefined;
  #poll: NodeJS.Timeout | undefined;
  #streamCheck: NodeJS.Timeout | undefined;
  #caughtUp = false;
  /** Stream sequence of the last message handled, valid or not. */
  #lastSeq = 0;
  /** The stream's last sequence when the replay began: reaching it completes the replay. */
  #replayTo = 0;
  /** When the stream followed was created (its stream info's `created`). */
  #streamCreated: string | undefined;
  readonly #caughtUpWaiters: (() => void)[] = [];

  constructor(deps: SwarmStreamDeps) {
    this.#deps = deps;
  }

  /** True once the view has applied every message the stream held when it started. */
  get caughtUp(): boolean {
    return this.#caughtUp;
  }

  /** Starts following the stream; `whenCaughtUp` says when the replay is done. */
  async start(): Promise<void> {
    const { jsm, js, logger } = this.#deps;
    const info = await jsm.streams.info(STREAMS.swarm.name);
    const state = info.state;
    this.#streamCreated = info.created;
    logger.info(
      { stream: STREAMS.swarm.name, messages: state.messages, lastSeq: state.last_seq },
      'replaying the swarm stream',
    );
    this.#replayTo = state.last_seq;
    if (state.messages === 0) {
      this.#markCaughtUp();
    } else {
      this.#poll = setInterval(() => void this.#checkCaughtUp(), CATCH_UP_POLL_MS);
    }
    this.#loop = superviseConsumption({
      name: 'swarm',
      logger,
      retryDelayMs: RETRY_DELAY_MS,
      // Reopened after a failure, the consumer resumes after the last applied message, so a
      // reconnect does not replay the stream again; from the first one when the stream was
      // made anew.
      open: async () => {
        await this.#followRecreated();
        const next = this.#lastSeq + 1;
        const consumer = await js.consumers.get(
          STREAMS.swarm.name,
          next === 1
            ? { deliver_policy: DeliverPolicy.All }
            : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: next },
        );
        // Without `abort_on_missing_resource` nats.js re-creates a lost ordered consumer by
        // itself, after the last sequence it delivered: on a stream deleted and declared
        // again while this connection stayed up (another replica, or a server elsewhere in
        // a cluster, made it anew), that is past the new stream's end, and nothing here
        // would know to rebase. Ended instead, the loop reopens through `#followRecreated`.
        return consumer.consume({ abort_on_missing_resource: true });
      },
      handle: (msg) => this.#handle(msg),
    });
    this.#streamCheck = setInterval(() => void this.#checkStream(), STREAM_CHECK_MS);
    this.#streamCheck.unref();
  }

  /** Reopens the consumer when the stream was made anew under it (see `STREAM_CHECK_MS`). */
  async #checkStream(): Promise<void> {
    const { jsm, logger } = this.#deps;
    // Read before asking: messages applied while the answer comes are past its last sequence.
    const applied = this.#lastSeq;
    try {
      const info = await jsm.streams.info(STREAMS.swarm.name);
      if (info.state.last_seq < applied || info.created !== this.#streamCreated) {
        logger.warn(
          { lastApplied: applied, lastSeq: info.state.last_seq },
          'the swarm stream changed under its consumer; opening it again',
        );
        await this.#loop?.reopen();
      }
    } catch (error) {
      // Gone, or NATS away: the consumer's own end or the reconnect reopens it.
      logger.debug({ err: error }, 'swarm stream check failed');
    }
  }

  /** Resolves once caught up (see `caughtUp`), or at once when `signal` aborts. */
  whenCaughtUp(signal: AbortSignal): Promise<void> {
    if (this.#caughtUp || signal.aborted) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#caughtUpWaiters.push(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Opens the consumer again, after the last message applied, or from the first message of
   * a stream made anew (see `#followRecreated`). For a reconnect: the server that went away
   * took this ordered consumer with it, and the iterator would notice only after missing its
   * heartbeats, the view going stale meanwhile.
   */
  async reopen(): Promise<void> {
    await this.#loop?.reopen();
  }

  /**
   * Before each open: when the stream was made anew (a NATS server back with an empty store;
   * its creation time changed, or its last sequence is below the last one applied), its
   * sequence started over, so resuming after the last message applied would skip every new
   * one up to that number, and the view, ordered by the old sequence, would ignore the new
   * stream's withdrawals and departures. Then the view is rebased and the consumer starts
   * at the first message. Every replica sees it for itself, whichever made the stream; the
   * sequence is reset here, in the loop, so no open can use the old one.
   */
  async #followRecreated(): Promise<void> {
    const { jsm, view, shard, logger } = this.#deps;
    const info = await jsm.streams.info(STREAMS.swarm.name);
    const recreated =
      (this.#streamCreated !== undefined && info.created !== this.#streamCreated) ||
      info.state.last_seq < this.#lastSeq;
    this.#streamCreated = info.created;
    if (!recreated) {
      return;
    }
    logger.warn(
      { stream: STREAMS.swarm.name, lastApplied: this.#lastSeq, lastSeq: info.state.last_seq },
      'the swarm stream was made anew; following it from its first message',
    );
    this.#lastSeq = 0;
    view.rebase();
    shard?.rebase();
  }

  /** Stops following the stream; the view keeps what it has. */
  async stop(): Promise<void> {
    clearInterval(this.#poll);
    clearInterval(this.#streamCheck);
    await this.#loop?.stop();
  }

  #handle(msg: JsMsg): void {
    const event: SwarmEvent = {
      subject: msg.subject,
      data: msg.data,
      seq: msg.seq,
      publishedAtMs: Number(msg.timestampNanos / 1_000_000n),
    };
    if (event.subject.startsWith(HAVE_PREFIX)) {
      // Judged from the subject, before decoding: another replica's blob costs no parse.
      const shard = this.#deps.shard;
      const key = shard === undefined ? undefined : haveSubjectKey(event.subject);
      if (shard === undefined || key === undefined || shard.admit(event, key.blob, key.peer)) {
        handlePieceHave(event, this.#deps);
      }
    } else if (event.subject.startsWith(GONE_PREFIX)) {
      handlePeerGone(event, this.#deps);
    } else {
      // The stream's subjects are fixed, so this only happens if its configuration drifted.
      this.#deps.metrics.eventsRejected.inc({ type: 'unknown', reason: 'unknown-subject' });
      this.#deps.logger.warn({ subject: event.subject, seq: event.seq }, 'unexpected subject');
    }
    this.#lastSeq = Math.max(this.#lastSeq, msg.seq);
    // The stream's own sequence says when the replay is done; the consumer's `pending` can
    // start too high on a stream with deleted messages (nats-server 2.9) and never reach 0,
    // which left the catch-up to the poll.
    if (!this.#caughtUp && (msg.seq >= this.#replayTo || msg.info.pending === 0)) {
      this.#markCaughtUp();
    }
  }

  /**
   * The fallback for a replay that ends without a message saying `pending: 0`: the messages
   * left expired before they were delivered, or the stream was purged.
   */
  async #checkCaughtUp(): Promise<void> {
    try {
      const state = (await this.#deps.jsm.streams.info(STREAMS.swarm.name)).state;
      if (state.messages === 0 || state.last_seq <= this.#lastSeq) {
        this.#markCaughtUp();
      }
    } catch (error) {
      this.#deps.logger.debug({ err: error }, 'catch-up check failed');
    }
  }

  #markCaughtUp(): void {
    if (this.#caughtUp) {
      return;
    }
    this.#caughtUp = true;
    clearInterval(this.#poll);
    this.#deps.logger.info(
      { lastSeq: this.#lastSeq, entries: this.#deps.view.entryCount },
      'swarm view caught up',
    );
    for (const resolve of this.#caughtUpWaiters.splice(0)) {
      resolve();
    }
  }
}
