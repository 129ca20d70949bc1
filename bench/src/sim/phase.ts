/**
 * One rung of the simulator's ladder: a fresh NATS (one server or a three-node cluster), the
 * real tracker replicas, a virtual seed (piece hashes and a complete have, as the seed server
 * publishes them), and N virtual agents in worker processes. Measures while the agents fetch
 * every blob, then restarts a tracker and times its replay. Everything it starts is torn down
 * by the caller's teardown, also on failure or interrupt.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  encodeMessage,
  KV_BUCKETS,
  pieceHashes,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  STREAMS,
} from '@shoal/proto';
import { ensureKv, ensureStreams } from '@shoal/runtime/nats';
import { scrapeMetrics, startTracker, type ServiceProcess, type Teardown } from '@shoal/testkit';

import { cpuProfileEnv, progress } from '../cli.js';
import { boundWithin } from '../histogram.js';
import { startNatsCluster3, startSingleNats, type SimNats } from './nats-cluster.js';
import {
  connzTotals,
  cpuSeconds,
  jetStreamState,
  peakRssBytes,
  varzTotals,
  type JetStreamState,
  type ServerTotals,
} from './probes.js';
import {
  PUBLISHED_KINDS,
  RECEIVED_KINDS,
  quantile,
  sumTallies,
  type FromWorker,
  type HashReads,
  type Pacing,
  type SimBlob,
  type Tally,
  type ToWorker,
  type WorkerConfig,
  type WorkerReport,
} from './stats.js';

/** The bytes a piece stands for; only the hash message's `size` field uses it. */
const PIECE_SIZE = 4 * 1024 * 1024;
const REGISTRY = 'registry.sim.local';
const REPOSITORY = 'sim/image';
const SEED_ID = 'sim-seed';

/**
 * The upper bounds of the tracker's hand-out latency histogram
 * (`shoal_tracker_handout_latency_seconds`), in s. A bound missing from a tracker reads as no
 * want answered within it, so a quantile read from these errs high, never low.
 */
export const HANDOUT_LATENCY_BOUNDS_S = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;

/**
 * The smallest bound of `HANDOUT_LATENCY_BOUNDS_S` within which a `q` share of the wants the
 * trackers answered were answered, from their buckets summed (Infinity past the last bound,
 * NaN when none was answered).
 */
export function trackerLatencyBoundS(trackers: readonly TrackerFigures[], q: number): number {
  const live = trackers.filter((t) => !t.killed);
  return boundWithin(
    {
      bounds: HANDOUT_LATENCY_BOUNDS_S,
      cumulative: HANDOUT_LATENCY_BOUNDS_S.map((_, i) =>
        live.reduce((sum, t) => sum + (t.handoutLatencyBuckets[i] ?? 0), 0),
      ),
      count: live.reduce((sum, t) => sum + t.handoutLatencyCount, 0),
      sum: live.reduce((sum, t) => sum + t.handoutLatencySumS, 0),
    },
    q,
  );
}
/** How often JetStream's consumers are counted during the run, in ms. */
const SAMPLE_MS = 2_000;
/** Time kept back from a phase's deadline for the tracker restart and teardown, in ms. */
const RESERVE_MS = 20_000;

export interface PhaseOptions {
  readonly agents: number;
  readonly blobs: number;
  readonly pieces: number;
  readonly trackers: number;
  readonly killTracker: boolean;
  readonly cluster3: boolean;
  readonly workers: number;
  readonly connections: number;
  readonly downloadPiecesPerS: number;
  readonly uploadPiecesPerS: number;
  readonly seedPiecesPerS: number;
  readonly wantIntervalMs: number;
  readonly haveIntervalMs: number;
  readonly stallTimeoutMs: number;
  readonly rampMs: number;
  readonly churn: number;
  readonly preheat: boolean;
  /** How the virtual agents read piece hashes (see `WorkerConfig.hashReads`). */
  readonly hashReads: HashReads;
  /** When the virtual agents publish wants and haves (see `WorkerConfig.pacing`). */
  readonly pacing: Pacing;
  /** Settings added to the trackers' environment. */
  readonly trackerEnv: Readonly<Record<string, string>>;
  /** Where the trackers write V8 CPU profiles (`--cpu-prof`) when they exit; none when undefined. */
  readonly cpuProfDir: string | undefined;
  /** Another checkout built with `tsc -b` whose tracker runs instead of this one's. */
  readonly trackerBuildRoot?: string | undefined;
  /** When this phase must be over, in ms since the epoch. */
  readonly deadlineAt: number;
  readonly signal: AbortSignal;
}

export interface TrackerFigures {
  readonly cpuS: number;
  readonly peakRssBytes: number;
  readonly handouts: number;
  readonly haves: number;
  /** Sum and count of the swarm sizes the tracker saw per want answered (its histogram). */
  readonly swarmSizeSum: number;
  readonly swarmSizeCount: number;
  /** Wants replaced in the replica's queue by a newer one of the same asker and blob. */
  readonly coalesced: number;
  /**
   * Sum (s) and count of the replica's own hand-out latency histogram: from a want's
   * JetStream timestamp to its hand-out's publication, i.e. without the agent's publish and
   * the hand-out's delivery.
   */
  readonly handoutLatencySumS: number;
  readonly handoutLatencyCount: number;
  /**
   * The same histogram's buckets: wants answered within each bound of
   * `HANDOUT_LATENCY_BOUNDS_S` (cumulative, as Prometheus counts them).
   */
  readonly handoutLatencyBuckets: readonly number[];
  /** Haves of blobs another replica owns, kept undecoded (0 without blob sharding). */
  readonly havesSkipped: number;
  /** Wants pulled by this replica for another's blob and forwarded to it. */
  readonly wantsForwarded: number;
  /** Of them, those the owner did not answer (timed out, refused, nobody listening). */
  readonly forwardsUnanswered: number;
  /** Changes of the live replica set this replica saw. */
  readonly shardChanges: number;
  readonly killed: boolean;
}

export interface PhaseResult {
  readonly agents: number;
  readonly blobs: number;
  /** True when every agent-blob download completed before the phase's deadline. */
  readonly finished: boolean;
  readonly started: number;
  readonly completed: number;
  readonly latencyP50Ms: number;
  readonly latencyP99Ms: number;
  readonly latencyMaxMs: number;
  readonly published: Record<string, Tally>;
  readonly received: Record<string, Tally>;
  readonly wants: number;
  readonly unanswered: number;
  /** Wants still in SHOAL_WANTS when the run ended: waiting in the backlog, not lost. */
  readonly queuedWants: number;
  readonly extraHandouts: number;
  /** Wants answered by the same hand-out as an earlier want of the same agent and blob. */
  readonly answeredTogether: number;
  readonly wantPublishFailures: number;
  /** Agent connections as the servers counted them (/connz). */
  readonly connz: Awaited<ReturnType<typeof connzTotals>>;
  /** All servers' totals over the run (/varz), trackers and JetStream's own traffic included. */
  readonly varz: ServerTotals;
  /** The workers' mean gap between scheduling rounds while downloads ran, in ms (100 planned). */
  readonly tickGapMs: number;
  /** The tracker replicas' connections as the servers counted them (/connz). */
  readonly trackerConnz: Awaited<ReturnType<typeof connzTotals>>;
  readonly trackers: TrackerFigures[];
  readonly jetStream: JetStreamState;
  readonly peakConsumers: number;
  readonly peakPieceConsumers: number;
  /** From the common start to the last agent-blob completion, in seconds. */
  readonly allDoneS: number;
  readonly downloadP50S: number;
  readonly downloadP99S: number;
  readonly replay: Replay & { readyS: number; peakRssBytes: number };
  readonly churned: number;
  /** Agent-blob downloads that stalled and fell back to the origin, and the pieces they read there. */
  readonly fallbacks: number;
  readonly originPieces: number;
  readonly errors: Record<string, number>;
  /** CPU seconds over the run of the nats-server(s) and of the simulator's workers. */
  readonly natsCpuS: number;
  readonly workersCpuS: number;
}

/** A forked worker and its messages as promises. */
class WorkerProcess {
  readonly child: ChildProcess;
  done = 0;
  of = 0;
  readonly #waiting = new Map<string, (message: FromWorker) => void>();
  #failure: string | undefined;
  /** True once the worker's report has arrived: its exit after that is the normal end. */
  #reported = false;

  constructor() {
    this.child = fork(new URL('./worker.js', import.meta.url), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (message: FromWorker) => {
      if (message.type === 'progress') {
        this.done = message.done;
        this.of = message.of;
      } else if (message.type === 'failed') {
        this.#failure = message.error;
        for (const resolve of this.#waiting.values()) {
          resolve(message);
        }
      } else {
        this.#reported ||= message.type === 'report';
        this.#waiting.get(message.type)?.(message);
      }
    });
    // 'close', not 'exit': it comes after every message the worker sent has been read.
    this.child.on('close', (code, signal) => {
      if (!this.#waiting.has('exited') && !this.#reported) {
        this.#failure ??= `worker exited with ${String(code ?? signal)}`;
        progress(`a simulator worker ended early: ${this.#failure}`);
      }
      for (const resolve of this.#waiting.values()) {
        resolve({ type: 'failed', error: this.#failure ?? 'worker exited' });
      }
    });
  }

  send(message: ToWorker): void {
    this.child.send(message);
  }

  /** Resolves with the next message of `type`; rejects when the worker fails first. */
  async next<T extends FromWorker['type']>(
    type: T,
    timeoutMs: number,
  ): Promise<Extract<FromWorker, { type: T }>> {
    if (this.#failure !== undefined) {
      throw new Error(`simulator worker failed: ${this.#failure}`);
    }
    const message = await new Promise<FromWorker>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`worker: no ${type} within ${String(timeoutMs)} ms`)),
        timeoutMs,
      );
      this.#waiting.set(type, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
    this.#waiting.delete(type);
    if (message.type === 'failed') {
      throw new Error(`simulator worker failed: ${message.error}`);
    }
    return message as Extract<FromWorker, { type: T }>;
  }

  async stop(): Promise<void> {
    this.#waiting.set('exited', () => undefined);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGKILL');
      await exited;
    }
  }
}

/** Runs one phase; `teardown` gets every server and process it starts. */
export async function runPhase(options: PhaseOptions, teardown: Teardown): Promise<PhaseResult> {
  const { agents, signal } = options;
  const aborted = (): void => {
    if (signal.aborted) {
      throw new Error('interrupted');
    }
  };

  // NATS: one server, or the three-node JetStream cluster.
  const nats: SimNats = options.cluster3 ? await startNatsCluster3() : await startSingleNats();
  teardown.add('nats', () => nats.stop());
  const natsUrl = nats.urls.join(',');
  aborted();

  // The real trackers; the first creates SHOAL_SWARM and SHOAL_WANTS.
  const trackerEnv: Record<string, string> = {
    SHOAL_NATS_STREAM_REPLICAS: String(nats.replicas),
    SHOAL_LOG_LEVEL: 'info',
    ...options.trackerEnv,
  };
  Object.assign(trackerEnv, cpuProfileEnv(options.cpuProfDir));
  const trackerBuild =
    options.trackerBuildRoot === undefined ? {} : { buildRoot: options.trackerBuildRoot };
  const trackers: ServiceProcess[] = [];
  for (let r = 0; r < options.trackers; r++) {
    const tracker = await startTracker({ natsUrl, env: trackerEnv, ...trackerBuild });
    teardown.add(`tracker ${tracker.url}`, () => tracker.stop());
    trackers.push(tracker);
  }
  aborted();

  // The simulator's own connection: streams other services own, the virtual seed, probes.
  const nc: NatsConnection = await connect({ servers: [...nats.urls], name: 'shoal-sim-main' });
  teardown.add('simulator connection', () => nc.close());
  const js = jetstream(nc);
  const jsm: JetStreamManager = await jetstreamManager(nc);
  // SHOAL_PIECES allows direct gets, as the seed server declares it: any server holding the
  // stream answers them, without a consumer (nats-server 2.9 and later).
  await ensureStreams(jsm, [STREAMS.pieces, STREAMS.preheatNodes], nats.replicas);
  if (options.preheat) {
    await ensureKv(js, KV_BUCKETS.agents, nats.replicas);
  }
  const blobs = await seedBlobs(js, options.blobs, options.pieces);

  // The virtual agents, split evenly over the workers.
  const workers: WorkerProcess[] = [];
  const connectionName = `shoal-sim-${String(agents)}`;
  for (let w = 0; w < options.workers; w++) {
    const worker = new WorkerProcess();
    teardown.add(`simulator worker ${String(w)}`, () => worker.stop());
    workers.push(worker);
    const config: WorkerConfig = {
      worker: w,
      workers: options.workers,
      natsUrls: nats.urls,
      connections: options.connections,
      connectionName,
      firstAgent: Math.floor((agents * w) / options.workers),
      endAgent: Math.floor((agents * (w + 1)) / options.workers),
      totalAgents: agents,
      blobs,
      registry: REGISTRY,
      repository: REPOSITORY,
      downloadPiecesPerS: options.downloadPiecesPerS,
      uploadPiecesPerS: options.uploadPiecesPerS,
      seedPiecesPerS: options.seedPiecesPerS,
      wantIntervalMs: options.wantIntervalMs,
      haveIntervalMs: options.haveIntervalMs,
      stallTimeoutMs: options.stallTimeoutMs,
      wantLimit: 16,
      rampMs: options.rampMs,
      churn: options.churn,
      preheat: options.preheat,
      hashReads: options.hashReads,
      pacing: options.pacing,
      presenceIntervalMs: 10_000,
    };
    worker.send({ type: 'start', config });
  }
  await Promise.all(workers.map((w) => w.next('ready', 120_000)));
  aborted();

  // The run: baselines, the common start, sampling until every download is done.
  const varzBefore = await varzTotals(nats.monitorUrls);
  const cpuBefore = await Promise.all(trackers.map((t) => cpuSeconds(t.process.child.pid)));
  const natsCpuBefore = await sumCpu(nats.pids);
  const startAt = Date.now() + 500;
  for (const worker of workers) {
    worker.send({ type: 'go', startAt });
  }
  progress(`${String(agents)} agents: joining over ${String(options.rampMs / 1000)} s`);
  let peakConsumers = 0;
  let peakPieceConsumers = 0;
  const killed = new Set<number>();
  const killAt = startAt + Math.max(1_000, options.rampMs / 2);
  const handoutsBeforeKill = new Map<number, number>();
  const runUntil = options.deadlineAt - RESERVE_MS - (options.killTracker ? 15_000 : 5_000);
  let lastReport = 0;
  for (;;) {
    aborted();
    const done = workers.reduce((sum, w) => sum + w.done, 0);
    const of = agents * options.blobs;
    if (done >= of || Date.now() >= runUntil) {
      break;
    }
    if (options.killTracker && killed.size === 0 && Date.now() >= killAt && trackers.length > 1) {
      const victim = trackers[0];
      if (victim !== undefined) {
        handoutsBeforeKill.set(0, await handoutsOf(victim));
        cpuBefore[0] = (cpuBefore[0] ?? 0) - (await cpuSeconds(victim.process.child.pid));
        await victim.process.kill();
        killed.add(0);
        progress(`killed tracker replica 0 (SIGKILL) with ${String(done)}/${String(of)} done`);
      }
    }
    try {
      const state = await jetStreamState(jsm);
      peakConsumers = Math.max(peakConsumers, state.consumers);
      peakPieceConsumers = Math.max(
        peakPieceConsumers,
        state.streams[STREAMS.pieces.name]?.consumers ?? 0,
      );
    } catch {
      // A sample lost to a busy server changes nothing but the peak's precision.
    }
    if (Date.now() - lastReport >= 10_000) {
      lastReport = Date.now();
      progress(`${String(agents)} agents: ${String(done)}/${String(of)} blob downloads done`);
    }
    await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS));
  }
  const finished = workers.reduce((sum, w) => sum + w.done, 0) >= agents * options.blobs;

  // Finish: every want answered (or the grace spent), then the workers report.
  const graceMs = options.killTracker ? 15_000 : 5_000;
  for (const worker of workers) {
    worker.send({ type: 'finish', graceMs });
  }
  const reports: WorkerReport[] = (
    await Promise.all(workers.map((w) => w.next('report', graceMs + 30_000)))
  ).map((m) => m.report);
  const natsCpuS = (await sumCpu(nats.pids)) - natsCpuBefore;
  const workersCpuS = reports.reduce((sum, r) => sum + r.cpuS, 0);

  // Server-side figures.
  // A probe that times out on a saturated server costs its figure (NaN), not the phase.
  const noTotals: ServerTotals = {
    inMsgs: Number.NaN,
    outMsgs: Number.NaN,
    inBytes: Number.NaN,
    outBytes: Number.NaN,
  };
  const varzAfter = await probe('/varz', () => varzTotals(nats.monitorUrls), noTotals);
  const noConnz = {
    connections: Number.NaN,
    sent: Number.NaN,
    sentBytes: Number.NaN,
    received: Number.NaN,
    receivedBytes: Number.NaN,
  };
  const connz = await probe('/connz', () => connzTotals(nats.monitorUrls, connectionName), noConnz);
  // Before the restart below, whose replay would count as the run's.
  const trackerConnz = await probe(
    '/connz of the trackers',
    () => connzTotals(nats.monitorUrls, 'shoal-tracker'),
    noConnz,
  );
  const jetStream = await probe('the JetStream state', () => jetStreamState(jsm), {
    bytes: Number.NaN,
    messages: Number.NaN,
    consumers: Number.NaN,
    streams: {},
  });
  const trackerFigures: TrackerFigures[] = [];
  for (const [r, tracker] of trackers.entries()) {
    const pid = tracker.process.child.pid;
    if (killed.has(r)) {
      trackerFigures.push({
        cpuS: -(cpuBefore[r] ?? 0),
        peakRssBytes: Number.NaN,
        handouts: handoutsBeforeKill.get(r) ?? 0,
        haves: Number.NaN,
        swarmSizeSum: 0,
        swarmSizeCount: 0,
        coalesced: 0,
        handoutLatencySumS: 0,
        handoutLatencyCount: 0,
        handoutLatencyBuckets: [],
        havesSkipped: Number.NaN,
        wantsForwarded: Number.NaN,
        forwardsUnanswered: Number.NaN,
        shardChanges: Number.NaN,
        killed: true,
      });
      continue;
    }
    const metrics = await probe(`${tracker.url}/metrics`, () => scrapeMetrics(tracker.url), {
      get: () => Number.NaN,
      has: () => false,
    });
    trackerFigures.push({
      cpuS: (await cpuSeconds(pid)) - (cpuBefore[r] ?? 0),
      peakRssBytes: await peakRssBytes(pid),
      handouts: metrics.get('shoal_tracker_handouts_total'),
      haves: metrics.get('shoal_tracker_events_consumed_total', { type: 'piece-have' }),
      swarmSizeSum: metrics.get('shoal_tracker_swarm_size_peers_sum'),
      swarmSizeCount: metrics.get('shoal_tracker_swarm_size_peers_count'),
      handoutLatencySumS: metrics.get('shoal_tracker_handout_latency_seconds_sum'),
      handoutLatencyCount: metrics.get('shoal_tracker_handout_latency_seconds_count'),
      handoutLatencyBuckets: HANDOUT_LATENCY_BOUNDS_S.map((le) =>
        metrics.get('shoal_tracker_handout_latency_seconds_bucket', { le: String(le) }),
      ),
      // 0 from a tracker without a want queue (the metric is absent).
      coalesced: metrics.get('shoal_tracker_wants_coalesced_total'),
      // 0 from a tracker without blob sharding (the metrics are absent).
      havesSkipped: metrics.get('shoal_tracker_haves_skipped_total'),
      wantsForwarded: metrics.get('shoal_tracker_wants_forwarded_total'),
      forwardsUnanswered:
        metrics.get('shoal_tracker_wants_forwarded_total') -
        metrics.get('shoal_tracker_wants_forwarded_total', { outcome: 'answered' }),
      shardChanges: metrics.get('shoal_tracker_shard_changes_total'),
      killed: false,
    });
  }

  // Replay: a live replica stops, and a new one starts and rebuilds its view from the stream.
  const restarted = trackers.findIndex((_, r) => !killed.has(r));
  await trackers[restarted]?.stop();
  const restartAt = Date.now();
  const fresh = await startTracker({ natsUrl, env: trackerEnv, ...trackerBuild });
  teardown.add(`tracker ${fresh.url}`, () => fresh.stop());
  const readyS = (Date.now() - restartAt) / 1000;
  const replay = await replayFromLog(fresh.process.logPath);

  const published = sumTallies(
    PUBLISHED_KINDS,
    reports.map((r) => r.published),
  );
  const received = sumTallies(
    RECEIVED_KINDS,
    reports.map((r) => r.received),
  );
  const latencies = reports.flatMap((r) => r.latenciesMs);
  const downloads = reports.flatMap((r) => r.downloadMs);
  const lastCompletion = Math.max(...reports.map((r) => r.lastCompletionAt));
  const errors: Record<string, number> = {};
  for (const report of reports) {
    for (const [kind, count] of Object.entries(report.errors)) {
      errors[kind] = (errors[kind] ?? 0) + count;
    }
  }
  const sum = (pick: (r: WorkerReport) => number): number =>
    reports.reduce((total, r) => total + pick(r), 0);
  return {
    agents,
    blobs: options.blobs,
    finished,
    started: sum((r) => r.started),
    completed: sum((r) => r.completed),
    latencyP50Ms: quantile(latencies, 0.5),
    latencyP99Ms: quantile(latencies, 0.99),
    latencyMaxMs: quantile(latencies, 1),
    published,
    received,
    wants: sum((r) => r.wants),
    unanswered: sum((r) => r.unanswered),
    extraHandouts: sum((r) => r.extraHandouts),
    answeredTogether: sum((r) => r.answeredTogether),
    wantPublishFailures: sum((r) => r.wantPublishFailures),
    connz,
    trackerConnz,
    tickGapMs: sum((r) => r.tickGapSumMs) / sum((r) => r.tickGaps),
    varz: {
      inMsgs: varzAfter.inMsgs - varzBefore.inMsgs,
      outMsgs: varzAfter.outMsgs - varzBefore.outMsgs,
      inBytes: varzAfter.inBytes - varzBefore.inBytes,
      outBytes: varzAfter.outBytes - varzBefore.outBytes,
    },
    trackers: trackerFigures,
    jetStream,
    peakConsumers: Number.isFinite(jetStream.consumers)
      ? Math.max(peakConsumers, jetStream.consumers)
      : peakConsumers,
    peakPieceConsumers,
    allDoneS: lastCompletion > 0 ? (lastCompletion - startAt) / 1000 : Number.NaN,
    downloadP50S: quantile(downloads, 0.5) / 1000,
    downloadP99S: quantile(downloads, 0.99) / 1000,
    replay: {
      readyS,
      ...replay,
      peakRssBytes: await peakRssBytes(fresh.process.child.pid),
    },
    churned: sum((r) => r.churned),
    fallbacks: sum((r) => r.fallbacks),
    originPieces: sum((r) => r.originPieces),
    errors,
    queuedWants: jetStream.streams[STREAMS.wants.name]?.messages ?? 0,
    natsCpuS,
    workersCpuS,
  };
}

/** Generated blobs, each with its piece hashes and a complete seed have, as the seed publishes. */
async function seedBlobs(
  js: ReturnType<typeof jetstream>,
  count: number,
  pieces: number,
): Promise<SimBlob[]> {
  const blobs: SimBlob[] = [];
  for (let b = 0; b < count; b++) {
    const digest = `sha256:${createHash('sha256').update(randomBytes(32)).digest('hex')}`;
    const hashes = Array.from({ length: pieces }, () => randomBytes(32).toString('hex'));
    // The seed server publishes hashes in batches as pieces arrive; one batch holds up to 1024.
    for (let first = 0; first < pieces; first += 1024) {
      await js.publish(
        pieceHashesSubject(digest),
        encodeMessage(pieceHashes, {
          type: 'piece-hashes',
          blob: digest,
          size: pieces * PIECE_SIZE,
          pieceSize: PIECE_SIZE,
          first,
          hashes: hashes.slice(first, first + 1024),
        }),
      );
    }
    await js.publish(
      pieceHaveSubject(digest, SEED_ID),
      encodeMessage(pieceHave, {
        type: 'piece-have',
        blob: digest,
        peer: { id: SEED_ID, url: 'http://127.0.0.1:65010' },
        pieces: [[0, pieces]],
        complete: true,
        seed: true,
      }),
    );
    blobs.push({ digest, pieces });
  }
  return blobs;
}

/** The probe's answer, or `fallback` (with a progress line) when it fails. */
async function probe<T>(what: string, read: () => Promise<T>, fallback: T): Promise<T> {
  try {
    return await read();
  } catch (error) {
    progress(`reading ${what} failed: ${error instanceof Error ? error.message : String(error)}`);
    return fallback;
  }
}

async function sumCpu(pids: readonly (number | undefined)[]): Promise<number> {
  let total = 0;
  for (const pid of pids) {
    const cpu = await cpuSeconds(pid);
    total += Number.isFinite(cpu) ? cpu : 0;
  }
  return total;
}

async function handoutsOf(tracker: ServiceProcess): Promise<number> {
  try {
    return (await scrapeMetrics(tracker.url)).get('shoal_tracker_handouts_total');
  } catch {
    return Number.NaN;
  }
}

/**
 * The replay's own duration from the tracker's log: from "replaying the swarm stream" to
 * "swarm view caught up" (pino's `time`, ms since the epoch), and the messages it replayed.
 */
/** What the restarted tracker's log says about its replay. */
export interface Replay {
  /** From "replaying the swarm stream" to "swarm view caught up", in seconds. */
  readonly replayS: number;
  /** Messages in SHOAL_SWARM when the replay began. */
  readonly messages: number;
  /** The stream's last sequence when the replay began, and the last applied when caught up. */
  readonly startLastSeq: number;
  readonly caughtUpSeq: number;
}

async function replayFromLog(logPath: string): Promise<Replay> {
  // The tracker's logger writes asynchronously: its lines may land a moment after /readyz.
  const until = Date.now() + 5_000;
  for (;;) {
    const found = parseReplay(await readFile(logPath, 'utf8'));
    if (Number.isFinite(found.replayS) || Date.now() > until) {
      return found;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function parseReplay(log: string): Replay {
  let begin: number | undefined;
  let end: number | undefined;
  let messages = Number.NaN;
  let startLastSeq = Number.NaN;
  let caughtUpSeq = Number.NaN;
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) {
      continue;
    }
    try {
      // pino with ISO time (`libs/runtime/src/logger.ts`).
      const entry = JSON.parse(line) as {
        msg?: string;
        time?: string;
        messages?: number;
        lastSeq?: number;
      };
      const time = entry.time === undefined ? undefined : Date.parse(entry.time);
      if (entry.msg === 'replaying the swarm stream') {
        begin = time;
        messages = entry.messages ?? Number.NaN;
        startLastSeq = entry.lastSeq ?? Number.NaN;
      } else if (entry.msg === 'swarm view caught up') {
        end = time;
        caughtUpSeq = entry.lastSeq ?? Number.NaN;
      }
    } catch {
      // Not a log entry of the tracker's: skipped.
    }
  }
  return {
    replayS: begin === undefined || end === undefined ? Number.NaN : (end - begin) / 1000,
    messages,
    startLastSeq,
    caughtUpSeq,
  };
}
