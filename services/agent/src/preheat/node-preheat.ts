/**
 * The agent's part in a `nodes` preheat. Each agent reads SHOAL_PREHEAT_NODES with its own
 * durable consumer (so a restarted agent resumes where it was), keeps the tasks whose selector
 * its labels match, pulls their blobs into the cache through the same single-flight downloads
 * the mirror uses (so a client pulling the same blob meanwhile shares the fetch), and reports
 * every blob to the job.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import {
  decodeMessage,
  encodeMessage,
  parseDigest,
  preheatNodes,
  preheatNodesConsumer,
  preheatReport,
  preheatReportSubject,
  selectorMatches,
  STREAMS,
  type Digest,
  type PreheatNodes,
} from '@shoal/proto';
import { RateLimiter, SpanKind, withSpan, type Logger } from '@shoal/runtime';
import {
  contextFromHeaders,
  ensureConsumer,
  isNotFound,
  superviseConsumption,
  type ConsumeLoop,
} from '@shoal/runtime/nats';

import type { FsContentStore } from '../cache/content-store.js';
import type { DownloadTable } from '../cache/download-table.js';
import type { AgentMetrics } from '../metrics.js';
import type { BlobFetcher } from '../upstream/origin-fetcher.js';
import type { RegistryTable } from '../upstream/registries.js';

/** A task stays unacknowledged while its blobs download; `working()` keeps it so. */
const ACK_WAIT_MS = 60_000;
const HEARTBEAT_MS = 20_000;
/** Consumers of agents gone this long are removed by the server. */
const INACTIVE_MS = 24 * 60 * 60 * 1000;
const RETRY_DELAY_MS = 5_000;
/** The longest wait between attempts to open the consumer again, in ms. */
const MAX_RECOVERY_DELAY_MS = 5 * 60_000;
const REPORT_TIMEOUT_MS = 5_000;
const START_MARGIN_MS = 10 * 60_000;

export interface NodePreheatDeps {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly peer: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly store: FsContentStore;
  readonly downloads: DownloadTable;
  readonly fetcher: BlobFetcher;
  readonly registries: RegistryTable;
  /** Blobs pulled at once. */
  readonly concurrency: number;
  /** Bytes/s for preheat pulls; 0: no limit beyond the agent's own. */
  readonly rateBytes: number;
  /**
   * The longest first wait before the consumer is opened again after it failed (lost with the
   * server's store), in ms; each wait is random below it and it doubles while opens fail.
   */
  readonly recoverySpreadMs: number;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

export class NodePreheat {
  readonly #deps: NodePreheatDeps;
  readonly #limit: RateLimiter;
  readonly #stopping = new AbortController();
  /**
   * Tasks published since the agent started are its own, even when its consumer comes later
   * (the watcher created the stream after the agent started): the agent is already present.
   * A margin covers a node clock ahead of the server's; a task seen twice costs nothing, the
   * cache answers it.
   */
  readonly #startedAt = new Date(Date.now() - START_MARGIN_MS);
  #loop: ConsumeLoop | undefined;

  constructor(deps: NodePreheatDeps) {
    this.#deps = deps;
    this.#limit = new RateLimiter(deps.rateBytes, () =>
      deps.metrics.rateLimitWaits.inc({ direction: 'preheat' }),
    );
  }

  /** The durable consumer's name for this agent. */
  get consumerName(): string {
    return preheatNodesConsumer(this.#deps.peer);
  }

  start(): void {
    const { js, jsm, logger } = this.#deps;
    this.#loop = superviseConsumption({
      name: 'preheat-nodes',
      logger,
      // Spread and growing: every node holds one of these consumers, and a NATS server back
      // with its store lost has none of them; they must not all be declared in one second.
      retryDelayMs: this.#deps.recoverySpreadMs,
      backoff: { maxDelayMs: MAX_RECOVERY_DELAY_MS },
      // The stream is the watcher's; until a watcher has created it, this keeps retrying.
      open: async () => {
        await this.#streamExists();
        await ensureConsumer(jsm, STREAMS.preheatNodes.name, this.consumerName, {
          ackWaitMs: ACK_WAIT_MS,
          maxDeliver: -1,
          maxAckPending: 1,
          startTime: this.#startedAt,
          inactiveMs: INACTIVE_MS,
          // One consumer per node: a single replica each, not a Raft group per node.
          replicas: 1,
        });
        const consumer = await js.consumers.get(STREAMS.preheatNodes.name, this.consumerName);
        // A consumer or stream gone (the server lost its store) ends the iterator, so the loop
        // declares it again above; a plain reconnect costs only the library's consumer info.
        return consumer.consume({ max_messages: 1, abort_on_missing_resource: true });
      },
      // Each task in a CONSUMER span, in the trace of the preheat (from the webhook on).
      handle: (msg) =>
        withSpan(
          'node preheat',
          { kind: SpanKind.CONSUMER, parent: contextFromHeaders(msg.headers) },
          () => this.#handle(msg),
        ),
      release: (msg) => msg.nak(),
    });
  }

  /** Waits, quietly, until a watcher has created the node-task stream. */
  async #streamExists(): Promise<void> {
    const { jsm, logger } = this.#deps;
    let told = false;
    for (;;) {
      try {
        await jsm.streams.info(STREAMS.preheatNodes.name);
        return;
      } catch (error) {
        if (!isNotFound(error)) {
          throw error;
        }
      }
      if (!told) {
        logger.info('no preheat stream yet (no watcher has started); node preheat waits for it');
        told = true;
      }
      await sleep(RETRY_DELAY_MS, undefined, { signal: this.#stopping.signal });
    }
  }

  async #handle(msg: JsMsg): Promise<void> {
    const { metrics, logger, labels } = this.#deps;
    const decoded = decodeMessage(preheatNodes, msg.data);
    if (!decoded.ok) {
      metrics.eventsRejected.inc({ type: 'preheat-nodes' });
      logger.warn({ error: decoded.error.slice(0, 512) }, 'invalid preheat-nodes terminated');
      msg.term();
      return;
    }
    const task = decoded.value;
    metrics.eventsReceived.inc({ type: 'preheat-nodes' });
    if (!selectorMatches(task.selector, labels)) {
      logger.debug({ job: task.job }, 'preheat not for this node');
      msg.ack();
      return;
    }
    const heartbeat = setInterval(() => msg.working(), HEARTBEAT_MS);
    try {
      await this.#run(task);
      msg.ack();
    } catch (error) {
      // Stopping, or a report NATS did not take: the task comes back, and what is cached by
      // then is reported at once.
      logger.warn({ err: error, job: task.job }, 'node preheat interrupted; will resume');
      msg.nak(RETRY_DELAY_MS);
    } finally {
      clearInterval(heartbeat);
    }
  }

  async #run(task: PreheatNodes): Promise<void> {
    const { logger, concurrency } = this.#deps;
    logger.info({ job: task.job, blobs: task.blobs.length }, 'preheating this node');
    const queue = [...task.blobs];
    const worker = async (): Promise<void> => {
      for (let blob = queue.shift(); blob !== undefined; blob = queue.shift()) {
        if (this.#stopping.signal.aborted) {
          throw new Error('agent stopping');
        }
        const error = await this.#pull(task, parseDigest(blob.digest));
        await this.#report(task, blob.digest, error);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
    logger.info({ job: task.job }, 'node preheat done');
  }

  /** Brings one blob into the cache; the reason when it could not. */
  async #pull(task: PreheatNodes, digest: Digest): Promise<string | undefined> {
    const { store, downloads, fetcher, registries, metrics } = this.#deps;
    if (store.has(digest)) {
      metrics.preheatBlobs.inc({ result: 'cached' });
      return undefined;
    }
    const registry = registries.get(task.registry);
    if (registry === undefined) {
      metrics.preheatBlobs.inc({ result: 'failed' });
      return `registry ${task.registry} is not mirrored by this agent`;
    }
    const flight = await downloads.join(digest, (signal) =>
      fetcher.start(
        { registry, name: task.repository, digest, authorization: undefined, limit: this.#limit },
        signal,
      ),
    );
    if (flight.kind === 'answer') {
      metrics.preheatBlobs.inc({ result: 'failed' });
      return `the registry answered ${flight.answer.status}`;
    }
    // On shutdown, stop waiting: the task is handed back and resumes after the restart.
    const stopping = this.#stopping.signal;
    const state = await Promise.race([
      flight.download.settled,
      new Promise<'stopping'>((resolve) => {
        if (stopping.aborted) {
          resolve('stopping');
        }
        stopping.addEventListener('abort', () => resolve('stopping'), { once: true });
      }),
    ]);
    if (state === 'stopping') {
      throw new Error('agent stopping');
    }
    if (state !== 'verified') {
      metrics.preheatBlobs.inc({ result: 'failed' });
      return flight.download.error?.message ?? 'the download failed';
    }
    metrics.preheatBlobs.inc({ result: 'pulled' });
    return undefined;
  }

  async #report(task: PreheatNodes, blob: string, error: string | undefined): Promise<void> {
    const { js, peer } = this.#deps;
    // No message id: a report repeated by a redelivered task counts once at the watcher.
    await js.publish(
      preheatReportSubject(task.job, 'agent', peer),
      encodeMessage(preheatReport, {
        type: 'preheat-report',
        job: task.job,
        peer,
        role: 'agent',
        blob,
        ok: error === undefined,
        ...(error === undefined ? {} : { error: error.slice(0, 1024) }),
      }),
      { timeout: REPORT_TIMEOUT_MS },
    );
  }

  async stop(): Promise<void> {
    this.#stopping.abort();
    await this.#loop?.stop();
  }
}
