/**
 * piece-want events from SHOAL_WANTS: every replica pulls from one durable consumer, so each
 * want is answered by one replica. The answer is a hand-out on the asker's core-NATS
 * subject and, when nobody can finish the blob, a seed request. Pulled wants wait in a
 * coalescing queue (one per blob and asker, the latest) until they are answered.
 *
 * With blobs split between replicas (`../shard`), a replica that pulls a want for another
 * replica's blob forwards it to that replica (core-NATS request) and acknowledges it once
 * that one answered; the want stays in JetStream until then, so a replica that dies loses
 * none. A replica that cannot get an answer from the owner answers the want itself.
 */
import { setImmediate } from 'node:timers/promises';

import { type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import {
  headers as natsHeaders,
  NoRespondersError,
  RequestError,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  encodeUnchecked,
  forwardedWantSubject,
  handout,
  handoutSubject,
  pieceWant,
  pieceWantSubject,
  legacyPieceWantSubject,
  rangesSize,
  STREAMS,
  wantForwarded,
  type Handout,
  type PieceHave,
  type PieceWant,
  type WantForwarded,
} from '@shoal/proto';
import { EventLoopSlice, SpanKind, withSpan, type Context, type Logger } from '@shoal/runtime';

import type { LoadTracker } from '../handout/load.js';
import type { HandoutTokens } from '../handout/tokens.js';
import { choosePeers, sampleWindow, type SwarmMember } from '../handout/policy.js';
import type { WaitingAskers } from '../handout/waiting.js';
import type { TrackerMetrics } from '../metrics.js';
import type { SeedRequester } from '../seed/requests.js';
import type { ClockOffsets } from '../shard/clock-offsets.js';
import type { BlobShard } from '../shard/shard.js';
import type { SwarmView } from '../swarm/view.js';
import { CoalescingQueue } from '../wants/queue.js';
import {
  contextFromHeaders,
  ensureConsumer,
  superviseConsumption,
  traceHeaders,
  type ConsumeLoop,
} from '@shoal/runtime/nats';
import { LogGate } from '../log-gate.js';
import { MAX_LOGGED_ERROR } from './swarm-event.js';

/** The durable consumer every tracker replica shares (`<service>-<purpose>`). */
export const WANTS_CONSUMER = 'tracker-wants';
/** How long a delivered want may stay unacknowledged before another replica gets it, in ms. */
const ACK_WAIT_MS = 10_000;
/** Deliveries of one want before it is given up (the agent asks again, or falls back). */
const MAX_DELIVER = 5;
/**
 * Wants delivered and not yet acknowledged, over all replicas. Large enough for the replicas'
 * queues to hold a want per (blob, asker) of a 10 000-node rollout, so wants coalesce in the
 * queues rather than wait in the stream first-in first-out.
 */
const MAX_ACK_PENDING = 20_000;
/** Wants pulled per request. */
const PULL_BATCH = 64;
/** Redelivery delay after a transient failure, in ms. */
const NAK_DELAY_MS = 1_000;
/** Wait before reopening the consumer after a failure, in ms. */
const RETRY_DELAY_MS = 1_000;
/**
 * How long a forwarded want waits for the owner's answer before this replica answers it
 * itself, in ms: well within the ack wait, so JetStream does not give it to another replica
 * meanwhile, and short enough that an owner that fell behind costs its askers little.
 */
const FORWARD_TIMEOUT_MS = 2_000;
/**
 * How long before the forwarding replica stops waiting the owner stops answering, in ms: the
 * owner's reply must reach the forwarder before its timeout, or both would answer the asker.
 */
const FORWARD_MARGIN_MS = 500;
/** Header carrying a forwarded want's JetStream timestamp, in ms since the epoch. */
const PUBLISHED_HEADER = 'Shoal-Want-Published-Ms';
/**
 * Header carrying the time after which the owner must not answer a forwarded want (the
 * forwarder answers it itself then), in ms since the epoch on the forwarder's clock. Absolute,
 * so that an owner that was paused finds out when it resumes; the owner reads it on its own
 * clock through the offset it measured from the forwarder's heartbeats (`ClockOffsets`), so
 * the replicas' clocks need not agree.
 */
const DEADLINE_HEADER = 'Shoal-Forward-Deadline-Ms';
/** Header naming the replica that forwarded a want: whose clock its deadline is on. */
const FORWARDER_HEADER = 'Shoal-Forwarded-By';
/** At most one warning per this many ms for each kind of repeated forwarding failure. */
const WARN_INTERVAL_MS = 10_000;

/**
 * Creates the shared durable consumer, or updates it to this configuration; true when it had
 * to create it. Two replicas starting together may both create it: an identical create
 * succeeds.
 */
export function ensureWantsConsumer(jsm: JetStreamManager): Promise<boolean> {
  return ensureConsumer(jsm, STREAMS.wants.name, WANTS_CONSUMER, {
    ackWaitMs: ACK_WAIT_MS,
    maxDeliver: MAX_DELIVER,
    maxAckPending: MAX_ACK_PENDING,
  });
}

export interface WantDeps {
  readonly nc: NatsConnection;
  readonly view: SwarmView;
  readonly load: LoadTracker;
  readonly seeds: SeedRequester;
  /** Signs the asker's token; undefined when piece authentication is off. */
  readonly tokens: HandoutTokens | undefined;
  readonly metrics: TrackerMetrics;
  readonly logger: Logger;
  /** Current time in ms since the epoch. */
  readonly now: () => number;
  /**
   * Askers whose hand-out named no holder yet: they get a new one as soon as a holder's have
   * is applied (`pushWaitingHandouts`). Undefined: they hear of it with their next want.
   */
  readonly waiting?: WaitingAskers<Waiter>;
  /**
   * Askers this replica answered with a holder, until their download completes: each of
   * their haves (a batch of new pieces) is answered with a fresh hand-out for what they still
   * lack (`pushOnProgress`), so a download in progress needs no want to refresh its peers.
   * Undefined: they hear of new holders with their next want.
   */
  readonly following?: WaitingAskers<Waiter>;
  /**
   * This replica's share of the blobs: wants for others' blobs are forwarded to their owner.
   * Undefined: this replica answers every want it pulls.
   */
  readonly shard?: BlobShard;
  /** Takes a replica nobody answers for out of the live set (see `ReplicaMembership`). */
  readonly dropReplica?: (id: string) => void;
}

/** An asker waiting for a blob's first holder: its latest want and the trace it came in. */
export interface Waiter {
  readonly want: PieceWant;
  readonly parent: Context;
}

/**
 * A want that passed its checks, pulled from the stream or forwarded by another replica, and
 * how to settle it.
 */
export interface ReceivedWant {
  readonly want: PieceWant;
  /** The want's NATS headers (trace context). */
  readonly headers: MsgHdrs | undefined;
  /** When JetStream stored the want, in ms since the epoch. */
  readonly publishedAtMs: number;
  /** The subject it came on, for the trace. */
  readonly subject: string;
  /** Answered, or replaced by a newer want of the same asker: done with. */
  ack(): void;
  /** Not answered now: to be delivered again after `delayMs`. */
  nak(delayMs?: number): void;
  /** Set for a want forwarded by another replica: this replica does not hold its blob. */
  readonly notOwner?: () => void;
  /**
   * For a want forwarded by another replica: past this time (ms since the epoch) the
   * forwarder answers it itself, so this replica drops it without a word.
   */
  readonly deadlineMs?: number;
  /** The pulled message, for a want pulled from the stream. */
  readonly msg?: JsMsg;
}

/**
 * Sends a pulled want's `what` (ack, nak, progress): on a closed connection that throws, and
 * JetStream delivers the want again after the ack wait anyway, so it is only logged.
 */
function settlePulled(msg: JsMsg, what: string, send: () => void, logger: Logger): void {
  try {
    send();
  } catch (error) {
    logger.debug({ err: error, seq: msg.seq }, `piece-want ${what} not sent`);
  }
}

/** A want pulled from SHOAL_WANTS. */
function pulledWant(msg: JsMsg, want: PieceWant, logger: Logger): ReceivedWant {
  const settle = (what: string, send: () => void): void => settlePulled(msg, what, send, logger);
  return {
    want,
    headers: msg.headers,
    publishedAtMs: Number(msg.timestampNanos / 1_000_000n),
    subject: msg.subject,
    ack: () => settle('ack', () => msg.ack()),
    nak: (delayMs) => settle('nak', () => msg.nak(delayMs)),
    msg,
  };
}

/** A positive number of ms since the epoch from header `name`, or undefined. */
function headerMs(headers: MsgHdrs | undefined, name: string): number | undefined {
  const value = Number(headers?.get(name));
  return Number.isFinite(value) && value > 0 ? value : undefined;
}

/** Replies `outcome` to a forwarded want; a closed connection leaves the forwarder to time out. */
function replyForwarded(msg: Msg, outcome: WantForwarded['outcome'], logger: Logger): void {
  try {
    msg.respond(encodeMessage(wantForwarded, { type: 'want-forwarded', outcome }));
  } catch (error) {
    logger.debug({ err: error, outcome }, 'forwarded want reply not sent');
  }
}

/**
 * A want another replica forwarded (see `forwardedWantSubject`); its reply settles it.
 * `clocks`: how far the forwarders' clocks are from this one's, to read its deadline.
 */
function forwardedWant(
  msg: Msg,
  want: PieceWant,
  nowMs: number,
  clocks: ClockOffsets | undefined,
  logger: Logger,
): ReceivedWant {
  const remoteDeadlineMs = headerMs(msg.headers, DEADLINE_HEADER);
  const forwarder = msg.headers?.get(FORWARDER_HEADER) ?? '';
  const deadlineMs =
    remoteDeadlineMs === undefined || clocks === undefined || forwarder === ''
      ? remoteDeadlineMs
      : clocks.toLocal(forwarder, remoteDeadlineMs);
  return {
    want,
    headers: msg.headers,
    publishedAtMs: headerMs(msg.headers, PUBLISHED_HEADER) ?? nowMs,
    subject: msg.subject,
    ack: () => replyForwarded(msg, 'answered', logger),
    nak: () => replyForwarded(msg, 'retry', logger),
    notOwner: () => replyForwarded(msg, 'not-owner', logger),
    ...(deadlineMs === undefined ? {} : { deadlineMs }),
  };
}

/**
 * True when `received` was forwarded and its forwarder no longer waits for the answer: then
 * it is dropped unanswered (the forwarder answers it), counted by `stage`.
 */
function forwardExpired(
  received: ReceivedWant,
  deps: Pick<WantDeps, 'metrics' | 'now'>,
  stage: 'arrival' | 'queue' | 'seed-request',
): boolean {
  if (received.deadlineMs === undefined || deps.now() <= received.deadlineMs) {
    return false;
  }
  deps.metrics.forwardedWantsExpired.inc({ stage });
  return true;
}

/**
 * Answers one want: a hand-out to the asker, a seed request when nobody can finish the blob,
 * then the ack. Never throws: an invalid want is terminated, a transient failure nak'ed.
 *
 * It runs in a CONSUMER span whose parent is the want's trace context (the asking agent's
 * download), and the hand-out and seed request carry this span's context on.
 */
export function handleWant(received: ReceivedWant, deps: WantDeps): Promise<void> {
  return withSpan(
    'piece-want process',
    {
      kind: SpanKind.CONSUMER,
      parent: contextFromHeaders(received.headers),
      attributes: {
        'messaging.destination.name': received.subject,
        ...(received.msg === undefined ? {} : { 'messaging.message.id': received.msg.seq }),
      },
    },
    () => answerWant(received, deps),
  );
}

/**
 * The want a message carries, or undefined when it is invalid or filed under another blob's
 * subject (then it is terminated, logged and counted).
 */
export function checkWant(
  msg: JsMsg,
  deps: Pick<WantDeps, 'metrics' | 'logger'>,
): PieceWant | undefined {
  const { metrics, logger } = deps;
  const decoded = decodeMessage(pieceWant, msg.data);
  if (!decoded.ok) {
    metrics.eventsRejected.inc({ type: 'piece-want', reason: 'invalid' });
    logger.warn(
      { subject: msg.subject, seq: msg.seq, error: decoded.error.slice(0, MAX_LOGGED_ERROR) },
      'invalid piece-want terminated',
    );
    // No reason given: nats-server before 2.11 does not parse `+TERM <reason>` and would
    // leave the message pending. The log line above carries the reason.
    msg.term();
    return undefined;
  }
  const want = decoded.value;
  // The asker's peer id is in the subject, where per-node NATS permissions hold each agent to
  // its own; the subject without it is what agents before per-node identity publish.
  if (
    msg.subject !== pieceWantSubject(want.blob, want.peer.id) &&
    msg.subject !== legacyPieceWantSubject(want.blob)
  ) {
    metrics.eventsRejected.inc({ type: 'piece-want', reason: 'subject-mismatch' });
    logger.warn(
      { subject: msg.subject, seq: msg.seq, blob: want.blob },
      'piece-want on a subject that does not match its blob terminated',
    );
    msg.term();
    return undefined;
  }
  metrics.eventsConsumed.inc({ type: 'piece-want' });
  return want;
}

/** The peers to hand out for `want`, from a sample of the blob's swarm. */
function pickPeers(
  want: PieceWant,
  deps: WantDeps,
  now: number,
): { chosen: SwarmMember[]; finisher: boolean; swarmSize: number } {
  // A sample of the swarm, not all of it: the cost of a want does not grow with the swarm.
  const sample = deps.view.sample(want.blob, want, sampleWindow(want.limit), now);
  deps.metrics.swarmSize.observe(sample.swarmSize);
  const chosen = choosePeers(sample.members, want, (peer) => deps.load.load(peer, now));
  return { chosen, finisher: sample.finisher, swarmSize: sample.swarmSize };
}

/** Publishes the hand-out naming `chosen` on the asker's subject, and counts it. */
function publishHandout(
  want: PieceWant,
  chosen: readonly SwarmMember[],
  deps: WantDeps,
  now: number,
  headers: ReturnType<typeof traceHeaders>,
): void {
  const answer: Handout = {
    type: 'handout',
    blob: want.blob,
    peers: chosen.map(({ peer, pieces, complete, seed }) => ({ peer, pieces, complete, seed })),
    ...(deps.tokens === undefined
      ? {}
      : { token: deps.tokens.tokenFor(want.blob, want.peer.id, now) }),
  };
  deps.nc.publish(
    handoutSubject(want.peer.id),
    // Made of validated parts (the decoded want and haves): see `encodeUnchecked`.
    encodeUnchecked(handout, answer),
    headers === undefined ? undefined : { headers },
  );
  for (const member of chosen) {
    deps.load.record(member.peer.id, now);
  }
  deps.metrics.handouts.inc();
  deps.metrics.handoutPeers.observe(chosen.length);
}

/** True when a member holds at least one piece (a seed that holds nothing yet does not). */
const holdsPieces = (member: SwarmMember): boolean => member.complete || member.pieces.length > 0;

/**
 * A holder of `blob` appeared (`holder`'s have was applied): every asker this replica told
 * of no holder gets a new hand-out now instead of with its next want. Never throws.
 */
export function pushWaitingHandouts(blob: string, holder: string, deps: WantDeps): void {
  const waiting = deps.waiting;
  if (waiting === undefined) {
    return;
  }
  const now = deps.now();
  for (const { want, parent } of waiting.take(blob, now)) {
    if (want.peer.id === holder) {
      continue;
    }
    void withSpan(
      'handout push',
      { kind: SpanKind.PRODUCER, parent, attributes: { 'shoal.blob': blob } },
      (span) => {
        const { chosen } = pickPeers(want, deps, now);
        span.setAttribute('shoal.peers', chosen.length);
        publishHandout(want, chosen, deps, now, traceHeaders());
        deps.metrics.handoutsPushed.inc({ reason: 'holder' });
        remember(want, parent, chosen, deps, now);
      },
    ).catch((error: unknown) => {
      // Only a closing connection fails a publish; the asker's next want is answered anyway.
      deps.logger.warn({ err: error, blob }, 'hand-out for a waiting asker not published');
    });
  }
}

/**
 * Keeps an answered asker in the table that fits its hand-out: waiting for a first holder
 * when it named none, followed until its download completes otherwise.
 */
function remember(
  want: PieceWant,
  parent: Context,
  chosen: readonly SwarmMember[],
  deps: WantDeps,
  now: number,
): void {
  if (chosen.some(holdsPieces)) {
    deps.waiting?.takeOne(want.blob, want.peer.id, now);
    deps.following?.add(want.blob, want.peer.id, { want, parent }, now);
  } else {
    // Nobody holds a piece yet (the seed server is being asked): told again when one does.
    deps.following?.takeOne(want.blob, want.peer.id, now);
    deps.waiting?.add(want.blob, want.peer.id, { want, parent }, now);
  }
}

/**
 * `have` was applied: if this replica follows its peer's download of the blob and the peer's
 * pieces grew since its last hand-out, the peer gets a fresh hand-out for the
 * pieces it still lacks, chosen as for a want that carried this have; a complete download is
 * no longer followed. Never throws.
 */
export function pushOnProgress(have: PieceHave, deps: WantDeps): void {
  const following = deps.following;
  if (following === undefined) {
    return;
  }
  const now = deps.now();
  const followed = following.takeOne(have.blob, have.peer.id, now);
  if (followed === undefined || have.complete) {
    return;
  }
  // Pushed on each have that shows progress since the last hand-out: agents announce in
  // bounded steps (`haveDue` in `@shoal/proto`), so pushes per download stay bounded too, and
  // a download keeps learning of the peers that got the pieces the seed server rations.
  if (rangesSize(have.pieces) <= rangesSize(followed.want.have)) {
    following.add(have.blob, have.peer.id, followed, now);
    return;
  }
  const want: PieceWant = { ...followed.want, have: have.pieces };
  void withSpan(
    'handout push',
    { kind: SpanKind.PRODUCER, parent: followed.parent, attributes: { 'shoal.blob': have.blob } },
    (span) => {
      const { chosen } = pickPeers(want, deps, now);
      span.setAttribute('shoal.peers', chosen.length);
      publishHandout(want, chosen, deps, now, traceHeaders());
      deps.metrics.handoutsPushed.inc({ reason: 'progress' });
      remember(want, followed.parent, chosen, deps, now);
    },
  ).catch((error: unknown) => {
    deps.logger.warn(
      { err: error, blob: have.blob },
      'hand-out for a followed asker not published',
    );
  });
}

async function answerWant(msg: ReceivedWant, deps: WantDeps): Promise<void> {
  const { metrics, logger } = deps;
  const want = msg.want;
  let now = deps.now();
  const sample = pickPeers(want, deps, now);
  let { chosen } = sample;

  // The seed request goes first: if it fails, the want is redelivered and the asker gets a
  // single hand-out later rather than two.
  if (!sample.finisher) {
    try {
      const outcome = await withSpan(
        'seed-request publish',
        { kind: SpanKind.PRODUCER, attributes: { 'shoal.blob': want.blob } },
        async (span) => {
          const result = await deps.seeds.request(
            want,
            traceHeaders(msg.headers),
            deps.view.seedWithdrawal(want.blob),
          );
          span.setAttribute('shoal.outcome', result);
          return result;
        },
      );
      metrics.seedRequests.inc({ outcome });
      if (outcome === 'no-stream') {
        logger.warn(
          { blob: want.blob },
          'no stream takes seed requests; is a seed server deployed?',
        );
      } else {
        logger.info({ blob: want.blob, outcome }, 'seed requested');
      }
    } catch (error) {
      metrics.seedRequests.inc({ outcome: 'failed' });
      logger.warn({ err: error, blob: want.blob }, 'seed request failed; want will be retried');
      msg.nak(NAK_DELAY_MS);
      return;
    }
    // The publish may have waited long: the replica that forwarded the want answers it
    // itself past its deadline, and the asker must not get two hand-outs.
    if (forwardExpired(msg, deps, 'seed-request')) {
      return;
    }
  }

  if (!chosen.some(holdsPieces)) {
    // Chosen again after the seed request's round trip: a holder whose have was applied
    // meanwhile found this asker in no waiting list, and would otherwise be heard of only
    // with its next want (the agent waits for the push, long).
    now = deps.now();
    chosen = pickPeers(want, deps, now).chosen;
  }

  try {
    await withSpan(
      'handout publish',
      {
        kind: SpanKind.PRODUCER,
        attributes: { 'shoal.blob': want.blob, 'shoal.peers': chosen.length },
      },
      () => publishHandout(want, chosen, deps, now, traceHeaders(msg.headers)),
    );
  } catch (error) {
    // Publishing only fails when the connection is closing or closed; another replica (or
    // this one, reconnected) answers the redelivery.
    logger.warn({ err: error, blob: want.blob }, 'hand-out not published; want will be retried');
    msg.nak(NAK_DELAY_MS);
    return;
  }
  remember(want, contextFromHeaders(msg.headers), chosen, deps, now);
  metrics.handoutLatency.observe(Math.max(0, deps.now() - msg.publishedAtMs) / 1000);
  logger.debug(
    {
      blob: want.blob,
      asker: want.peer.id,
      peers: chosen.map((m) => m.peer.id),
      swarm: sample.swarmSize,
    },
    'hand-out',
  );
  msg.ack();
}

/** The want consumer of one replica: a pulling loop that queues, and one that answers. */
export class WantsConsumer {
  readonly #js: JetStreamClient;
  readonly #deps: WantDeps;
  readonly #queue: CoalescingQueue<ReceivedWant>;
  readonly #stopping = new AbortController();
  #loop: ConsumeLoop | undefined;
  #answering: Promise<void> | undefined;
  #forwardedIn: Subscription | undefined;
  /** Forwards waiting for their owner's answer, so `stop` can wait for them. */
  readonly #forwarding = new Set<Promise<void>>();
  /** One per kind of repeated warning. */
  readonly #gates = new Map<string, LogGate>();

  /** `queueMax`: most (blob, asker) wants this replica holds unanswered. */
  constructor(js: JetStreamClient, deps: WantDeps, queueMax: number) {
    this.#js = js;
    this.#deps = deps;
    this.#queue = new CoalescingQueue(queueMax);
  }

  /**
   * Starts pulling wants from the shared durable consumer (which must exist) and, with blobs
   * split between replicas, taking the wants other replicas forward for this one's blobs.
   */
  start(): void {
    this.#answering = this.#answer();
    const shard = this.#deps.shard;
    if (shard !== undefined) {
      this.#forwardedIn = this.#deps.nc.subscribe(forwardedWantSubject(shard.replicas.self), {
        callback: (error, msg) => {
          if (error === null) {
            this.#takeForwarded(msg).catch((failure: unknown) => {
              this.#deps.logger.error({ err: failure }, 'taking a forwarded want failed');
              replyForwarded(msg, 'not-owner', this.#deps.logger);
            });
          }
        },
      });
    }
    this.#loop = superviseConsumption({
      name: WANTS_CONSUMER,
      logger: this.#deps.logger,
      retryDelayMs: RETRY_DELAY_MS,
      open: async () => {
        const consumer = await this.#js.consumers.get(STREAMS.wants.name, WANTS_CONSUMER);
        return consumer.consume({ max_messages: PULL_BATCH });
      },
      handle: (msg) => this.#pulled(msg),
      // Wants pulled but not yet answered go back at once, for another replica to answer.
      release: (msg) => settlePulled(msg, 'nak', () => msg.nak(), this.#deps.logger),
    });
  }

  /** A holder of `blob` appeared: askers this replica told of none hear of it now. */
  holderAppeared(blob: string, holder: string): void {
    pushWaitingHandouts(blob, holder, this.#deps);
  }

  /**
   * Blobs moved to other replicas (the live set changed, a borrow ended): their waiting and
   * followed askers are handed to the new owner, which applies the blobs' haves now. Each
   * asker's latest want is forwarded (no JetStream message is involved: the asker was
   * answered already), so the owner answers it and then pushes as this replica would have.
   */
  handOver(): void {
    const { shard, waiting, following, now } = this.#deps;
    if (shard === undefined || this.#stopping.signal.aborted) {
      return;
    }
    const nowMs = now();
    for (const table of [waiting, following]) {
      for (const blob of table?.blobs() ?? []) {
        if (shard.applies(blob)) {
          continue;
        }
        for (const asker of table?.take(blob, nowMs) ?? []) {
          const handover = this.#handOverOne(asker, shard).catch((error: unknown) => {
            this.#deps.logger.warn({ err: error, blob }, 'asker not handed over');
          });
          this.#forwarding.add(handover);
          void handover.finally(() => this.#forwarding.delete(handover));
        }
      }
    }
  }

  /** Forwards a waiting or followed asker's latest want to its blob's new owner. */
  async #handOverOne({ want, parent }: Waiter, shard: BlobShard): Promise<void> {
    const owner = shard.replicas.owner(want.blob);
    const outcome = await withSpan(
      'want hand-over',
      { kind: SpanKind.PRODUCER, parent, attributes: { 'shoal.blob': want.blob } },
      () => this.#send(owner, want, undefined, traceHeaders(), this.#deps.now()),
    );
    this.#deps.metrics.askersHandedOver.inc({ outcome });
    if (outcome === 'no-responders') {
      this.#deps.dropReplica?.(owner);
    }
  }

  /** A have was applied: its peer, if this replica follows it, gets fresh peers now. */
  haveApplied(have: PieceHave): void {
    pushOnProgress(have, this.#deps);
  }

  /** Takes up the shared consumer made anew (a NATS server back with an empty store). */
  async reopen(): Promise<void> {
    await this.#loop?.reopen();
  }

  /**
   * Stops pulling and taking forwarded wants, lets the want being answered and the forwards
   * in flight finish, and gives the queued ones back.
   */
  async stop(): Promise<void> {
    this.#stopping.abort();
    this.#forwardedIn?.unsubscribe();
    await this.#loop?.stop();
    await this.#answering;
    await Promise.all(this.#forwarding);
    for (const queued of this.#queue.takeAll()) {
      refuse(queued);
    }
  }

  /** Checks a pulled want, then queues it or forwards it to its blob's owner. */
  async #pulled(msg: JsMsg): Promise<void> {
    const want = checkWant(msg, this.#deps);
    if (want !== undefined) {
      await this.#route(pulledWant(msg, want, this.#deps.logger));
    }
  }

  /** A want another replica pulled for a blob it believes this replica owns. */
  async #takeForwarded(msg: Msg): Promise<void> {
    const { metrics, logger, now } = this.#deps;
    const decoded = decodeMessage(pieceWant, msg.data);
    if (!decoded.ok) {
      // Only replicas publish here, and the forwarder checked the want it pulled: it answers
      // that one itself. One that sends garbage is not worth a crash.
      metrics.eventsRejected.inc({ type: 'piece-want', reason: 'invalid' });
      this.#warn(
        'invalid',
        { error: decoded.error.slice(0, MAX_LOGGED_ERROR) },
        'invalid forwarded piece-want refused',
      );
      replyForwarded(msg, 'not-owner', logger);
      return;
    }
    const received = forwardedWant(
      msg,
      decoded.value,
      now(),
      this.#deps.shard?.replicas.clocks,
      logger,
    );
    if (forwardExpired(received, this.#deps, 'arrival')) {
      this.#warn(
        'expired',
        { blob: received.want.blob },
        'forwarded want came after its deadline; dropped (is this replica paused or overloaded?)',
      );
      return;
    }
    if (this.#stopping.signal.aborted) {
      refuse(received);
      return;
    }
    await this.#route(received);
  }

  /**
   * Queues a want this replica answers (its blob's, loaded first if it just moved here), or
   * sends it on: to the owner for a pulled want, back as `not-owner` for a forwarded one.
   */
  async #route(received: ReceivedWant): Promise<void> {
    const shard = this.#deps.shard;
    const blob = received.want.blob;
    if (shard === undefined || shard.applies(blob)) {
      shard?.load(blob);
      await this.#enqueue(received);
      return;
    }
    if (received.notOwner !== undefined) {
      received.notOwner();
      return;
    }
    const forward = this.#forward(received, shard).catch((error: unknown) => {
      this.#deps.logger.error({ err: error, blob }, 'forwarding a want failed');
      received.nak(NAK_DELAY_MS);
    });
    this.#forwarding.add(forward);
    void forward.finally(() => this.#forwarding.delete(forward));
  }

  /**
   * Sends `want` (`data`: its bytes as pulled, if any) to `owner` and returns its answer: the
   * owner answers the asker before `FORWARD_TIMEOUT_MS` or not at all (`DEADLINE_HEADER`).
   * `headers`: the want's own.
   */
  async #send(
    owner: string,
    want: PieceWant,
    data: Uint8Array | undefined,
    headers: MsgHdrs | undefined,
    publishedAtMs: number,
  ): Promise<ForwardOutcome> {
    const { nc, now } = this.#deps;
    const forwardHeaders = natsHeaders();
    for (const [key, values] of headers ?? []) {
      for (const value of values) {
        forwardHeaders.append(key, value);
      }
    }
    forwardHeaders.set(PUBLISHED_HEADER, String(publishedAtMs));
    forwardHeaders.set(DEADLINE_HEADER, String(now() + FORWARD_TIMEOUT_MS - FORWARD_MARGIN_MS));
    if (this.#deps.shard !== undefined) {
      forwardHeaders.set(FORWARDER_HEADER, this.#deps.shard.replicas.self);
    }
    try {
      const reply = await nc.request(
        forwardedWantSubject(owner),
        data ?? encodeMessage(pieceWant, want),
        {
          timeout: FORWARD_TIMEOUT_MS,
          headers: forwardHeaders,
        },
      );
      const decoded = decodeMessage(wantForwarded, reply.data);
      return decoded.ok ? decoded.value.outcome : 'failed';
    } catch (error) {
      if (
        error instanceof NoRespondersError ||
        (error instanceof RequestError && error.isNoResponders())
      ) {
        this.#warn(
          'no-responders',
          { owner },
          'nobody listens for a tracker replica; it leaves the live set',
        );
        return 'no-responders';
      }
      this.#warn(
        'failed',
        { err: error, owner },
        'forwarded want not answered in time; answered here',
      );
      return 'failed';
    }
  }

  /**
   * Forwards a pulled want to its blob's owner and settles it by the answer. An owner nobody
   * listens for is gone: it leaves the live set and the want is routed again. An owner that
   * does not answer in time (stopped, or behind) or says it does not hold the blob: this
   * replica answers the want itself and serves the blob for a while (unsure, it serves), so
   * an owner that falls behind shares its blob instead of losing its askers' time.
   */
  async #forward(received: ReceivedWant, shard: BlobShard): Promise<void> {
    const { metrics } = this.#deps;
    const owner = shard.replicas.owner(received.want.blob);
    const outcome = await this.#send(
      owner,
      received.want,
      received.msg?.data,
      received.headers,
      received.publishedAtMs,
    );
    metrics.wantsForwarded.inc({ outcome });
    if (outcome === 'answered') {
      received.ack();
      return;
    }
    if (outcome === 'retry') {
      received.nak(NAK_DELAY_MS);
      return;
    }
    if (outcome === 'no-responders') {
      this.#deps.dropReplica?.(owner);
      if (shard.replicas.owner(received.want.blob) !== owner) {
        await this.#route(received);
        return;
      }
    }
    if (this.#stopping.signal.aborted) {
      received.nak();
      return;
    }
    metrics.blobsBorrowed.inc();
    this.#warn(
      'borrowed',
      { blob: received.want.blob, owner, outcome },
      "answering a want for another replica's blob",
    );
    shard.borrow(received.want.blob);
    await this.#enqueue(received);
  }

  /**
   * Queues a want; a pulled one waits while the queue is full of other askers, a forwarded
   * one is refused at once (its forwarder answers it rather than wait past its deadline).
   */
  async #enqueue(received: ReceivedWant): Promise<void> {
    const want = received.want;
    const key = `${want.blob} ${want.peer.id}`;
    for (;;) {
      const offer = this.#queue.offer(key, received);
      if (offer.outcome === 'replaced') {
        // The newer want is answered in the older one's turn; the older one is done.
        offer.replaced.ack();
        this.#deps.metrics.wantsCoalesced.inc();
        return;
      }
      if (offer.outcome === 'queued') {
        this.#deps.metrics.wantQueue.set(this.#queue.size);
        return;
      }
      if (received.notOwner !== undefined) {
        received.notOwner();
        return;
      }
      await this.#queue.whenSpace(this.#stopping.signal);
      if (this.#stopping.signal.aborted) {
        refuse(received);
        return;
      }
    }
  }

  /**
   * Answers queued wants one at a time, oldest first, until stopped, for a slice of the event
   * loop at a time (`EventLoopSlice`). Between slices, wants received meanwhile are queued
   * (and coalesce with an asker's older one, so a replica that falls behind answers its
   * backlog once per asker) and haves are applied. A slice answers as many as fit, not one
   * per turn of the event loop: one per turn fell behind while haves came in bursts.
   */
  async #answer(): Promise<void> {
    const signal = this.#stopping.signal;
    const slice = new EventLoopSlice();
    while (!signal.aborted) {
      const queued = this.#queue.take();
      this.#deps.metrics.wantQueue.set(this.#queue.size);
      if (queued === undefined) {
        await this.#queue.whenItem(signal);
        // The wants that came with this one are queued (and coalesce) before any is
        // answered: the rest of a pulled batch, or a backlog after a restart.
        await setImmediate();
        continue;
      }
      const startedAt = slice.start();
      await this.#answerOne(queued);
      await slice.after(startedAt);
    }
  }

  /** Answers, routes or drops one queued want. Never throws. */
  async #answerOne(queued: ReceivedWant): Promise<void> {
    if (forwardExpired(queued, this.#deps, 'queue')) {
      this.#warn(
        'expired',
        { blob: queued.want.blob },
        'forwarded want waited past its deadline; dropped (is this replica overloaded?)',
      );
      return;
    }
    const shard = this.#deps.shard;
    if (shard !== undefined && !shard.applies(queued.want.blob)) {
      // Its blob moved to another replica while it waited: the forward gets the whole ack
      // wait again, not what the queue left of it.
      const pulled = queued.msg;
      if (pulled !== undefined) {
        settlePulled(pulled, 'progress', () => pulled.working(), this.#deps.logger);
      }
      this.#route(queued).catch((error: unknown) => {
        this.#deps.logger.error({ err: error, blob: queued.want.blob }, 'routing a want failed');
        queued.nak(NAK_DELAY_MS);
      });
      return;
    }
    try {
      await handleWant(queued, this.#deps);
    } catch (error) {
      this.#deps.logger.error({ err: error, blob: queued.want.blob }, 'answering a want failed');
      queued.nak(NAK_DELAY_MS);
    }
  }

  /** A warning of kind `kind`, at most one per `WARN_INTERVAL_MS`, saying how many were held. */
  #warn(kind: string, fields: Record<string, unknown>, message: string): void {
    let gate = this.#gates.get(kind);
    if (gate === undefined) {
      gate = new LogGate(WARN_INTERVAL_MS);
      this.#gates.set(kind, gate);
    }
    const held = gate.pass(this.#deps.now());
    if (held !== undefined) {
      this.#deps.logger.warn({ ...fields, ...(held > 0 ? { alikeHeld: held } : {}) }, message);
    }
  }
}

/** What a forwarded want's owner said, or why it said nothing. */
type ForwardOutcome = WantForwarded['outcome'] | 'no-responders' | 'failed';

/** Gives back a want this replica will not answer: `not-owner` to its forwarder, or a nak. */
function refuse(received: ReceivedWant): void {
  if (received.notOwner !== undefined) {
    received.notOwner();
  } else {
    received.nak();
  }
}
