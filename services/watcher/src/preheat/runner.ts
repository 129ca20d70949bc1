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
import { setTimeout as sleep } from 'node:timers/promises';

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
  preheatReportSubjects,
  seedRequest,
  seedRequestSubject,
  selectorMatches,
  STREAMS,
  OciParseError,
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
import type { AgentsView } from './presence.js';
import { optionalHeaders } from './requests.js';
import { ResolveError, type ImageResolver, type ResolvedImage } from './resolve.js';

export const PREHEAT_CONSUMER = 'watcher-preheat';
const PUBLISH_TIMEOUT_MS = 5_000;
const RETRY_DELAY_MS = 2_000;
/** Wait before a job's report consumer that ended is opened again, in ms. */
const REPORTS_REOPEN_MS = 1_000;
/**
 * How often a job reading its reports checks that the stream did not start over under its
 * consumer, in ms: a NATS cluster brings an R1 stream whose server lost its volume back
 * empty, same name and creation time, the consumer with it past its end, and nothing ends.
 */
const REPORTS_STREAM_CHECK_MS = 5_000;
/** Retries of a job failing on transient errors wait up to this long, in ms. */
const MAX_BACKOFF_MS = 5 * 60_000;
/** Deliveries of a job before a transient failure fails it. */
const MAX_ATTEMPTS = 10;
/** An agent missing from the presence bucket this long has left, in ms. */
const AGENT_GRACE_MS = 60_000;
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
  /** The agents alive now, and when the presence bucket lists them all. */
  readonly agents: AgentsView;
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
    const { js, logger, concurrency } = this.#deps;
    await this.#ensureConsumer();
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

  /**
   * Declares the shared consumer again and, when it had to be made anew (a NATS server back
   * with an empty store), takes it up.
   */
  async redeclare(): Promise<void> {
    if (await this.#ensureConsumer()) {
      await this.#loop?.reopen();
    }
  }

  async stop(): Promise<void> {
    this.#stopping.abort();
    await this.#loop?.stop();
  }

  #ensureConsumer(): Promise<boolean> {
    return ensureConsumer(this.#deps.jsm, STREAMS.preheat.name, PREHEAT_CONSUMER, {
      ackWaitMs: this.#deps.ackWaitMs,
      maxDeliver: -1,
      // Each replica bounds its own jobs (below); this only bounds the whole group.
      maxAckPending: 1_000,
    });
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
    const run: Run = {
      command,
      seq: msg.info.streamSequence,
      queuedAtNanos: msg.timestampNanos,
      attempt: msg.info.deliveryCount,
    };
    const heartbeat = setInterval(() => msg.working(), Math.max(1_000, ackWaitMs / 3));
    metrics.jobsRunning.inc();
    try {
      const status = await this.#run(run, existing);
      if (status === undefined) {
        // Stopping: the job goes back to the queue and resumes where its reports say.
        msg.nak();
        return;
      }
      msg.ack();
    } catch (error) {
      const delayMs = Math.min(RETRY_DELAY_MS * 2 ** (run.attempt - 1), MAX_BACKOFF_MS);
      logger.warn(
        { err: error, job: command.id, attempt: run.attempt, retryInMs: delayMs },
        'preheat job interrupted; it will be retried',
      );
      msg.nak(delayMs);
    } finally {
      clearInterval(heartbeat);
      metrics.jobsRunning.dec();
    }
  }

  /**
   * Runs a job to its end; undefined when stopped part-way (the job resumes later). Throws
   * for a transient failure (a registry's 5xx, NATS trouble) while attempts remain.
   */
  async #run(run: Run, existing: JobStatus | undefined): Promise<JobStatus | undefined> {
    const { resolver, metrics, logger, timeoutMs } = this.#deps;
    const { command } = run;
    const now = Date.now();
    // Counts and failures are rebuilt from this run's reports, replayed from the stream.
    let status: JobStatus = {
      ...(existing ?? {
        id: command.id,
        image: command.image,
        resolved: command.image,
        scope: command.scope,
        selector: command.selector,
        platforms: command.platforms,
        origin: command.origin,
        blobsTotal: 0,
        createdAt: now,
      }),
      state: existing?.state ?? 'queued',
      blobsDone: 0,
      failures: [],
      updatedAt: now,
    };
    delete status.error;
    delete status.nodesDone;
    delete status.nodesTotal;
    delete status.failuresTotal;
    delete status.nodeBytesDone;
    delete status.nodeBytesTotal;
    // The job's time runs from when it was queued, however often it is interrupted.
    const deadline = AbortSignal.timeout(Math.max(0, status.createdAt + timeoutMs - now));
    const signal = AbortSignal.any([this.#stopping.signal, deadline]);
    const tracker = new JobProgress(
      this.#deps,
      () => status,
      (next) => (status = next),
    );
    try {
      const { reference, registry } = resolver.parse(command.image);
      const digest =
        reference.digest ?? (await resolver.currentDigest(registry, reference, signal));
      const image = await resolver.resolve(
        registry,
        reference.repository,
        digest,
        command.platforms,
        signal,
      );
      tracker.sizes = new Map(image.blobs.map((b) => [b.digest, b.size]));
      await tracker.update(
        {
          state: 'running',
          blobsTotal: image.blobs.length,
          bytesTotal: image.blobs.reduce((sum, b) => sum + b.size, 0),
          bytesDone: 0,
          // A resumed job keeps its first start, so its rate counts the time it was down.
          startedAt: status.startedAt ?? Date.now(),
        },
        true,
      );
      logger.info(
        { job: command.id, manifests: image.manifests.length, blobs: image.blobs.length },
        'preheat running',
      );
      await this.#seed(run, image, tracker, signal);
      if (command.scope === 'nodes') {
        await this.#nodes(run, image, tracker, signal);
      }
      const failed = tracker.failureCount;
      await tracker.update(
        {
          state: failed > 0 ? 'failed' : 'done',
          ...(failed > 0 ? { error: `${failed} blob(s) could not be preheated` } : {}),
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
      const final =
        error instanceof JobFailed ||
        deadline.aborted ||
        isPermanent(error) ||
        run.attempt >= MAX_ATTEMPTS;
      if (!final) {
        // Shown while the job waits for its next attempt.
        await tracker
          .update({ error: `attempt ${run.attempt}: ${reason}`.slice(0, 1024) }, true)
          .catch(() => undefined);
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
    // The final state was written (and published) by the last update, before the ack.
    return status;
  }

  /** Asks the seed server for every blob and waits until it reports each one. */
  async #seed(
    run: Run,
    image: ResolvedImage,
    tracker: JobProgress,
    signal: AbortSignal,
  ): Promise<void> {
    const { js } = this.#deps;
    const { command } = run;
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
          // Per run: a job queued again after failing asks the seed server again.
          msgID: `${command.id}.${run.seq}.${parseDigest(blob.digest).hex}`,
          timeout: PUBLISH_TIMEOUT_MS,
          ...optionalHeaders(),
        },
      );
    }
    const pending = new Set(image.blobs.map((b) => b.digest));
    await this.#followReports(
      run,
      signal,
      () => pending.size === 0,
      (report) => {
        if (report.role === 'seed' && pending.delete(report.blob)) {
          tracker.blobSeeded(report);
        }
      },
    );
    if (tracker.failureCount > 0) {
      throw new JobFailed(`the seed server could not preheat ${tracker.failureCount} blob(s)`);
    }
  }

  /** Hands the blobs to the matching live agents and waits for each to report them all. */
  async #nodes(
    run: Run,
    image: ResolvedImage,
    tracker: JobProgress,
    signal: AbortSignal,
  ): Promise<void> {
    const { js, agents } = this.#deps;
    const { command } = run;
    // A presence bucket declared a moment ago does not list the agents that found it missing
    // yet; nor does one not declared at all (a transient failure: the job is tried again).
    await agents.settled(signal, AGENT_GRACE_MS);
    const expected = new Set(
      (await agents.live())
        .filter((agent) => selectorMatches(command.selector, agent.labels))
        .map((agent) => agent.peer),
    );
    const imageBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    await tracker.update(
      {
        nodesTotal: expected.size,
        nodesDone: 0,
        nodeBytesTotal: imageBytes * expected.size,
        nodeBytesDone: 0,
        nodesStartedAt: tracker.current.nodesStartedAt ?? Date.now(),
      },
      true,
    );
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
      {
        msgID: `${command.id}.${run.seq}.nodes`,
        timeout: PUBLISH_TIMEOUT_MS,
        ...optionalHeaders(),
      },
    );
    const remaining = new Map(
      [...expected].map((peer) => [peer, new Set(image.blobs.map((b) => b.digest))]),
    );
    let done = 0;
    // Agents missing from the presence bucket for a while are not waited for: they count as
    // failed. A restarting agent (a DaemonSet update) is back well within the grace.
    const missingSince = new Map<string, number>();
    const stopWaiting = new AbortController();
    const checkAgents = setInterval(() => {
      void agents
        .live()
        .then((live) => {
          const alive = new Set(live.map((a) => a.peer));
          const now = Date.now();
          for (const peer of [...remaining.keys()]) {
            if (alive.has(peer)) {
              missingSince.delete(peer);
              continue;
            }
            const since = missingSince.get(peer) ?? now;
            missingSince.set(peer, since);
            if (now - since >= AGENT_GRACE_MS) {
              remaining.delete(peer);
              tracker.fail({ peer, blob: '', error: 'the agent left before finishing' });
            }
          }
          if (remaining.size === 0) {
            stopWaiting.abort();
          }
        })
        .catch(() => undefined);
    }, AGENTS_CHECK_MS);
    try {
      await this.#followReports(
        run,
        AbortSignal.any([signal, stopWaiting.signal]),
        () => remaining.size === 0,
        (report) => {
          const blobs = report.role === 'agent' ? remaining.get(report.peer) : undefined;
          if (blobs?.delete(report.blob) !== true) {
            return;
          }
          if (report.ok) {
            tracker.blobWarmOnNode(report.blob);
          } else {
            tracker.fail({ peer: report.peer, blob: report.blob, error: report.error ?? 'failed' });
          }
          if (blobs.size === 0 && remaining.delete(report.peer)) {
            done += 1;
            void tracker.update({ nodesDone: done });
          }
        },
      ).catch((error: unknown) => {
        // Every agent still awaited has left: not an error of the job's own.
        if (!stopWaiting.signal.aborted || signal.aborted) {
          throw error;
        }
      });
    } finally {
      clearInterval(checkAgents);
      stopWaiting.abort();
    }
  }

  /**
   * Reads this run's reports (those published since its command was queued) from the start of
   * the stream, so a resumed run counts what was reported before; stops when `finished`.
   * When the stream or the consumer goes (the stream deleted and declared again, or a NATS
   * server back with an empty store), the consumer ends (`abort_on_missing_resource`: nats.js
   * would otherwise re-create it after the last sequence delivered, past the end of a stream
   * made anew, and the reports published into it would never be seen) and is opened again
   * from the first message; `onReport` takes a report read twice as a no-op.
   */
  async #followReports(
    run: Run,
    signal: AbortSignal,
    finished: () => boolean,
    onReport: (report: PreheatReport) => void,
  ): Promise<void> {
    const { metrics, logger } = this.#deps;
    let failures = 0;
    while (!finished()) {
      try {
        await this.#readReports(run, signal, finished, onReport);
      } catch (error) {
        if (signal.aborted) {
          throw error;
        }
        // Warned once per run of the job: with NATS away every attempt fails alike, each second.
        failures += 1;
        logger[failures === 1 ? 'warn' : 'debug'](
          { err: error, job: run.command.id, failures },
          'preheat report consumer ended; reading the reports again from the start',
        );
      }
      signal.throwIfAborted();
      if (!finished()) {
        metrics.reportReaderReopens.inc();
        await sleep(REPORTS_REOPEN_MS, undefined, { signal });
      }
    }
  }

  /** One consumer of the run's reports, until `finished`, the signal, or the consumer ends. */
  async #readReports(
    run: Run,
    signal: AbortSignal,
    finished: () => boolean,
    onReport: (report: PreheatReport) => void,
  ): Promise<void> {
    const { js, jsm, metrics, logger } = this.#deps;
    const job = run.command.id;
    const consumer = await js.consumers.get(STREAMS.preheatEvents.name, {
      filter_subjects: preheatReportSubjects(job),
    });
    const messages = await consumer.consume({ abort_on_missing_resource: true });
    const close = (): void => void messages.close();
    signal.addEventListener('abort', close, { once: true });
    /** Stream sequence of the last report read. */
    let lastSeq = 0;
    const check = setInterval(() => {
      // Read before asking: reports read while the answer comes are past its last sequence.
      const read = lastSeq;
      jsm.streams.info(STREAMS.preheatEvents.name).then(
        (info) => {
          if (info.state.last_seq < read) {
            logger.warn(
              { job, lastRead: read, lastSeq: info.state.last_seq },
              'the preheat report stream started over under its consumer; reading it again',
            );
            close();
          }
        },
        // Gone, or NATS away: the consumer ends by itself, or the next check tells.
        () => undefined,
      );
    }, REPORTS_STREAM_CHECK_MS);
    try {
      if (signal.aborted) {
        return;
      }
      for await (const msg of messages) {
        lastSeq = msg.seq;
        if (msg.timestampNanos < run.queuedAtNanos) {
          continue;
        }
        const decoded = decodeMessage(preheatReport, msg.data);
        const report = decoded.ok ? decoded.value : undefined;
        if (
          report === undefined ||
          msg.subject !== preheatReportSubject(report.job, report.role, report.peer)
        ) {
          metrics.eventsRejected.inc({ type: 'preheat-report' });
          logger.warn({ subject: msg.subject }, 'invalid preheat report ignored');
          continue;
        }
        metrics.reports.inc({ role: report.role, ok: String(report.ok) });
        onReport(report);
        if (finished()) {
          return;
        }
      }
    } finally {
      clearInterval(check);
      signal.removeEventListener('abort', close);
      await messages.close();
    }
  }
}

/**
 * Failures no retry will change: a missing image, a bad or oversized manifest, a registry
 * not configured, input that does not parse. A registry's 5xx and NATS trouble are retried.
 */
function isPermanent(error: unknown): boolean {
  if (error instanceof ResolveError) {
    return error.code !== 'REGISTRY_ANSWER';
  }
  return error instanceof OciParseError || (error instanceof Error && error.name === 'ZodError');
}

/** One delivery of a job's command. */
interface Run {
  readonly command: PreheatCommand;
  /** The command's stream sequence: names this run in message ids. */
  readonly seq: number;
  /** When the command was queued, in ns: reports before it belong to an earlier run. */
  readonly queuedAtNanos: bigint;
  /** Which delivery this is (1 for the first). */
  readonly attempt: number;
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
  #failures = 0;
  /** Bytes of each blob of the image, by digest, once it is resolved. */
  sizes: ReadonlyMap<string, number> = new Map();

  constructor(deps: RunnerDeps, get: () => JobStatus, set: (status: JobStatus) => void) {
    this.#deps = deps;
    this.#get = get;
    this.#set = set;
  }

  get current(): JobStatus {
    return this.#get();
  }

  /** Failures in this run (the status keeps only the first few). */
  get failureCount(): number {
    return this.#failures;
  }

  blobSeeded(report: PreheatReport): void {
    if (report.ok) {
      void this.update({
        blobsDone: this.current.blobsDone + 1,
        bytesDone: (this.current.bytesDone ?? 0) + (this.sizes.get(report.blob) ?? 0),
      });
    } else {
      this.fail({ peer: report.peer, blob: report.blob, error: report.error ?? 'failed' });
    }
  }

  /** An agent reported a blob held and verified. */
  blobWarmOnNode(blob: string): void {
    void this.update({
      nodeBytesDone: (this.current.nodeBytesDone ?? 0) + (this.sizes.get(blob) ?? 0),
    });
  }

  fail(failure: JobStatus['failures'][number]): void {
    this.#failures += 1;
    const failures = [...this.current.failures, failure].slice(0, MAX_FAILURES);
    void this.update({ failures, failuresTotal: this.#failures });
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
