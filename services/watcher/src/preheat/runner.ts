/**
 * Runs preheat jobs from the SHOAL_PREHEAT work queue. A command stays unacknowledged while its
 * job runs (kept alive with `working()`), so a watcher killed mid-job leaves it to the next
 * replica, or to itself after a restart; the seed's and agents' reports are on a stream, so
 * the job resumes with everything reported so far.
 *
 * A job: read the image's blobs from the registry; ask the seed server for each (it fetches
 * it once and stores it in the object gateway, or finds it there); for scope `nodes`, then
 * hand the blobs to every live agent the selector matches and wait for each to report them.
 */
import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import {
  decodeMessage,
  encodeMessage,
  parseDigest,
  PREHEAT_NODES_SUBJECT,
  preheatCommand,
  preheatNodes,
  preheatReport,
  preheatReportSubject,
  seedRequest,
  seedRequestSubject,
  selectorMatches,
  STREAMS,
  type AgentPresence,
  type PreheatCommand,
  type PreheatReport,
} from '@shoal/proto';
import { SpanKind, withSpan, type Logger } from '@shoal/runtime';
import {
  contextFromHeaders,
  ensureConsumer,
  superviseConsumption,
  type ConsumeLoop,
} from '@shoal/runtime/nats';

import type { WatcherMetrics } from '../metrics.js';
import { publishProgress, type JobStatus, type JobStore } from './jobs.js';
import { optionalHeaders } from './requests.js';
import type { ImageResolver, ResolvedImage } from './resolve.js';

export const PREHEAT_CONSUMER = 'watcher-preheat';
const PUBLISH_TIMEOUT_MS = 5_000;
const RETRY_DELAY_MS = 2_000;
/** Status and progress are written at most this often while reports arrive, in ms. */
const PROGRESS_INTERVAL_MS = 1_000;
/** How often the live agents are checked while a `nodes` job waits for them, in ms. */
const AGENTS_CHECK_MS = 5_000;
/** Failures kept in a job's status. */
const MAX_FAILURES = 20;

export interface RunnerDeps {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly jobs: JobStore;
  readonly resolver: ImageResolver;
  /** The agents alive now. */
  readonly agents: () => Promise<AgentPresence[]>;
  readonly concurrency: number;
  readonly timeoutMs: number;
  readonly ackWaitMs: number;
  readonly metrics: WatcherMetrics;
  readonly logger: Logger;
}

/** Why a job failed; its message is what the operator reads in the job's status. */
class JobFailed extends Error {
  override readonly name = 'JobFailed';
}

export class PreheatRunner {
  readonly #deps: RunnerDeps;
  readonly #stopping = new AbortController();
  #loop: ConsumeLoop | undefined;

  constructor(deps: RunnerDeps) {
    this.#deps = deps;
  }

  async start(): Promise<void> {
    const { js, jsm, logger, concurrency, ackWaitMs } = this.#deps;
    await ensureConsumer(jsm, STREAMS.preheat.name, PREHEAT_CONSUMER, {
      ackWaitMs,
      maxDeliver: -1,
      maxAckPending: Math.max(1, concurrency),
    });
    this.#loop = superviseConsumption({
      name: PREHEAT_CONSUMER,
      logger,
      retryDelayMs: RETRY_DELAY_MS,
      concurrency: Math.max(1, concurrency),
      open: async () => {
        const consumer = await js.consumers.get(STREAMS.preheat.name, PREHEAT_CONSUMER);
        return consumer.consume({ max_messages: Math.max(1, concurrency) });
      },
      handle: (msg) => this.#handle(msg),
      release: (msg) => msg.nak(),
    });
  }

  async stop(): Promise<void> {
    this.#stopping.abort();
    await this.#loop?.stop();
  }

  /** One job in a CONSUMER span, in the trace of the webhook or API call that queued it. */
  #handle(msg: JsMsg): Promise<void> {
    return withSpan(
      'preheat run',
      {
        kind: SpanKind.CONSUMER,
        parent: contextFromHeaders(msg.headers),
        attributes: { 'messaging.destination.name': msg.subject },
      },
      () => this.#handleCommand(msg),
    );
  }

  async #handleCommand(msg: JsMsg): Promise<void> {
    const { jobs, metrics, logger, ackWaitMs } = this.#deps;
    const decoded = decodeMessage(preheatCommand, msg.data);
    if (!decoded.ok) {
      metrics.eventsRejected.inc({ type: 'preheat' });
      logger.warn({ error: decoded.error.slice(0, 512) }, 'invalid preheat command terminated');
      msg.term();
      return;
    }
    const command = decoded.value;
    const existing = await jobs.get(command.id);
    if (existing?.state === 'done' || existing?.state === 'failed') {
      // A repeated delivery of a finished job: the work is not done twice.
      msg.ack();
      return;
    }
    const heartbeat = setInterval(() => msg.working(), Math.max(1_000, ackWaitMs / 3));
    metrics.jobsRunning.inc();
    try {
      const status = await this.#run(command, existing);
      if (this.#stopping.signal.aborted && status === undefined) {
        msg.nak();
        return;
      }
      msg.ack();
    } catch (error) {
      logger.warn({ err: error, job: command.id }, 'preheat job interrupted; it will be retried');
      msg.nak(RETRY_DELAY_MS);
    } finally {
      clearInterval(heartbeat);
      metrics.jobsRunning.dec();
    }
  }

  /** Runs a job to its end; undefined when stopped part-way (the job resumes later). */
  async #run(
    command: PreheatCommand,
    existing: JobStatus | undefined,
  ): Promise<JobStatus | undefined> {
    const { jobs, resolver, metrics, logger, timeoutMs } = this.#deps;
    const now = Date.now();
    const { reference, registry } = resolver.parse(command.image);
    let status: JobStatus = existing ?? {
      id: command.id,
      image: command.image,
      resolved: command.image,
      scope: command.scope,
      selector: command.selector,
      platforms: command.platforms,
      origin: command.origin,
      state: 'queued',
      blobsTotal: 0,
      blobsDone: 0,
      failures: [],
      createdAt: now,
      updatedAt: now,
    };
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = AbortSignal.any([this.#stopping.signal, deadline]);
    const tracker = new JobProgress(
      this.#deps,
      () => status,
      (next) => (status = next),
    );
    try {
      const digest =
        reference.digest ?? (await resolver.currentDigest(registry, reference, signal));
      const image = await resolver.resolve(
        registry,
        reference.repository,
        digest,
        command.platforms,
        signal,
      );
      await tracker.update({ state: 'running', blobsTotal: image.blobs.length }, true);
      logger.info(
        { job: command.id, manifests: image.manifests.length, blobs: image.blobs.length },
        'preheat running',
      );
      await this.#seed(command, image, tracker, signal);
      if (command.scope === 'nodes') {
        await this.#nodes(command, image, tracker, signal);
      }
      const failed = status.failures.length > 0;
      await tracker.update(
        {
          state: failed ? 'failed' : 'done',
          ...(failed ? { error: `${status.failures.length} blob(s) could not be preheated` } : {}),
        },
        true,
      );
    } catch (error) {
      if (this.#stopping.signal.aborted) {
        return undefined;
      }
      const reason = deadline.aborted
        ? `timed out after ${timeoutMs} ms`
        : error instanceof Error
          ? error.message
          : String(error);
      if (!(error instanceof JobFailed) && !deadline.aborted && !isPermanent(error)) {
        throw error;
      }
      await tracker.update({ state: 'failed', error: reason.slice(0, 1024) }, true);
    } finally {
      tracker.close();
    }
    metrics.jobs.inc({ state: status.state });
    logger.info(
      { job: command.id, state: status.state, error: status.error, blobs: status.blobsTotal },
      'preheat finished',
    );
    await jobs.put(status);
    return status;
  }

  /** Asks the seed server for every blob and waits until it reports each one. */
  async #seed(
    command: PreheatCommand,
    image: ResolvedImage,
    tracker: JobProgress,
    signal: AbortSignal,
  ): Promise<void> {
    const { js } = this.#deps;
    for (const blob of image.blobs) {
      await js.publish(
        seedRequestSubject(blob.digest),
        encodeMessage(seedRequest, {
          type: 'seed-request',
          blob: blob.digest,
          registry: image.registry.host,
          repository: image.repository,
          reason: { kind: 'preheat', job: command.id },
        }),
        {
          msgID: `${command.id}.${parseDigest(blob.digest).hex}`,
          timeout: PUBLISH_TIMEOUT_MS,
          ...optionalHeaders(),
        },
      );
    }
    const pending = new Set(image.blobs.map((b) => b.digest));
    await this.#followReports(command.id, signal, (report) => {
      if (report.role !== 'seed' || !pending.delete(report.blob)) {
        return pending.size === 0;
      }
      tracker.blobSeeded(report);
      return pending.size === 0;
    });
    if (tracker.current.failures.length > 0) {
      throw new JobFailed(
        `the seed server could not preheat ${tracker.current.failures.length} blob(s)`,
      );
    }
  }

  /** Hands the blobs to the matching live agents and waits for each to report them all. */
  async #nodes(
    command: PreheatCommand,
    image: ResolvedImage,
    tracker: JobProgress,
    signal: AbortSignal,
  ): Promise<void> {
    const { js, agents } = this.#deps;
    const expected = new Set(
      (await agents())
        .filter((agent) => selectorMatches(command.selector, agent.labels))
        .map((agent) => agent.peer),
    );
    await tracker.update({ nodesTotal: expected.size, nodesDone: 0 }, true);
    if (expected.size === 0) {
      return;
    }
    await js.publish(
      PREHEAT_NODES_SUBJECT,
      encodeMessage(preheatNodes, {
        type: 'preheat-nodes',
        job: command.id,
        registry: image.registry.host,
        repository: image.repository,
        blobs: image.blobs.map((b) => ({ digest: b.digest, size: b.size })),
        selector: command.selector,
      }),
      { msgID: `${command.id}.nodes`, timeout: PUBLISH_TIMEOUT_MS, ...optionalHeaders() },
    );
    const remaining = new Map(
      [...expected].map((peer) => [peer, new Set(image.blobs.map((b) => b.digest))]),
    );
    let done = 0;
    const finish = (peer: string): void => {
      if (remaining.delete(peer)) {
        done += 1;
        void tracker.update({ nodesDone: done });
      }
    };
    // Agents that leave before finishing are not waited for: they count as failed.
    const gone = setInterval(() => {
      void agents()
        .then((live) => {
          const alive = new Set(live.map((a) => a.peer));
          for (const peer of [...remaining.keys()]) {
            if (!alive.has(peer)) {
              remaining.delete(peer);
              tracker.fail({ peer, blob: '', error: 'the agent left before finishing' });
            }
          }
          if (remaining.size === 0) {
            wake();
          }
        })
        .catch(() => undefined);
    }, AGENTS_CHECK_MS);
    let wake: () => void = () => undefined;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    try {
      await Promise.race([
        this.#followReports(command.id, signal, (report) => {
          const blobs = report.role === 'agent' ? remaining.get(report.peer) : undefined;
          if (blobs?.delete(report.blob) === true) {
            if (!report.ok) {
              tracker.fail({
                peer: report.peer,
                blob: report.blob,
                error: report.error ?? 'failed',
              });
            }
            if (blobs.size === 0) {
              finish(report.peer);
            }
          }
          return remaining.size === 0;
        }),
        woken,
      ]);
    } finally {
      clearInterval(gone);
    }
  }

  /**
   * Reads the job's reports from the start of the stream (so a resumed job counts what was
   * reported before), handing each to `onReport` until it returns true.
   */
  async #followReports(
    job: string,
    signal: AbortSignal,
    onReport: (report: PreheatReport) => boolean,
  ): Promise<void> {
    const { js, metrics, logger } = this.#deps;
    const consumer = await js.consumers.get(STREAMS.preheatEvents.name, {
      filter_subjects: preheatReportSubject(job),
    });
    const messages = await consumer.consume();
    const close = (): void => void messages.close();
    signal.addEventListener('abort', close, { once: true });
    try {
      if (signal.aborted) {
        return;
      }
      for await (const msg of messages) {
        const decoded = decodeMessage(preheatReport, msg.data);
        if (!decoded.ok || decoded.value.job !== job) {
          metrics.eventsRejected.inc({ type: 'preheat-report' });
          logger.warn({ subject: msg.subject }, 'invalid preheat report ignored');
          continue;
        }
        metrics.reports.inc({ role: decoded.value.role, ok: String(decoded.value.ok) });
        if (onReport(decoded.value)) {
          return;
        }
      }
    } finally {
      signal.removeEventListener('abort', close);
      await messages.close();
    }
    signal.throwIfAborted();
  }
}

/** Registry answers that no retry will change (a missing image, a bad manifest). */
function isPermanent(error: unknown): boolean {
  return error instanceof Error && error.name === 'ResolveError';
}

/**
 * A job's status as it runs: counts, failures and state, written to the job bucket and sent
 * as progress events, at most once a second unless the state changes.
 */
class JobProgress {
  readonly #deps: RunnerDeps;
  readonly #get: () => JobStatus;
  readonly #set: (status: JobStatus) => void;
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: RunnerDeps, get: () => JobStatus, set: (status: JobStatus) => void) {
    this.#deps = deps;
    this.#get = get;
    this.#set = set;
  }

  get current(): JobStatus {
    return this.#get();
  }

  blobSeeded(report: PreheatReport): void {
    if (report.ok) {
      void this.update({ blobsDone: this.current.blobsDone + 1 });
    } else {
      this.fail({ peer: report.peer, blob: report.blob, error: report.error ?? 'failed' });
    }
  }

  fail(failure: JobStatus['failures'][number]): void {
    const failures = [...this.current.failures, failure].slice(0, MAX_FAILURES);
    void this.update({ failures });
  }

  /** Applies `change`; written now when `now`, else within the progress interval. */
  async update(change: Partial<JobStatus>, now = false): Promise<void> {
    this.#set({ ...this.current, ...change, updatedAt: Date.now() });
    if (now) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      await this.#write();
      return;
    }
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      void this.#write().catch(() => undefined);
    }, PROGRESS_INTERVAL_MS);
  }

  async #write(): Promise<void> {
    const { js, jobs } = this.#deps;
    const status = this.current;
    await jobs.put(status);
    await publishProgress(js, status, PUBLISH_TIMEOUT_MS);
  }

  close(): void {
    clearTimeout(this.#timer);
  }
}
