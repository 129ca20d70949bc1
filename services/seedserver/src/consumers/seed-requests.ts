/**
 * seed-request events from SHOAL_SEED (a work queue): the replicas share one durable
 * consumer, each handling up to its concurrency at once. A request stays unacknowledged while
 * its blob is seeded, kept alive with in-progress acknowledgements within a short ack wait, so
 * a replica that dies mid-seed leaves it to another (or to itself, restarted) within seconds.
 */
import { type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import {
  decodeMessage,
  encodeMessage,
  preheatReport,
  preheatReportSubject,
  seedRequest,
  seedRequestSubject,
  STREAMS,
  type SeedRequest,
} from '@shoal/proto';
import { SpanKind, withSpan, type Logger } from '@shoal/runtime';
import {
  contextFromHeaders,
  ensureConsumer,
  superviseConsumption,
  type ConsumeLoop,
} from '@shoal/runtime/nats';

import type { SeedMetrics } from '../metrics.js';
import type { SeedOutcome, Seeder } from '../seeding/seeder.js';

export const SEED_CONSUMER = 'seedserver-seed';
/**
 * In-progress acknowledgements per ack wait. The ack wait is short (SHOAL_SEED_REQUEST_ACK_WAIT_MS,
 * seconds), because the agents of a blob whose seed server died before it published a piece
 * hash have nothing to fetch until a seed server takes the request again; a replica at work
 * says so this many times within it, so one late acknowledgement does not hand a seed in
 * progress to a second replica.
 */
const IN_PROGRESS_PER_ACK_WAIT = 4;
const MAX_DELIVER = 5;
const RETRY_DELAY_MS = 1_000;
/** How often a preheat asks again while another replica holds the blob's lock, in ms. */
const BUSY_RETRY_MS = 1_000;
/** How long a preheat report may wait for JetStream's acknowledgement, in ms. */
const REPORT_TIMEOUT_MS = 5_000;

/**
 * Creates the shared consumer, or brings it to `ackWaitMs` (SHOAL_SEED_REQUEST_ACK_WAIT_MS);
 * true when it had to create it.
 */
export function ensureSeedConsumer(jsm: JetStreamManager, ackWaitMs: number): Promise<boolean> {
  return ensureConsumer(jsm, STREAMS.seed.name, SEED_CONSUMER, {
    ackWaitMs,
    maxDeliver: MAX_DELIVER,
    maxAckPending: 256,
  });
}

export interface SeedConsumerDeps {
  readonly js: JetStreamClient;
  readonly seeder: Seeder;
  readonly concurrency: number;
  /** The consumer's ack wait (SHOAL_SEED_REQUEST_ACK_WAIT_MS), in ms. */
  readonly ackWaitMs: number;
  /** The seed's peer id, named in preheat reports. */
  readonly self: string;
  /** The registries this seed server fetches from (`SHOAL_SEED_REGISTRIES` hosts). */
  readonly registries: ReadonlySet<string>;
  readonly metrics: SeedMetrics;
  readonly logger: Logger;
}

/**
 * Consumes seed requests until `stop` (which resolves when in-flight seeds have ended);
 * `reopen` takes up a consumer made anew.
 */
export function consumeSeedRequests(deps: SeedConsumerDeps): Pick<ConsumeLoop, 'stop' | 'reopen'> {
  const { js, seeder, logger, metrics } = deps;
  const stopping = new AbortController();
  // A function, not the property, so checks after an await are not narrowed away.
  const stopped = (): boolean => stopping.signal.aborted;

  // A CONSUMER span in the trace of the want that caused the request (its headers).
  const handle = (msg: JsMsg): Promise<void> =>
    withSpan(
      'seed-request process',
      {
        kind: SpanKind.CONSUMER,
        parent: contextFromHeaders(msg.headers),
        attributes: { 'messaging.destination.name': msg.subject, 'messaging.message.id': msg.seq },
      },
      () => handleRequest(msg),
    );

  const handleRequest = async (msg: JsMsg): Promise<void> => {
    const decoded = decodeMessage(seedRequest, msg.data);
    if (!decoded.ok) {
      metrics.requestsRejected.inc();
      logger.warn(
        { subject: msg.subject, error: decoded.error.slice(0, 512) },
        'invalid seed-request terminated',
      );
      // No reason: nats-server before 2.11 leaves `+TERM <reason>` pending.
      msg.term();
      return;
    }
    const request = decoded.value;
    // Valid, but not for this seed server: a registry it does not fetch from, or a subject
    // that names another blob. Never retried.
    const refusal = !deps.registries.has(request.registry)
      ? 'registry not configured'
      : msg.subject !== seedRequestSubject(request.blob)
        ? 'subject does not match its blob'
        : undefined;
    if (refusal !== undefined) {
      metrics.requestsRejected.inc();
      logger.warn(
        { subject: msg.subject, registry: request.registry.slice(0, 255), refusal },
        'seed-request terminated',
      );
      msg.term();
      return;
    }
    metrics.eventsConsumed.inc({ type: 'seed-request' });
    const heartbeat = (): void => {
      try {
        msg.working();
      } catch (error) {
        // A connection closing under a timer: the request goes back to the queue anyway.
        logger.debug({ err: error }, 'seed request progress not acknowledged');
      }
    };
    // In-progress acknowledgements for as long as this request is handled, whatever the
    // seeder is waiting on (the origin, the lock, the object gateway).
    const working = setInterval(heartbeat, deps.ackWaitMs / IN_PROGRESS_PER_ACK_WAIT);
    let outcome: SeedOutcome;
    try {
      outcome = await seeder.seed(request, stopping.signal, heartbeat);
      // A preheat must end with the blob here: while another replica seeds it, wait and ask
      // again (it will then come from the object gateway).
      while (outcome === 'busy' && request.reason.kind === 'preheat' && !stopped()) {
        await new Promise((resolve) => setTimeout(resolve, BUSY_RETRY_MS));
        outcome = await seeder.seed(request, stopping.signal, heartbeat);
      }
    } finally {
      clearInterval(working);
    }
    if ((outcome === 'failed' || outcome === 'busy') && stopped()) {
      msg.nak();
      return;
    }
    if (request.reason.kind === 'preheat') {
      await report(request, request.reason.job, outcome === 'seeded' || outcome === 'held');
    }
    // A failed seed is not retried from here: the agents fall back to the origin, and a
    // later want asks again.
    msg.ack();
  };

  /** Tells the preheat job how its blob went; a lost report is retried by redelivery. */
  const report = async (request: SeedRequest, job: string, ok: boolean): Promise<void> => {
    const error = ok ? undefined : (seeder.failure(request.blob) ?? 'seeding failed');
    // No message id: a report repeated by a redelivery counts once at the watcher.
    await js.publish(
      preheatReportSubject(job, 'seed', deps.self),
      encodeMessage(preheatReport, {
        type: 'preheat-report',
        job,
        peer: deps.self,
        role: 'seed',
        blob: request.blob,
        ok,
        ...(error === undefined ? {} : { error }),
      }),
      { timeout: REPORT_TIMEOUT_MS },
    );
    metrics.preheatReports.inc({ ok: String(ok) });
  };

  // Up to `concurrency` seeds at once; a request the handler could not finish comes back.
  const loop = superviseConsumption({
    name: SEED_CONSUMER,
    logger,
    retryDelayMs: RETRY_DELAY_MS,
    concurrency: deps.concurrency,
    open: async () => {
      const consumer = await js.consumers.get(STREAMS.seed.name, SEED_CONSUMER);
      return consumer.consume({ max_messages: deps.concurrency });
    },
    handle: (msg) =>
      handle(msg).catch((error: unknown) => {
        logger.error({ err: error }, 'seed request handler failed');
        msg.nak(RETRY_DELAY_MS);
      }),
    release: (msg) => msg.nak(),
  });

  return {
    stop: async () => {
      stopping.abort();
      await loop.stop();
    },
    reopen: () => loop.reopen(),
  };
}
