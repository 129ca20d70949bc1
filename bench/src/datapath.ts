#!/usr/bin/env node
/**
 * The data-path benchmark: what one agent costs per byte it hands to containerd, against the
 * same pull straight from the registry, in one run.
 *
 *   node bench/dist/src/datapath.js [--layers 160,64,32] [--small 10] [--timeout-s 600]
 *                                   [--only tls|cold|rss|small|warm|gib] [--small-runs N]
 *                                   [--warm-runs N] [--baseline DIR]
 *
 * One agent and one seed server (with nats-server and a tracker) serve `ctr images pull` of a
 * generated image; a fresh containerd per pull. In order: what the machine charges per byte
 * (sha256, a new file's write, a loopback transfer, a page fault: `machine-floor.ts`, with the
 * big image only), the image straight from the registry,
 * through the agent cold (swarm path: seed server, then agent), through the agent warm (cache
 * hit), straight again; a small image straight and through the agent cold (`--small-runs N`: N
 * new ones, rows of median time), with the cold pull's phase-by-phase timeline from the spans
 * the swarm exports to an OTLP receiver run here; then a second agent
 * fetches the big image's pieces from the first (the seed server stopped), and the same once
 * more over TLS: a third agent with a TLS peer port (mutual TLS, certificates of a CA made for
 * the run) takes the image from the first two, they stop, and a fourth agent takes it from the
 * third over HTTPS; the two agent-to-agent pulls are printed side by side, as ratios. With
 * `--only tls` the pulls through containerd are skipped (the first agent takes the image from
 * the seed server with a plain HTTP client) and only that comparison runs. With `--rss MiB`,
 * four clients also stream one blob of that size at once through a fresh agent, cold, while
 * its memory is watched (datapath-rss.ts); `--only rss` runs just that, 4 GiB by default.
 * `--only small` runs only the small images; with `--baseline DIR` each small run also pulls a
 * twin image cold through a second swarm running the build at DIR. `--warm-runs N` pulls the big
 * image warm N times, each next to a direct pull (alternating which goes first; with
 * `--baseline DIR`, the baseline swarm's agent warm too, in rotating order), and prints the
 * distribution of warm / direct pair by pair; `--only warm` runs just the big image's direct,
 * cold and warm pulls, and `--only gib` the same with a 1 GiB image. CPU seconds come
 * from /proc/PID/stat (utime + stime) and disk bytes from /proc/PID/io (write_bytes,
 * read_bytes), sampled just before and just after each pull.
 *
 * It reports figures; it never asserts one. It exits 1 when a pull fails.
 */
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import {
  FAST_SWARM_ENV,
  makeTestCa,
  mib,
  procCostBetween,
  ratio,
  readProcCost,
  readThreadCpu,
  scrapeMetrics,
  seconds,
  startAgent,
  startContainerd,
  startNats,
  startOtlpReceiver,
  startSeedServer,
  startTracker,
  table,
  waitFor,
  type CollectedSpan,
  type Containerd,
  type GeneratedImage,
  type OtlpReceiver,
  type AgentProcess,
  type ProcCost,
  type ServiceProcess,
  type ThreadCpu,
  type MetricsSnapshot,
  type Registry,
  type Teardown,
} from '@shoal/testkit';

import {
  cpuProfileEnv,
  exitOnProblems,
  interruptOnSignal,
  newTeardown,
  progress,
  readOptions,
  runBench,
  settleDisk,
} from './cli.js';
import { pushTarget, startBase } from './cluster.js';
import { pointContainerd, prepareClient, type PullTarget } from './clients.js';
import { measureRss, rssReport, type RssRun } from './datapath-rss.js';
import {
  floorPerGiB,
  machineFloorReport,
  measureMachineFloor,
  type MachineFloor,
} from './machine-floor.js';
import {
  median,
  mirrorRoot,
  PHASES,
  pullTimeline,
  type Phase,
  type PhaseLabel,
} from './timeline.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** Clients streaming the blob of the memory run at once (the issue's goal: four). */
const RSS_CLIENTS = 4;

const USAGE = `usage: node bench/dist/src/datapath.js [--layers MiB,MiB,...] [--small MiB] [--small-runs N]
                                     [--timeout-s S] [--only tls|cold|rss|small|warm|gib]
                                     [--warm-runs N] [--fetch-only] [--rss MiB]
                                     [--cpu-prof-dir DIR] [--spans-file PATH] [--baseline DIR]
                                     [--seed-main FILE] [--agent-node-options OPTIONS]
                                     [--seed-node-options OPTIONS] [--traces auto|on|off]

  --layers LIST       layer sizes of the big image, in MiB (default 160,64,32: 256 MiB;
                      640,256,128: 1 GiB with --only gib)
  --small MiB         size of the small single-layer image (default 10)
  --small-runs N      small images pulled, each a new one, direct then cold (default 1;
                      figures are their medians)
  --warm-runs N       warm pulls of the big image, each paired with a direct pull, the
                      order alternating (default 1; figures are their distribution)
  --fetch-only        the big image's pulls are \`ctr content fetch\` (the blobs into
                      containerd's content store, no unpack): only what a mirror can change
  --timeout-s S       longest a pull may take (default 600)
  --warm-agent MiB[,MiB...]
                      before the big image, pull another image of one layer this large (or
                      of these layers) through the agent cold, not measured: the big image's
                      cold pull is then that of an agent whose code V8 has compiled (a
                      node's agent that has served pulls before), not of a freshly started one
  --rss MiB           also stream one blob of this size with four clients through a fresh
                      agent, watching its memory (default: not run; 4096 with --only rss)
  --only tls          only the agent-to-agent pulls, plain HTTP against TLS
  --only cold         only the big image, direct then through Shoal cold (the seed's figures)
  --only rss          only the memory run of --rss
  --only small        only the small image's pulls and its cold timeline
  --only warm         only the big image: direct, cold, then the warm pulls (--warm-runs)
  --only gib          as --only warm with a 1 GiB image (--layers 640,256,128 unless given)
  --cpu-prof-dir DIR  the seed server and the agents write V8 CPU profiles there when they stop
  --spans-file PATH   write every span the swarm exported to PATH (JSON lines)
  --baseline DIR      a second swarm (its own nats-server) runs the services built at DIR
                      (a checkout built with tsc -b, e.g. by
                      services/seedserver/tools/build-at.sh); each small run also pulls a
                      new small image cold through it, alternating which goes first; and its
                      agent takes the big image cold and each warm round warm as well
  --seed-main FILE    run this seed server build (its dist/src/main.js) instead of this checkout's
  --agent-node-options OPTIONS
                      more NODE_OPTIONS for the agents, to try Node or V8 flags against
                      those the agent is started with
  --seed-node-options OPTIONS
                      the same for the seed server (e.g. --seed-node-options=--perf-basic-prof
                      for \`perf record\` of its JavaScript)
  --traces WHEN       whether the swarm exports OpenTelemetry spans (to a receiver run
                      here), as a node whose OTEL_EXPORTER_OTLP_ENDPOINT is set does: auto
                      (default) when the small image runs, for its timeline; on for every
                      run (e.g. --only cold --traces on, against --traces off, to see what
                      tracing costs a pull); off for none (no small-image timeline).
                      OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG in the bench's
                      environment are passed on to the traced swarm
`;

/** When the swarm exports spans (`--traces`). */
type Traces = 'auto' | 'on' | 'off';
const TRACES: readonly Traces[] = ['auto', 'on', 'off'];
/**
 * The OpenTelemetry sampler settings handed from the bench's environment to a traced swarm,
 * to measure what a sampled deployment pays (every span is recorded without them).
 */
const SAMPLER_ENV = ['OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG'] as const;

/** The `SAMPLER_ENV` settings the bench's environment has. */
function samplerEnv(): Record<string, string> {
  return Object.fromEntries(
    SAMPLER_ENV.flatMap((k) => {
      const value = process.env[k];
      return value === undefined ? [] : [[k, value]];
    }),
  );
}

/** What `--only` keeps; `all` without it. */
type Only = 'all' | 'tls' | 'cold' | 'rss' | 'small' | 'warm' | 'gib';
const ONLY: readonly Only[] = ['tls', 'cold', 'rss', 'small', 'warm', 'gib'];

/** The big image's layers by default, in MiB: 256 MiB; 1 GiB with `--only gib`. */
const BIG_LAYERS = '160,64,32';
const GIB_LAYERS = '640,256,128';

interface Options {
  readonly layerSizes: readonly number[];
  readonly smallBytes: number;
  /** Small images pulled, each a new one (direct, then cold through the agent). */
  readonly smallRuns: number;
  /** Warm pulls of the big image, each paired with a direct pull. */
  readonly warmRuns: number;
  /** The big image's pulls are `ctr content fetch`: no unpack. */
  readonly fetchOnly: boolean;
  /** Size of the image pulled cold through the agent before the big one, in bytes; 0: none. */
  /** Layer sizes of the `--warm-agent` image, in bytes (none without it). */
  readonly warmAgentLayers: readonly number[];
  readonly timeoutMs: number;
  readonly only: Only;
  /** Size of the blob of the memory run, in bytes; 0: no memory run. */
  readonly rssBytes: number;
  /** Where the seed server and agents write CPU profiles; none when undefined. */
  readonly cpuProfDir: string | undefined;
  /** Another build of the seed server to run (its main.js); this checkout's when undefined. */
  readonly seedMain: string | undefined;
  /** More NODE_OPTIONS for the agents ('' for none). */
  readonly agentNodeOptions: string;
  /** More NODE_OPTIONS for the seed server ('' for none). */
  readonly seedNodeOptions: string;
  /** Where every span received is written at the end, one JSON object a line. */
  readonly spansFile: string | undefined;
  /** A checkout built with `tsc -b` whose services the baseline swarm runs. */
  readonly baseline: string | undefined;
  /** Whether the swarm exports spans to a receiver run here. */
  readonly traced: boolean;
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    layers: { type: 'string' },
    small: { type: 'string', default: '10' },
    'small-runs': { type: 'string', default: '1' },
    'warm-runs': { type: 'string', default: '1' },
    'fetch-only': { type: 'boolean', default: false },
    'warm-agent': { type: 'string', default: '0' },
    'timeout-s': { type: 'string', default: '600' },
    only: { type: 'string' },
    rss: { type: 'string' },
    'cpu-prof-dir': { type: 'string' },
    'seed-main': { type: 'string' },
    'agent-node-options': { type: 'string', default: '' },
    'seed-node-options': { type: 'string', default: '' },
    'spans-file': { type: 'string' },
    baseline: { type: 'string' },
    traces: { type: 'string', default: 'auto' },
  });
  const problems: string[] = [];
  const layerSizes = String(values.layers ?? (values.only === 'gib' ? GIB_LAYERS : BIG_LAYERS))
    .split(',')
    .map((s) => Math.round(Number(s) * MiB));
  if (layerSizes.some((s) => !Number.isFinite(s) || s <= 0)) {
    problems.push('--layers takes sizes in MiB, e.g. 160,64,32');
  }
  const smallBytes = Math.round(Number(values.small) * MiB);
  if (!Number.isFinite(smallBytes) || smallBytes <= 0) {
    problems.push('--small takes a size in MiB');
  }
  const smallRuns = Number(values['small-runs']);
  if (!Number.isInteger(smallRuns) || smallRuns < 1 || smallRuns > 50) {
    problems.push('--small-runs takes a whole number from 1 to 50');
  }
  const warmRuns = Number(values['warm-runs']);
  if (!Number.isInteger(warmRuns) || warmRuns < 1 || warmRuns > 50) {
    problems.push('--warm-runs takes a whole number from 1 to 50');
  }
  const warmAgentLayers = String(values['warm-agent'])
    .split(',')
    .map((mib) => Math.round(Number(mib) * MiB));
  const warmAgentBytes = warmAgentLayers.reduce((sum, bytes) => sum + bytes, 0);
  if (warmAgentLayers.some((bytes) => !Number.isFinite(bytes) || bytes < 0)) {
    problems.push('--warm-agent takes a size in MiB, or layer sizes in MiB separated by commas');
  } else if (warmAgentBytes > 0 && ['tls', 'rss', 'small'].includes(String(values.only))) {
    problems.push(
      `--warm-agent is about the big image's pulls, which --only ${String(values.only)} leaves out`,
    );
  }
  const timeoutS = Number(values['timeout-s']);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    problems.push('--timeout-s takes a positive number of seconds');
  }
  const only = ONLY.find((o) => o === values.only) ?? 'all';
  if (values.only !== undefined && only === 'all') {
    problems.push(`--only takes one of ${ONLY.join(', ')}`);
  }
  const traces = TRACES.find((t) => t === values.traces);
  if (traces === undefined) {
    problems.push(`--traces takes one of ${TRACES.join(', ')}`);
  }
  const traced = traces === 'on' || (traces === 'auto' && withSmall(only));
  if (values['spans-file'] !== undefined && !withSmall(only)) {
    problems.push(`--spans-file is about the small image, which --only ${only} leaves out`);
  } else if (values['spans-file'] !== undefined && !traced) {
    problems.push('--spans-file needs the spans that --traces off leaves out');
  }
  if (values.baseline !== undefined && !withSmall(only) && !withWarm(only)) {
    problems.push(
      `--baseline is about the small image and warm pulls, which --only ${only} leaves out`,
    );
  }
  if (values['fetch-only'] === true && !withWarm(only) && only !== 'cold') {
    problems.push(`--fetch-only is about the big image, which --only ${only} leaves out`);
  }
  if (values['warm-runs'] !== '1' && !withWarm(only)) {
    problems.push(`--warm-runs is about warm pulls, which --only ${only} leaves out`);
  }
  const rssMiB = Number(values.rss ?? (values.only === 'rss' ? 4096 : 0));
  if (!Number.isFinite(rssMiB) || rssMiB < 0) {
    problems.push('--rss takes a size in MiB');
  }
  exitOnProblems(problems, USAGE);
  const cpuProfDir = values['cpu-prof-dir'];
  const seedMain = values['seed-main'];
  const spansFile = values['spans-file'];
  const baseline = values.baseline;
  return {
    layerSizes,
    smallBytes,
    smallRuns,
    warmAgentLayers: warmAgentBytes === 0 ? [] : warmAgentLayers,
    warmRuns,
    fetchOnly: values['fetch-only'] === true,
    timeoutMs: timeoutS * 1000,
    only,
    rssBytes: Math.round(rssMiB * MiB),
    cpuProfDir: typeof cpuProfDir === 'string' ? cpuProfDir : undefined,
    seedMain: typeof seedMain === 'string' ? resolve(seedMain) : undefined,
    agentNodeOptions: String(values['agent-node-options']),
    seedNodeOptions: String(values['seed-node-options']),
    spansFile: typeof spansFile === 'string' ? spansFile : undefined,
    baseline: typeof baseline === 'string' ? resolve(baseline) : undefined,
    traced,
  };
}

/** The processes whose cost a pull is charged with, by name. */
type Watched = Readonly<Record<string, number>>;

/** One measured pull: wall time, and each watched process's cost during it. */
interface Measured {
  readonly seconds: number;
  readonly costs: Readonly<Record<string, ProcCost>>;
  /**
   * Of each process's CPU seconds, those of its main thread (JavaScript, and the socket reads
   * and writes Node makes there); the rest is the thread pool's file I/O and V8's GC helpers.
   */
  readonly mainCpu: Readonly<Record<string, number>>;
  /** The seed server's own figures, when it was watched in detail. */
  readonly seed?: SeedDetail;
  /** Of `seconds`, those `ctr` says it spent unpacking (NaN when unknown; pulls by ctr only). */
  readonly unpackSeconds?: number;
}

/** V8's collections as prom-client's default metrics count them (`nodejs_gc_duration_seconds`). */
const GC_KINDS = ['major', 'minor', 'incremental', 'weakcb'] as const;
type GcKind = (typeof GC_KINDS)[number];

/** What the seed server did during a pull, from its threads and its own metrics. */
interface SeedDetail {
  readonly threads: ThreadCpu;
  /** Collections of each kind and the time they paused the main thread, in seconds. */
  readonly gc: Readonly<Record<GcKind, { readonly count: number; readonly seconds: number }>>;
  readonly servedBytes: number;
  readonly ingestedBytes: number;
  /** Piece requests by how they were answered (served, rationed, busy, missing, ...). */
  readonly pieceRequests: Readonly<Record<string, number>>;
}

/** The answers the seed server counts in `shoal_seedserver_piece_requests_total{result}`. */
const PIECE_RESULTS = ['served', 'rationed', 'busy', 'missing', 'aborted', 'invalid'] as const;

/** The seed server's metrics and threads at one moment. */
interface SeedSample {
  readonly threads: ThreadCpu;
  readonly metrics: MetricsSnapshot;
}

/** Longest the seed server may take to finish a seed after the pull that asked for it, in ms. */
const SEED_SETTLE_MS = 60_000;

/**
 * Runs `pull`, sampling the watched processes just before and just after it. With `seed`, the
 * seed server's threads and metrics are read around it too, and its window closes only once it
 * has no seed in flight: what it spends to finish an ingest (the last write, the commit) is the
 * pull's, as it is in the seed server's own cost tool.
 */
async function measure(
  watched: Watched,
  pull: () => Promise<void>,
  seed?: ServiceProcess,
): Promise<Measured> {
  // Metrics are scraped outside the CPU window, so the scrapes are not charged to the pull.
  const seedBefore = seed === undefined ? undefined : await sampleSeed(seed, 'metrics first');
  const before = new Map<string, { cost: ProcCost; main: number }>();
  for (const [name, pid] of Object.entries(watched)) {
    before.set(name, {
      cost: await readProcCost(pid),
      main: (await readThreadCpu(pid)).mainSeconds,
    });
  }
  const started = performance.now();
  await pull();
  const elapsed = (performance.now() - started) / 1000;
  if (seed !== undefined) {
    await waitFor(
      'the seed server to finish its seeds',
      async () => (await seed.metric('shoal_seedserver_seeds_in_flight')) === 0,
      { timeoutMs: SEED_SETTLE_MS, intervalMs: 50 },
    );
  }
  const costs: Record<string, ProcCost> = {};
  const mainCpu: Record<string, number> = {};
  for (const [name, pid] of Object.entries(watched)) {
    const first = before.get(name);
    if (first !== undefined) {
      costs[name] = procCostBetween(first.cost, await readProcCost(pid));
      mainCpu[name] = (await readThreadCpu(pid)).mainSeconds - first.main;
    }
  }
  const seedAfter = seed === undefined ? undefined : await sampleSeed(seed, 'threads first');
  return {
    seconds: elapsed,
    costs,
    mainCpu,
    ...(seedBefore === undefined || seedAfter === undefined
      ? {}
      : { seed: seedDetail(seedBefore, seedAfter) }),
  };
}

/** Reads the seed server's threads and metrics, in the order that keeps the scrape outside. */
async function sampleSeed(
  seed: ServiceProcess,
  order: 'metrics first' | 'threads first',
): Promise<SeedSample> {
  const seedPid = pid(seed);
  if (order === 'metrics first') {
    const metrics = await scrapeMetrics(seed.url);
    return { metrics, threads: await readThreadCpu(seedPid) };
  }
  const threads = await readThreadCpu(seedPid);
  return { threads, metrics: await scrapeMetrics(seed.url) };
}

function seedDetail(before: SeedSample, after: SeedSample): SeedDetail {
  const delta = (name: string, labels: Record<string, string> = {}): number =>
    after.metrics.get(name, labels) - before.metrics.get(name, labels);
  const gc = Object.fromEntries(
    GC_KINDS.map((kind) => [
      kind,
      {
        count: delta('nodejs_gc_duration_seconds_count', { kind }),
        seconds: delta('nodejs_gc_duration_seconds_sum', { kind }),
      },
    ]),
  ) as SeedDetail['gc'];
  return {
    threads: {
      mainSeconds: after.threads.mainSeconds - before.threads.mainSeconds,
      otherSeconds: after.threads.otherSeconds - before.threads.otherSeconds,
    },
    gc,
    servedBytes: delta('shoal_seedserver_served_bytes_total'),
    ingestedBytes: delta('shoal_seedserver_ingested_bytes_total'),
    pieceRequests: Object.fromEntries(
      PIECE_RESULTS.map((result) => [
        result,
        delta('shoal_seedserver_piece_requests_total', { result }),
      ]),
    ),
  };
}

/** A fresh containerd pulling `target` straight from the registry (`mirrorUrl` undefined) or through an agent. */
async function ctrPull(
  target: PullTarget,
  mirrorUrl: string | undefined,
  timeoutMs: number,
  watched: Watched,
  seed?: ServiceProcess,
  /** `ctr content fetch`: the blobs into containerd's content store, no unpack. */
  fetchOnly = false,
): Promise<Measured> {
  const containerd: Containerd = await startContainerd();
  try {
    await pointContainerd(containerd, target, mirrorUrl);
    const ref = `${target.registryHost}/${target.repository}:${target.tag}`;
    let output = '';
    const measured = await measure(
      watched,
      async () => {
        output = fetchOnly
          ? await containerd.ctr(
              ['content', 'fetch', '--hosts-dir', containerd.hostsDir, ref],
              timeoutMs,
            )
          : await containerd.pull(ref, { timeoutMs });
      },
      seed,
    );
    const result: Measured = { ...measured, unpackSeconds: fetchOnly ? 0 : unpackSeconds(output) };
    const stored = await containerd.contentDigests();
    const missing = target.blobs.filter((b) => !stored.has(b.digest));
    if (missing.length > 0) {
      throw new Error(`containerd is missing ${missing.map((b) => b.digest).join(', ')}`);
    }
    return result;
  } finally {
    await containerd.stop();
  }
}

/**
 * How long `ctr images pull` spent unpacking, from its last line (`done: 1.310626655s`); what
 * is left of the pull is resolving and fetching, the part a mirror can change. NaN when the
 * output says nothing.
 */
function unpackSeconds(output: string): number {
  const match = /done: ([0-9.]+)(ms|s)\s*$/.exec(output.trim());
  if (match?.[1] === undefined) {
    return Number.NaN;
  }
  const value = Number(match[1]);
  return match[2] === 'ms' ? value / 1000 : value;
}

function blobBytes(target: PullTarget): number {
  return target.blobs.reduce((sum, b) => sum + b.size, 0);
}

/**
 * Starts the swarm side: tracker, seed server and one agent. The seed server and the agent
 * may be stopped before the teardown (which then leaves them alone).
 */
async function startSwarm(
  natsUrl: string,
  registry: Registry,
  teardown: Teardown,
  setup: SwarmSetup,
): Promise<Swarm> {
  const { env, agentEnv, seedEnv, peerId, buildRoot, seedMain } = setup;
  const build = buildRoot === undefined ? {} : { buildRoot };
  const tracker = await startTracker({ natsUrl, env, ...build });
  teardown.add(`tracker of ${peerId}`, () => tracker.stop());
  const seed = await startSeedServer({
    natsUrl,
    registries: `${registry.host}=${registry.url}`,
    env: seedEnv,
    ...build,
    ...(seedMain === undefined ? {} : { main: seedMain }),
  });
  const stopSeed = once(() => seed.stop());
  teardown.add(`seed server of ${peerId}`, stopSeed);
  const agent = await startPeer(natsUrl, registry, peerId, undefined, agentEnv, buildRoot);
  const stopAgent = once(() => agent.stop());
  teardown.add(peerId, stopAgent);
  return { seed: { ...seed, stop: stopSeed }, agent: { ...agent, stop: stopAgent } };
}

/** `env` with `more` added to its NODE_OPTIONS (unchanged when `more` is empty). */
function withNodeOptions(env: Record<string, string>, more: string): Record<string, string> {
  const nodeOptions = [env.NODE_OPTIONS ?? '', more].join(' ').trim();
  return nodeOptions === '' ? env : { ...env, NODE_OPTIONS: nodeOptions };
}

/** What a swarm's processes get, and which build they run. */
interface SwarmSetup {
  /** For all three: CPU profiles, trace export. */
  readonly env: Record<string, string>;
  /** For the agent: `env` with the agent's NODE_OPTIONS. */
  readonly agentEnv: Record<string, string>;
  /** For the seed server: `env` with the seed server's NODE_OPTIONS. */
  readonly seedEnv: Record<string, string>;
  readonly peerId: string;
  /** Another checkout built with `tsc -b` whose three services run (the baseline). */
  readonly buildRoot?: string | undefined;
  /** Another seed server build to run (its main.js). */
  readonly seedMain?: string | undefined;
}

interface Swarm {
  readonly seed: ServiceProcess;
  readonly agent: AgentProcess;
}

/** One agent taking the big image from another (or the seed server), with both sides' costs. */
interface PeerPull {
  readonly measured: Measured;
  readonly fromPeers: number;
  readonly fromSeed: number;
  readonly fromOrigin: number;
  /** Piece requests of the receiving agent that failed (not a 429), e.g. to a source that is gone. */
  readonly failedRequests: number;
  /**
   * Blobs the receiving agent checked by the seed's signed record (no whole-blob hash), and
   * by hashing them itself.
   */
  readonly checks: BlobChecks;
}

/**
 * Blobs an agent checked by the seed's signed record (no whole-blob hash), and by hashing;
 * and the bytes its downloads fed to whole-blob hashes (read back from disk or not).
 */
interface BlobChecks {
  readonly record: number;
  readonly digest: number;
  readonly hashedBytes: number;
}

/** An agent's blob checks so far, from its metrics. */
function blobChecks(metrics: Awaited<ReturnType<typeof scrapeMetrics>>): BlobChecks {
  return {
    record: metrics.get('shoal_agent_swarm_blob_checks_total', { by: 'seed-record' }),
    digest: metrics.get('shoal_agent_swarm_blob_checks_total', { by: 'digest' }),
    hashedBytes: metrics.get('shoal_agent_swarm_blob_hashed_bytes_total'),
  };
}

/** The checks of `after` made since `before`. */
function checksSince(before: BlobChecks, after: BlobChecks): BlobChecks {
  return {
    record: after.record - before.record,
    digest: after.digest - before.digest,
    hashedBytes: after.hashedBytes - before.hashedBytes,
  };
}

/** The big image's pulls through containerd (left out with `--only small`). */
interface BigResults {
  /** The first direct pull, then each round's. */
  readonly direct: readonly Measured[];
  readonly cold: Measured;
  /** The agent's blobs checked by the seed's record and by hashing, after the cold pull. */
  readonly coldChecks: BlobChecks;
  /** The `--warm-agent` image's pull, the agent's first, and its blobs' bytes (none without it). */
  readonly first?: { readonly pull: Measured; readonly bytes: number };
  /** The warm rounds (none with `--only cold`). */
  readonly rounds: readonly WarmRound[];
}

/** A warm pull and what it asked of the registry. */
interface WarmPull {
  readonly measured: Measured;
  /** Requests the registry logged during the pull (the agent's, as containerd never goes around it). */
  readonly registryRequests: number;
  /** Of them, GETs of the image's blobs: a cache hit sends none. */
  readonly registryBlobGets: number;
}

/** One warm round: a warm pull through the agent and a direct pull, one after the other. */
interface WarmRound {
  readonly warm: WarmPull;
  readonly direct: Measured;
  /** The order the round's pulls ran in, e.g. `direct, warm`. */
  readonly order: string;
  /** The baseline's agent warm, with `--baseline`. */
  readonly baseline?: WarmPull;
}

/** The cold pull's phases, per blob of the image (layer, config), from the exported spans. */
type Timelines = ReadonlyMap<Blob, readonly Phase[]>;
type Blob = 'layer' | 'config';

/** One small image: straight from the registry, then cold through the agent, and its timeline. */
interface SmallRun {
  /** Its blobs' bytes (layer and config). */
  readonly bytes: number;
  readonly direct: Measured;
  readonly cold: Measured;
  readonly timelines: Timelines;
  /** Another new small image, cold through the baseline swarm (with `--baseline`). */
  readonly baseline?: { readonly cold: Measured; readonly timelines: Timelines };
}

/** The pulls through containerd (left out with `--only tls` and `--only rss`). */
interface CtrResults {
  readonly big: BigResults | undefined;
  /** What the machine charged per byte, measured just before the big image's pulls. */
  readonly floor: MachineFloor | undefined;
  /** Empty with `--only cold`. */
  readonly small: readonly SmallRun[];
}

interface Results {
  readonly bigBytes: number;
  readonly smallBytes: number;
  readonly ctr: CtrResults | undefined;
  /** Agent to agent over plain HTTP, then over TLS (left out with `--only cold`). */
  readonly peers: { readonly plain: PeerPull; readonly tls: PeerPull } | undefined;
  /**
   * With `--only tls`: the first agent taking the image from the seed server, with the same
   * client, to compare receiving from a peer with receiving from the seed.
   */
  readonly seedPull: PeerPull | undefined;
  /** The first agent's largest resident set over the run (VmHWM), in bytes. */
  readonly agentPeakRss: number;
  /** The memory run, with `--rss`. */
  readonly rss: RssRun | undefined;
  /** Spans the swarm exported over the run; undefined when it was not traced. */
  readonly spans: number | undefined;
}

function perGiB(m: Measured, name: string, bytes: number): number {
  const cost = m.costs[name];
  return cost === undefined ? Number.NaN : cost.cpuSeconds / (bytes / GiB);
}

function ctrReport(results: Results, ctr: CtrResults): string[] {
  const perByte = (
    m: Measured,
    name: string,
    pick: 'writeBytes' | 'readBytes',
    bytes: number,
  ): string => {
    const cost = m.costs[name];
    return cost === undefined ? '-' : ratio(cost[pick] / bytes);
  };
  const cpu = (m: Measured, name: string, bytes: number): string => {
    const value = perGiB(m, name, bytes);
    return Number.isNaN(value) ? '-' : value.toFixed(2);
  };
  const row = (
    label: string,
    m: Measured,
    bytes: number,
    vsDirect: number | undefined,
  ): string[] => [
    label,
    seconds(m.seconds),
    vsDirect === undefined ? '' : ratio(m.seconds / vsDirect),
    cpu(m, 'agent', bytes),
    cpu(m, 'seed', bytes),
    cpu(m, 'registry', bytes),
    perByte(m, 'agent', 'writeBytes', bytes),
    perByte(m, 'agent', 'readBytes', bytes),
    perByte(m, 'seed', 'writeBytes', bytes),
  ];
  const { bigBytes, smallBytes } = results;
  const { big, small } = ctr;
  const rows: (string[] | null)[] = [];
  if (big !== undefined) {
    // Over several rounds the median: one pull slowed by the other helpers' load skews a mean.
    const directS =
      big.rounds.length > 1
        ? (medianRun(big.direct)?.seconds ?? Number.NaN)
        : big.direct.reduce((sum, m) => sum + m.seconds, 0) / big.direct.length;
    rows.push(
      ...(big.rounds.length > 1
        ? [
            row('big, direct #1', big.direct[0] ?? big.cold, bigBytes, undefined),
            row(
              `big, direct (median of ${big.direct.length})`,
              medianRun(big.direct) ?? big.cold,
              bigBytes,
              undefined,
            ),
          ]
        : big.direct.map((m, i) => row(`big, direct #${i + 1}`, m, bigBytes, undefined))),
      row('big, through Shoal, cold', big.cold, bigBytes, directS),
      ...warmRows(big.rounds, (label, m) => row(label, m, bigBytes, directS)),
    );
  }
  // With several small images, the rows are the runs of median time.
  const smallDirect = medianRun(small.map((r) => r.direct));
  const smallCold = medianRun(small.map((r) => r.cold));
  const baselineCold = medianRun(small.flatMap((r) => r.baseline?.cold ?? []));
  const of = small.length > 1 ? ` (median of ${small.length})` : '';
  const smallLines: string[] = [];
  if (smallDirect !== undefined && smallCold !== undefined) {
    const colds: [string, Measured][] = [
      ['Shoal', smallCold],
      ...(baselineCold === undefined ? [] : [['the baseline', baselineCold] as [string, Measured]]),
    ];
    rows.push(
      ...(rows.length === 0 ? [] : [null]),
      row(`small, direct${of}`, smallDirect, smallBytes, undefined),
      ...colds.map(([who, m]) =>
        row(`small, through ${who}, cold${of}`, m, smallBytes, smallDirect.seconds),
      ),
    );
    smallLines.push(
      ...colds.map(
        ([who, m]) =>
          `small image, cold: ${who} adds ${seconds(m.seconds - smallDirect.seconds)}${of}`,
      ),
    );
    if (small.length > 1) {
      const each = (r: SmallRun): string =>
        [r.cold, ...(r.baseline === undefined ? [] : [r.baseline.cold]), r.direct]
          .map((m) => m.seconds.toFixed(2))
          .join('/');
      smallLines.push(
        `  each run, cold${baselineCold === undefined ? '' : ' / baseline cold'} / direct: ${small.map(each).join(' ')} s`,
      );
    }
    // Without spans (`--traces off`) there is no timeline to show.
    if (small.some((r) => r.timelines.size > 0)) {
      smallLines.push('', ...timelineReport(small), '');
    }
  }
  return [
    ...(small.length === 0 ? [] : [`small image: ${mib(smallBytes)} of blobs`]),
    '',
    table(
      [
        'pull',
        'time',
        '/ direct',
        'agent CPU s/GiB',
        'seed CPU s/GiB',
        'registry CPU s/GiB',
        'agent disk W/B',
        'agent disk R/B',
        'seed disk W/B',
      ],
      rows,
    ),
    '(/ direct: over the mean of the direct pulls of the same image, their median with several warm rounds; W/B, R/B: disk bytes written, read per byte delivered)',
    '',
    ...(big === undefined ? [] : warmReport(big.rounds, bigBytes)),
    ...(big?.first === undefined ? [] : firstPullReport(big.first.pull, big.first.bytes)),
    ...(ctr.floor === undefined ? [] : [...machineFloorReport(ctr.floor), '']),
    ...(big === undefined ? [] : agentReport(big.cold, big.coldChecks, bigBytes, ctr.floor)),
    ...(big === undefined ? [] : seedReport(big.cold, bigBytes, ctr.floor)),
    ...smallLines,
  ];
}

/** The warm pulls' rows: the one warm pull, or the median ones through Shoal and the baseline. */
function warmRows(
  rounds: readonly WarmRound[],
  row: (label: string, m: Measured) => string[],
): string[][] {
  const ours = medianRun(rounds.map((r) => r.warm.measured));
  const theirs = medianRun(rounds.flatMap((r) => r.baseline?.measured ?? []));
  const of = rounds.length > 1 ? `, median of ${rounds.length}` : '';
  return [
    ...(ours === undefined ? [] : [row(`big, through Shoal, warm (cache hit${of})`, ours)]),
    ...(theirs === undefined ? [] : [row(`big, through the baseline, warm${of}`, theirs)]),
  ];
}

/**
 * The warm rounds pair by pair: each warm pull over the direct pull of its round, as a
 * distribution, with the agent's and the registry's CPU and what the warm pulls asked of the
 * registry.
 */
function warmReport(rounds: readonly WarmRound[], bytes: number): string[] {
  if (rounds.length === 0) {
    return [];
  }
  const spread = (values: readonly number[], digits = 2): string => {
    const sorted = [...values].sort((a, b) => a - b);
    const at = (q: number): string =>
      (sorted[Math.round(q * (sorted.length - 1))] ?? Number.NaN).toFixed(digits);
    return sorted.length === 1 ? at(0) : `min ${at(0)}, median ${at(0.5)}, max ${at(1)}`;
  };
  const pulls = (pick: (r: WarmRound) => WarmPull | undefined): WarmPull[] =>
    rounds.flatMap((r) => pick(r) ?? []);
  const lines = [
    `warm pulls, ${rounds.length} round(s), each next to a direct pull (order rotating):`,
    `  warm / direct of the same round: ${spread(rounds.map((r) => r.warm.measured.seconds / r.direct.seconds))}`,
  ];
  const withBaseline = rounds.filter((r) => r.baseline !== undefined);
  if (withBaseline.length > 0) {
    lines.push(
      `  baseline warm / direct: ${spread(withBaseline.map((r) => (r.baseline?.measured.seconds ?? Number.NaN) / r.direct.seconds))}`,
      `  Shoal warm / baseline warm: ${spread(withBaseline.map((r) => r.warm.measured.seconds / (r.baseline?.measured.seconds ?? Number.NaN)))}`,
    );
  }
  const cpu = (m: Measured, name: string): number => perGiB(m, name, bytes);
  // ctr fetches, then unpacks: the fetch is what goes through the mirror, the unpack is the same.
  const fetch = (m: Measured): number => m.seconds - (m.unpackSeconds ?? Number.NaN);
  lines.push(
    `  fetch (the pull less ctr's unpack), warm / direct of the same round: ${spread(rounds.map((r) => fetch(r.warm.measured) / fetch(r.direct)))}`,
    `  fetch s, warm: ${spread(rounds.map((r) => fetch(r.warm.measured)))}; direct: ${spread(rounds.map((r) => fetch(r.direct)))}`,
    `  unpack s, warm: ${spread(rounds.map((r) => r.warm.measured.unpackSeconds ?? Number.NaN))}; direct: ${spread(rounds.map((r) => r.direct.unpackSeconds ?? Number.NaN))}`,
    ...(withBaseline.length === 0
      ? []
      : [
          `  fetch, baseline warm / direct: ${spread(withBaseline.map((r) => (r.baseline === undefined ? Number.NaN : fetch(r.baseline.measured)) / fetch(r.direct)))}`,
        ]),
  );
  lines.push(
    `  agent CPU s/GiB, warm: ${spread(pulls((r) => r.warm).map((p) => cpu(p.measured, 'agent')))}`,
    ...(withBaseline.length === 0
      ? []
      : [
          `  baseline agent CPU s/GiB, warm: ${spread(pulls((r) => r.baseline).map((p) => cpu(p.measured, 'agent')))}`,
        ]),
    `  registry CPU s/GiB, direct: ${spread(rounds.map((r) => cpu(r.direct, 'registry')))}`,
    `  registry requests per warm pull: ${spread(
      pulls((r) => r.warm).map((p) => p.registryRequests),
      0,
    )} (blob GETs: ${spread(
      pulls((r) => r.warm).map((p) => p.registryBlobGets),
      0,
    )})`,
    `  each round, warm${withBaseline.length > 0 ? ' / baseline warm' : ''} / direct s (order): ${rounds
      .map(
        (r) =>
          `${r.warm.measured.seconds.toFixed(2)}${r.baseline === undefined ? '' : `/${r.baseline.measured.seconds.toFixed(2)}`}/${r.direct.seconds.toFixed(2)} (${r.order})`,
      )
      .join('; ')}`,
    '',
  );
  return lines;
}

/** The run of median time (the lower of the two middle ones for an even count). */
function medianRun(runs: readonly Measured[]): Measured | undefined {
  const sorted = [...runs].sort((a, b) => a.seconds - b.seconds);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/**
 * The small image's cold timeline: when each phase happened, in ms since the agent received
 * the blob's mirror request (median over the runs), with the step from the phase before for
 * the layer.
 */
function timelineReport(runs: readonly SmallRun[]): string[] {
  const phaseMs = (
    pick: (r: SmallRun) => Timelines | undefined,
    blob: Blob,
    label: PhaseLabel,
  ): number =>
    median(
      runs.flatMap(
        (r) =>
          pick(r)
            ?.get(blob)
            ?.find((p) => p.label === label)?.atMs ?? [],
      ),
    );
  const ms = (value: number): string => (Number.isNaN(value) ? '-' : value.toFixed(1));
  const withBaseline = runs.some((r) => r.baseline !== undefined);
  let previous = 0;
  const rows = PHASES.map((label) => {
    const layer = phaseMs((r) => r.timelines, 'layer', label);
    const step = Number.isNaN(layer) ? Number.NaN : layer - previous;
    if (!Number.isNaN(layer)) {
      previous = layer;
    }
    const row = [label, ms(layer), ms(step), ms(phaseMs((r) => r.timelines, 'config', label))];
    if (withBaseline) {
      row.push(
        ms(phaseMs((r) => r.baseline?.timelines, 'layer', label)),
        ms(phaseMs((r) => r.baseline?.timelines, 'config', label)),
      );
    }
    return row;
  });
  const traced = runs.filter((r) => r.timelines.size > 0).length;
  return [
    `small image, cold, phase by phase (ms since the agent got the blob's request; median of ${traced} traced run(s)${withBaseline ? "; '-' for the baseline: a moment its build does not record" : ''}):`,
    table(
      [
        'phase',
        'layer ms',
        'layer step ms',
        'config ms',
        ...(withBaseline ? ['baseline layer ms', 'baseline config ms'] : []),
      ],
      rows,
    ),
  ];
}

/** The agent's CPU during the cold pull of the big image, its main thread and the others. */
function agentReport(
  cold: Measured,
  checks: BlobChecks,
  bytes: number,
  floor: MachineFloor | undefined,
): string[] {
  const line = agentCpuLine(cold, bytes, floor);
  // The agent hashes each byte once when the seed's record vouched for every blob.
  const hashes = checks.digest === 0 ? 1 : 2;
  return line === undefined
    ? []
    : [
        `agent, big cold pull: ${line}${overFloor(cold, 'agent', bytes, floor, hashes)}`,
        `  blobs checked by the seed's record / hashed whole: ${checks.record} / ${checks.digest}; ` +
          `bytes fed to whole-blob hashes: ${mib(checks.hashedBytes)} (${(checks.hashedBytes / bytes).toFixed(2)} of the image)`,
      ];
}

/**
 * The agent's and the seed server's first pull (`--warm-agent`), cold for both, against which
 * the big image's row is their second: what a fresh process pays once.
 */
function firstPullReport(first: Measured, bytes: number): string[] {
  const line = agentCpuLine(first, bytes, undefined);
  return line === undefined
    ? []
    : [
        `agent, first pull (--warm-agent ${mib(bytes)}, cold): ${line}`,
        `seed server, first pull (--warm-agent ${mib(bytes)}, cold): ${perGiB(first, 'seed', bytes).toFixed(2)} CPU s/GiB, ${faultsLine(first, 'seed', bytes, undefined)}`,
      ];
}

/** CPU s/GiB of the agent in a pull, its main thread and the others, and its page faults. */
function agentCpuLine(
  pull: Measured,
  bytes: number,
  floor: MachineFloor | undefined,
): string | undefined {
  const main = pull.mainCpu['agent'];
  if (main === undefined) {
    return undefined;
  }
  const gib = bytes / GiB;
  const all = perGiB(pull, 'agent', bytes);
  return `${all.toFixed(2)} CPU s/GiB; main thread ${(main / gib).toFixed(2)}, other threads (V8's GC workers, libuv's pool) ${(all - main / gib).toFixed(2)}; ${faultsLine(pull, 'agent', bytes, floor)}`;
}

/**
 * A process's minor page faults in a pull, in all and per MiB delivered, and with the
 * machine's floor what they cost at its price of one.
 */
function faultsLine(
  pull: Measured,
  name: string,
  bytes: number,
  floor: MachineFloor | undefined,
): string {
  const faults = pull.costs[name]?.minorFaults ?? 0;
  const perMiB = (faults / (bytes / MiB)).toFixed(0);
  if (floor === undefined || Number.isNaN(floor.faultMicros)) {
    return `${faults} page faults (${perMiB} per MiB)`;
  }
  const perGiBSeconds = (faults * floor.faultMicros) / 1e6 / (bytes / GiB);
  return `${faults} page faults (${perMiB} per MiB, about ${perGiBSeconds.toFixed(2)} CPU s/GiB at ${floor.faultMicros.toFixed(1)} us each)`;
}

/** A process's CPU s/GiB in a pull as a multiple of its floor (`hashes`: per byte). */
function overFloor(
  pull: Measured,
  name: string,
  bytes: number,
  floor: MachineFloor | undefined,
  hashes: number,
): string {
  return floor === undefined
    ? ''
    : `; ${ratio(perGiB(pull, name, bytes) / floorPerGiB(floor, hashes))}× its floor (${hashes === 1 ? 'hashing once' : 'hashing twice'})`;
}

/** Where the seed server's CPU went during the cold pull of the big image. */
function seedReport(cold: Measured, bytes: number, floor: MachineFloor | undefined): string[] {
  const detail = cold.seed;
  if (detail === undefined) {
    return [];
  }
  const gib = bytes / GiB;
  const { gc, threads } = detail;
  const kinds = GC_KINDS.filter((kind) => gc[kind].count > 0).map(
    (kind) => `${gc[kind].count} ${kind} (${seconds(gc[kind].seconds)})`,
  );
  return [
    `seed server, big cold pull: ${perGiB(cold, 'seed', bytes).toFixed(2)} CPU s/GiB; main thread ${(threads.mainSeconds / gib).toFixed(2)}, other threads (V8's GC workers, libuv's pool) ${(threads.otherSeconds / gib).toFixed(2)}; ${faultsLine(cold, 'seed', bytes, floor)}${overFloor(cold, 'seed', bytes, floor, 2)}`,
    `  V8 collections: ${kinds.length === 0 ? 'none' : kinds.join(', ')} (pauses of the main thread)`,
    `  read ${mib(detail.ingestedBytes)} from the origin, served ${mib(detail.servedBytes)} of pieces; piece requests: ${
      Object.entries(detail.pieceRequests)
        .filter(([, count]) => count > 0)
        .map(([result, count]) => `${count} ${result}`)
        .join(', ') || 'none'
    }`,
    '',
  ];
}

function peerReport(
  bigBytes: number,
  peer: PeerPull,
  peerTls: PeerPull,
  seedPull: PeerPull | undefined,
): string[] {
  const figures = (pull: PeerPull) => ({
    mbps: (pull.fromPeers + pull.fromSeed) / 1e6 / pull.measured.seconds,
    receiving: perGiB(pull.measured, 'receiver', bigBytes),
    receivingMain: (pull.measured.mainCpu.receiver ?? Number.NaN) / (bigBytes / GiB),
    serving: perGiB(pull.measured, 'sender', bigBytes),
  });
  const plain = figures(peer);
  const tls = figures(peerTls);
  const row = (label: string, pull: PeerPull, f: typeof plain): string[] => [
    label,
    mib(pull.fromPeers + pull.fromSeed),
    seconds(pull.measured.seconds),
    f.mbps.toFixed(0),
    f.receiving.toFixed(2),
    f.receivingMain.toFixed(2),
    f.serving.toFixed(2),
    String(pull.failedRequests),
    mib(pull.fromOrigin),
    `${pull.checks.record} / ${pull.checks.digest}`,
  ];
  return [
    seedPull === undefined
      ? 'agent to agent (loopback, seed server stopped, one agent holding the image):'
      : 'agent to agent (loopback; first the first agent from the seed server, then with the seed server stopped, one agent holding the image):',
    table(
      [
        'pieces over',
        'from peers/seed',
        'time',
        'MB/s',
        'receiving agent CPU s/GiB',
        'of it main thread',
        'serving side CPU s/GiB',
        'failed requests',
        'from origin',
        'blobs by record / hashed',
      ],
      [
        ...(seedPull === undefined
          ? []
          : [row('plain HTTP, from the seed server', seedPull, figures(seedPull))]),
        row('plain HTTP', peer, plain),
        row('TLS (mutual, ECDSA P-256)', peerTls, tls),
        null,
        [
          'TLS / plain',
          '',
          ratio(peerTls.measured.seconds / peer.measured.seconds),
          ratio(tls.mbps / plain.mbps),
          ratio(tls.receiving / plain.receiving),
          ratio(tls.receivingMain / plain.receivingMain),
          ratio(tls.serving / plain.serving),
          '',
          '',
          '',
        ],
      ],
    ),
  ];
}

function report(options: Options, results: Results): string {
  const out: string[] = [
    options.only === 'tls'
      ? 'Shoal data-path benchmark: pieces between agents, plain HTTP and TLS'
      : 'Shoal data-path benchmark: ctr images pull, one agent + seed server vs the registry',
    results.spans === undefined
      ? "the swarm's processes do not export OpenTelemetry spans (--traces off)"
      : `the swarm's processes export OpenTelemetry spans (--traces on${Object.entries(samplerEnv())
          .map(([k, v]) => `, ${k}=${v}`)
          .join('')}): ${results.spans} received`,
    ...(results.bigBytes === 0
      ? []
      : [
          `big image: layers ${options.layerSizes.map((s) => s / MiB).join(', ')} MiB (${mib(results.bigBytes)} of blobs)`,
        ]),
    ...(results.ctr === undefined ? [''] : ctrReport(results, results.ctr)),
    ...(results.peers === undefined
      ? []
      : peerReport(results.bigBytes, results.peers.plain, results.peers.tls, results.seedPull)),
    `agent peak RSS over the run: ${mib(results.agentPeakRss)}`,
    ...(results.rss === undefined ? [] : ['', ...rssReport(results.rss)]),
  ];
  return `${out.join('\n')}\n`;
}

function pid(p: { process: { child: { pid?: number | undefined } } }): number {
  const value = p.process.child.pid;
  if (value === undefined) {
    throw new Error('a process has no pid');
  }
  return value;
}

/** `receiver` takes `target` from the swarm through a plain HTTP client; `sender` is charged too. */
async function peerPull(
  sender: ServiceProcess,
  receiver: AgentProcess,
  target: PullTarget,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<PeerPull> {
  const client = await prepareClient('http', receiver.url, target, timeoutMs);
  const measured = await measure({ sender: pid(sender), receiver: pid(receiver) }, () =>
    client.pull(AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])),
  );
  const metrics = await scrapeMetrics(receiver.url);
  return {
    measured,
    fromPeers: metrics.get('shoal_agent_fetched_bytes_total', { source: 'peer' }),
    fromSeed: metrics.get('shoal_agent_fetched_bytes_total', { source: 'seed' }),
    failedRequests: metrics.get('shoal_agent_pieces_total', { result: 'failed' }),
    checks: blobChecks(metrics),
    fromOrigin: metrics.get('shoal_agent_fetched_bytes_total', { source: 'origin' }),
  };
}

/** An agent in the swarm on a peer port of its own; with `pieceTls`, that port serves HTTPS. */
async function startPeer(
  natsUrl: string,
  registry: Registry,
  peerId: string,
  pieceTls: Parameters<typeof startAgent>[0]['pieceTls'],
  env: Record<string, string>,
  buildRoot?: string,
): Promise<AgentProcess> {
  return startAgent({
    registries: `${registry.host}=${registry.url}`,
    natsUrl,
    peerId,
    defaultRegistry: registry.host,
    ...(pieceTls === undefined ? {} : { pieceTls }),
    ...(buildRoot === undefined ? {} : { buildRoot }),
    env: { ...FAST_SWARM_ENV, ...env },
  });
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const { only, timeoutMs } = options;
  const interrupt = interruptOnSignal();
  const { signal } = interrupt;
  const teardown = newTeardown();
  try {
    const { nats, registry, layout } = await startBase(teardown, 'bench-datapath');
    progress('generating and pushing the images');
    const run = `${Date.now()}`;
    const big =
      only === 'rss' || only === 'small'
        ? undefined
        : await pushTarget(layout.path, registry, 'bench/big', `big-${run}`, options.layerSizes);
    const huge =
      options.rssBytes === 0
        ? undefined
        : await pushTarget(layout.path, registry, 'bench/huge', `huge-${run}`, [options.rssBytes]);
    const warmup =
      big === undefined || options.warmAgentLayers.length === 0
        ? undefined
        : await pushTarget(
            layout.path,
            registry,
            'bench/warmup',
            `warmup-${run}`,
            options.warmAgentLayers,
          );
    signal.throwIfAborted();
    // The swarm's processes export their spans here, for the small image's timeline.
    const receiver = options.traced ? await startOtlpReceiver() : undefined;
    // The sampler of the bench's own environment, if any, is theirs too (see SAMPLER_ENV).
    const traceEnv = receiver === undefined ? {} : { ...receiver.env, ...samplerEnv() };
    if (receiver !== undefined) {
      teardown.add('OTLP receiver', () => receiver.stop());
    }
    const profileEnv = cpuProfileEnv(options.cpuProfDir);
    // The agents started later do not export spans: their pulls are not on the timeline.
    const agentEnv = withNodeOptions(profileEnv, options.agentNodeOptions);
    const traced = (peerId: string, build: Partial<SwarmSetup>): SwarmSetup => ({
      env: { ...profileEnv, ...traceEnv },
      agentEnv: { ...agentEnv, ...traceEnv },
      seedEnv: { ...withNodeOptions(profileEnv, options.seedNodeOptions), ...traceEnv },
      peerId,
      ...build,
    });
    const { seed, agent } = await startSwarm(
      nats.url,
      registry,
      teardown,
      traced('agent-a', { seedMain: options.seedMain }),
    );
    // The memory run: a fresh agent (the first one, with --only rss), so its VmHWM is this pull's.
    const memoryRun = async (fresh: AgentProcess): Promise<RssRun | undefined> => {
      const layer = huge?.target.blobs.at(-1);
      if (huge === undefined || layer === undefined) {
        return undefined;
      }
      progress(`memory: four clients stream one ${mib(layer.size)} blob through a fresh agent`);
      return measureRss(
        fresh,
        pid(fresh),
        pid(seed),
        huge.target,
        layer,
        RSS_CLIENTS,
        AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
      );
    };
    if (only === 'rss') {
      const rss = await memoryRun(agent);
      if (rss !== undefined) {
        process.stdout.write(
          `Shoal data-path benchmark: agent memory\n\n${rssReport(rss).join('\n')}\n`,
        );
      }
      return 0;
    }
    const pulls: PullRun = { registry, layoutPath: layout.path, run, timeoutMs, signal };
    const through = (swarm: Swarm): Through => ({
      agentUrl: swarm.agent.url,
      watched: { agent: pid(swarm.agent), seed: pid(swarm.seed), registry: pid(registry) },
    });
    let ctr: CtrResults | undefined;
    let seedPull: PeerPull | undefined;
    if (only === 'tls' && big !== undefined) {
      progress('big image: the first agent takes it from the seed server');
      seedPull = await peerPull(seed, agent, big.target, timeoutMs, signal);
    } else {
      // The baseline swarm: another build, on a nats-server of its own (its streams and
      // consumers are its own business), exporting its spans to the same receiver.
      let baseline: Through | undefined;
      if (options.baseline !== undefined) {
        const baseNats = await startNats();
        teardown.add('baseline nats-server', () => baseNats.stop());
        baseline = through(
          await startSwarm(
            baseNats.url,
            registry,
            teardown,
            traced('agent-baseline', { buildRoot: options.baseline }),
          ),
        );
      }
      // What the machine charges per byte today, just before the pulls it is read against.
      const floor =
        big === undefined ? undefined : await machineFloor(blobBytes(big.target), signal);
      const bigResults =
        big === undefined
          ? undefined
          : await bigPulls(pulls, big.target, through({ seed, agent }), seed, {
              warmRuns: withWarm(only) ? options.warmRuns : 0,
              baseline,
              fetchOnly: options.fetchOnly,
              warmup: warmup?.target,
            });
      let small: SmallRun[] = [];
      if (withSmall(only)) {
        small = await smallPulls(pulls, options, receiver, through({ seed, agent }), baseline);
      }
      ctr = { big: bigResults, floor, small };
    }
    // Before the agent-to-agent pulls, which stop the seed server.
    let rss: RssRun | undefined;
    if (huge !== undefined) {
      const agentM = await startPeer(nats.url, registry, 'agent-m', undefined, agentEnv);
      const stopM = once(() => agentM.stop());
      teardown.add('agent m', stopM);
      rss = await memoryRun(agentM);
      await stopM();
    }

    let peers: Results['peers'];
    let agentPeakRss: number;
    if (big === undefined || only === 'cold' || only === 'warm' || only === 'gib') {
      agentPeakRss = await agent.peakRssBytes();
    } else {
      ({ peers, agentPeakRss } = await agentToAgent(
        { natsUrl: nats.url, registry, agent, seed, target: big.target, agentEnv },
        { teardown, timeoutMs, signal },
      ));
    }

    const results: Results = {
      bigBytes: big === undefined ? 0 : blobBytes(big.target),
      smallBytes: ctr?.small[0] === undefined ? 0 : ctr.small[0].bytes,
      ctr,
      peers,
      seedPull,
      agentPeakRss,
      rss,
      spans: receiver?.spans().length,
    };
    process.stdout.write(report(options, results));
    if (receiver !== undefined && options.spansFile !== undefined) {
      await writeFile(
        options.spansFile,
        receiver
          .spans()
          .map((span) =>
            JSON.stringify(span, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v)),
          )
          .join('\n'),
      );
    }
    return 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

/** Whether a run with this `--only` pulls the small image. */
function withSmall(only: Only): boolean {
  return only === 'all' || only === 'small';
}

/** Whether a run with this `--only` pulls the big image warm. */
function withWarm(only: Only): boolean {
  return only === 'all' || only === 'warm' || only === 'gib';
}

/** What the pulls of one run share. */
interface PullRun {
  readonly registry: Registry;
  /** Where the generated images are written. */
  readonly layoutPath: string;
  /** This run's tag prefix, so every image is new to the registry. */
  readonly run: string;
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
}

/** A swarm pulled through: its agent's mirror and the processes a pull is charged with. */
interface Through {
  readonly agentUrl: string;
  readonly watched: Watched;
}

/**
 * The machine's floor (`machine-floor.ts`), or undefined when it could not be measured: it is
 * context for the figures, so its failure is reported and the pulls go on.
 */
async function machineFloor(bytes: number, signal: AbortSignal): Promise<MachineFloor | undefined> {
  progress('machine floor: sha256, a new file, a loopback transfer, page faults');
  try {
    return await measureMachineFloor(tmpdir(), bytes, signal);
  } catch (error) {
    signal.throwIfAborted();
    progress(
      `machine floor not measured: ${error instanceof Error ? error.message : String(error)}`,
    );
    return undefined;
  }
}

/**
 * The big image straight from the registry, then through the agent cold (the seed server
 * watched in detail), and through the baseline's agent cold when there is one; then
 * `warm.warmRuns` rounds of a warm pull and a direct pull (and the baseline's warm pull),
 * the order rotating from round to round so that none always meets the machine as another
 * left it. With one round and no baseline: warm, then direct.
 */
async function bigPulls(
  pulls: PullRun,
  target: PullTarget,
  swarm: Through,
  seed: ServiceProcess,
  warm: {
    readonly warmRuns: number;
    readonly baseline: Through | undefined;
    /** Every pull is `ctr content fetch` (no unpack). */
    readonly fetchOnly: boolean;
    /** Pulled cold through the agent first, not measured (`--warm-agent`). */
    readonly warmup: PullTarget | undefined;
  },
): Promise<BigResults> {
  const pull = async (
    what: string,
    mirrorUrl: string | undefined,
    watched: Watched,
    detail?: ServiceProcess,
  ) => {
    progress(`big image: ${what}`);
    await settleDisk();
    const measured = await ctrPull(
      target,
      mirrorUrl,
      pulls.timeoutMs,
      watched,
      detail,
      warm.fetchOnly,
    );
    pulls.signal.throwIfAborted();
    return measured;
  };
  let first: { pull: Measured; bytes: number } | undefined;
  if (warm.warmup !== undefined) {
    progress('warm-up: another image through Shoal, cold (reported apart, not in the table)');
    await settleDisk();
    first = {
      pull: await ctrPull(
        warm.warmup,
        swarm.agentUrl,
        pulls.timeoutMs,
        swarm.watched,
        seed,
        warm.fetchOnly,
      ),
      bytes: warm.warmup.blobs.reduce((sum, blob) => sum + blob.size, 0),
    };
    pulls.signal.throwIfAborted();
  }
  const direct = await pull('direct', undefined, swarm.watched);
  const beforeCold = blobChecks(await scrapeMetrics(swarm.agentUrl));
  const cold = await pull('through Shoal, cold', swarm.agentUrl, swarm.watched, seed);
  const coldChecks = checksSince(beforeCold, blobChecks(await scrapeMetrics(swarm.agentUrl)));
  const { baseline } = warm;
  if (baseline !== undefined) {
    await pull('through the baseline, cold', baseline.agentUrl, baseline.watched);
  }
  const rounds: WarmRound[] = [];
  for (let i = 0; i < warm.warmRuns; i++) {
    const of = `warm round ${i + 1} of ${warm.warmRuns}`;
    const round: { warm?: WarmPull; baseline?: WarmPull; direct?: Measured } = {};
    const steps: { readonly name: string; run(): Promise<void> }[] = [
      {
        name: 'warm',
        run: async () => {
          round.warm = await warmPull(pulls, target, () =>
            pull(`${of}, through Shoal`, swarm.agentUrl, swarm.watched),
          );
        },
      },
      ...(baseline === undefined
        ? []
        : [
            {
              name: 'baseline',
              run: async () => {
                round.baseline = await warmPull(pulls, target, () =>
                  pull(`${of}, through the baseline`, baseline.agentUrl, baseline.watched),
                );
              },
            },
          ]),
      {
        name: 'direct',
        run: async () => {
          round.direct = await pull(`${of}, direct`, undefined, swarm.watched);
        },
      },
    ];
    const order = steps.map((_, k) => steps[(k + i) % steps.length]);
    for (const step of order) {
      await step?.run();
    }
    if (round.warm === undefined || round.direct === undefined) {
      throw new Error(`${of} did not complete`);
    }
    rounds.push({
      warm: round.warm,
      direct: round.direct,
      order: order.map((step) => step?.name).join(', '),
      ...(round.baseline === undefined ? {} : { baseline: round.baseline }),
    });
  }
  return {
    direct: [direct, ...rounds.map((r) => r.direct)],
    cold,
    coldChecks,
    rounds,
    ...(first === undefined ? {} : { first }),
  };
}

/** A warm pull, with the requests it sent the registry (from the registry's own log). */
async function warmPull(
  pulls: PullRun,
  target: PullTarget,
  pull: () => Promise<Measured>,
): Promise<WarmPull> {
  const before = (await pulls.registry.requests()).length;
  const measured = await pull();
  const requests = (await pulls.registry.requests()).slice(before);
  const blobs = new Set(target.blobs.map((b) => b.digest));
  return {
    measured,
    registryRequests: requests.length,
    registryBlobGets: requests.filter(
      (r) => r.method === 'GET' && [...blobs].some((d) => r.uri.endsWith(`/blobs/${d}`)),
    ).length,
  };
}

/**
 * `options.smallRuns` small images, each a new one: straight from the registry, then cold
 * through the swarm; with a baseline, a twin image cold through it too, alternating which
 * swarm goes first so neither always meets the machine as the other left it.
 */
async function smallPulls(
  pulls: PullRun,
  options: Pick<Options, 'smallBytes' | 'smallRuns'>,
  receiver: OtlpReceiver | undefined,
  swarm: Through,
  baseline: Through | undefined,
): Promise<SmallRun[]> {
  const { registry, layoutPath, run, timeoutMs, signal } = pulls;
  // A new image each time, in a folder of its own: every cold pull is cold.
  const push = (name: string, i: number) =>
    pushTarget(join(layoutPath, `${name}-${i}`), registry, `bench/${name}`, `${name}-${run}-${i}`, [
      options.smallBytes,
    ]);
  const coldPull = async (
    image: Awaited<ReturnType<typeof push>>,
    through: Through,
  ): Promise<{ cold: Measured; timelines: Timelines }> => {
    const cold = await ctrPull(image.target, through.agentUrl, timeoutMs, through.watched);
    return {
      cold,
      timelines: receiver === undefined ? new Map() : await timelines(receiver, image.image),
    };
  };
  const runs: SmallRun[] = [];
  for (let i = 0; i < options.smallRuns; i++) {
    progress(`small image ${i + 1} of ${options.smallRuns}: direct, then through Shoal, cold`);
    const image = await push('small', i);
    const twin = baseline === undefined ? undefined : await push('small-base', i);
    const direct = await ctrPull(image.target, undefined, timeoutMs, swarm.watched);
    const ours = () => coldPull(image, swarm);
    const theirs = async () =>
      twin === undefined || baseline === undefined ? undefined : coldPull(twin, baseline);
    let current: Awaited<ReturnType<typeof ours>>;
    let other: Awaited<ReturnType<typeof theirs>>;
    if (i % 2 === 0) {
      current = await ours();
      other = await theirs();
    } else {
      other = await theirs();
      current = await ours();
    }
    signal.throwIfAborted();
    runs.push({
      bytes: blobBytes(image.target),
      direct,
      ...current,
      ...(other === undefined ? {} : { baseline: other }),
    });
  }
  return runs;
}

/** How long a cold pull's spans may take to reach the receiver, in ms. */
const SPANS_WAIT_MS = 5_000;

/**
 * The phases of the cold pull of each blob of `image` (its layer and its config), from the
 * spans exported for it; a blob whose trace did not arrive in time has none.
 */
async function timelines(
  receiver: OtlpReceiver,
  image: GeneratedImage,
): Promise<Map<Blob, Phase[]>> {
  const blobs = new Map<Blob, string>([
    ['layer', image.layers[0]?.digest ?? ''],
    ['config', image.config.digest],
  ]);
  // Complete once the root and the download it started have ended (both exported at their end).
  const ended = (spans: readonly CollectedSpan[], digest: string): boolean => {
    const root = mirrorRoot(spans, digest);
    return (
      root !== undefined &&
      spans.some((s) => s.traceId === root.traceId && s.name === 'swarm download' && s.endNs > 0n)
    );
  };
  await receiver
    .waitFor(
      'the small image’s cold pull',
      (spans) => [...blobs.values()].every((d) => ended(spans, d)),
      SPANS_WAIT_MS,
    )
    .catch((error: unknown) => progress(`no complete timeline: ${String(error)}`));
  // The other processes export on their own schedule (every 100 ms here).
  await new Promise((resolve) => setTimeout(resolve, 500));
  const out = new Map<Blob, Phase[]>();
  for (const [blob, digest] of blobs) {
    const root = mirrorRoot(receiver.spans(), digest);
    if (root !== undefined) {
      out.set(blob, pullTimeline(root, receiver.trace(root.traceId)));
    }
  }
  return out;
}

/**
 * The seed server stops and a second agent takes the big image from the first (plain HTTP);
 * then a third agent with a TLS peer port takes it from the first two, they stop, and a
 * fourth takes it from the third alone, over HTTPS with client certificates. The first
 * agent's peak RSS is read before it stops.
 */
async function agentToAgent(
  swarm: {
    readonly natsUrl: string;
    readonly registry: Registry;
    readonly agent: AgentProcess;
    readonly seed: ServiceProcess;
    readonly target: PullTarget;
    readonly agentEnv: Record<string, string>;
  },
  run: { readonly teardown: Teardown; readonly timeoutMs: number; readonly signal: AbortSignal },
): Promise<{ peers: NonNullable<Results['peers']>; agentPeakRss: number }> {
  const { natsUrl, registry, agent, seed, target, agentEnv } = swarm;
  const { teardown, timeoutMs, signal } = run;
  progress('agent to agent: a second agent takes the big image from the first');
  await seed.stop();
  const agentB = await startPeer(natsUrl, registry, 'agent-b', undefined, agentEnv);
  const stopB = once(() => agentB.stop());
  teardown.add('agent b', stopB);
  const plain = await peerPull(agent, agentB, target, timeoutMs, signal);
  const agentPeakRss = await agent.peakRssBytes();
  signal.throwIfAborted();

  progress('agent to agent over TLS: a third agent takes the image, a fourth takes it from it');
  const ca = await makeTestCa('bench-datapath-ca');
  teardown.add('test CA', () => ca.remove());
  const pieceTls = { ca, verifyClients: true };
  const agentC = await startPeer(natsUrl, registry, 'agent-c', pieceTls, agentEnv);
  teardown.add('agent c', () => agentC.stop());
  const warmUp = await prepareClient('http', agentC.url, target, timeoutMs);
  await warmUp.pull(AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]));
  await stopB();
  await agent.stop();
  const agentD = await startPeer(natsUrl, registry, 'agent-d', pieceTls, agentEnv);
  teardown.add('agent d', () => agentD.stop());
  const tls = await peerPull(agentC, agentD, target, timeoutMs, signal);
  return { peers: { plain, tls }, agentPeakRss };
}

/** `stop` run at most once, however many times it is called (a process stopped early and at teardown). */
function once(stop: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= stop());
}

await runBench(main);
