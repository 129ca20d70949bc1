#!/usr/bin/env node
/**
 * The fault suite (issue 11, item 4): N agents pull one image at once through a Shoal cluster
 * (NATS, two trackers, a seed server; the registry behind a fault proxy) while one fault
 * strikes at a random moment of the pull: a process killed with SIGKILL and restarted a moment
 * later as its supervisor would (an agent, the seed server, a tracker, nats-server, one node of
 * a three-node JetStream cluster, the watcher in the middle of a preheat), the registry
 * answering 429 or 5xx or slowly for a bounded window, a stalled reader, a full disk on an
 * agent or on the seed server, a peer that corrupts pieces, uploads slowly, or sits behind a
 * slow link (tc in a network namespace). Each fault runs on a cluster and an image of its own;
 * the pull without a fault is the baseline (for the watcher, a preheat without a fault on the
 * same cluster).
 *
 * The clients behave like containerd: a blob whose response fails or is cut is asked for
 * again until the pull's deadline. What the table says per fault:
 *
 * - pulls ok: agents whose every blob verified (a killed agent's pull counts once it is back);
 * - corrupt: responses that completed (every byte, a normal end) with content that does not
 *   match its digest; the invariant says 0, always;
 * - retries: blob requests asked again after a failure or a cut;
 * - cache: for a restarted agent, whether its cache is consistent (every cached blob matches
 *   its digest, no temporary file left);
 * - time: until every agent is done, and against the baseline;
 * - origin ÷ image: bytes the registry served (through the fault proxy) over the image's bytes:
 *   about 1 when the cluster read each blob from the origin once.
 *
 *   node bench/dist/src/faults.js [--agents 4] [--layers 24,4,1] [--faults a,b,...]
 *                                 [--rng-seed N] [--timeout-s 300] [--window-s 5]
 *                                 [--slow-mbit 16]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails or a corrupt
 * response completes.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readdir, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

import {
  freePort,
  makeTempDir,
  mib,
  NetLab,
  ratio,
  seconds,
  startAgent,
  startFaultProxy,
  startNats,
  startSeedServer,
  startTracker,
  startWatcher,
  table,
  type AgentProcess,
  type Descriptor,
  type FaultProxy,
  type Registry,
  type RegistryFault,
  type ServiceProcess,
  type Teardown,
} from '@shoal/testkit';

import {
  commonOptions,
  exitOnProblems,
  interruptOnSignal,
  newTeardown,
  progress,
  readOptions,
  runBench,
  seededRandom,
} from './cli.js';
import { pushTarget, startBase } from './cluster.js';
import { fetchBlobDigest, type PullTarget } from './clients.js';
import { startNatsCluster3 } from './sim/nats-cluster.js';
import { watcherApi, type JobStatus } from './watcher-api.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const REPOSITORY = 'bench/faults';
/** A supervisor (kubelet, systemd) restarts a killed process after about this long, in ms. */
const RESTART_AFTER_MS = 1000;
/**
 * How long `nats-outage` keeps nats-server down: three times the agents' stall timeout (10 s),
 * so downloads meet the outage's own fallback rather than a reconnect.
 */
const NATS_OUTAGE_MS = 30_000;
/** Pause before a client asks again for a blob that failed, in ms. */
const RETRY_PAUSE_MS = 500;
/** How often a preheat job's status is read, in ms. */
const JOB_POLL_MS = 200;
/** The streams of the pull path: the node leading most of them is the cluster node killed. */
const PULL_STREAMS = ['SHOAL_SWARM', 'SHOAL_WANTS', 'SHOAL_PIECES', 'SHOAL_SEED'];

const FAULTS = [
  'none',
  'kill-uploading-agent',
  'kill-downloading-agent',
  'lose-uploading-agent',
  'kill-seed-server',
  'kill-seed-server-early',
  'kill-seed-server-early-ack30s',
  'kill-tracker',
  'kill-nats',
  'nats-outage',
  'kill-nats-cluster-node',
  'kill-watcher-mid-preheat',
  'kill-watcher-mid-preheat-ack30s',
  'registry-429',
  'registry-5xx',
  'registry-slow',
  'registry-down',
  'stalled-reader',
  'full-disk-agent',
  'full-disk-seed',
  'corrupting-peer',
  'slow-peer',
  'slow-peer-link',
] as const;
type Fault = (typeof FAULTS)[number];

const DESCRIPTIONS: Record<Fault, string> = {
  none: 'no fault (baseline)',
  'kill-uploading-agent': 'SIGKILL the agent that uploaded most, restart it',
  'kill-downloading-agent': 'SIGKILL the agent that fetched least, restart it',
  'lose-uploading-agent':
    'SIGKILL the agent that uploaded most, never back (a node lost; time: the other agents)',
  'kill-seed-server': 'SIGKILL the seed server, restart it (same cache, same gateway)',
  'kill-seed-server-early':
    'SIGKILL the seed server as soon as it takes the seed request (before any piece hash), restart it',
  'kill-seed-server-early-ack30s':
    'the same, the seed requests on a 30 s ack wait (SHOAL_SEED_REQUEST_ACK_WAIT_MS, before the fix)',
  'kill-tracker': 'SIGKILL one of the two trackers, restart it',
  'kill-nats': 'SIGKILL nats-server, restart it (same port, same JetStream store)',
  'nats-outage': "SIGKILL nats-server, restart it 30 s later (past the agents' 10 s stall timeout)",
  'kill-nats-cluster-node':
    'three-node JetStream cluster, R3 streams: SIGKILL the node leading most pull-path streams, restart it',
  'kill-watcher-mid-preheat':
    'a nodes preheat of the image: SIGKILL the watcher mid-job, restart it (vs the same preheat unfaulted)',
  'kill-watcher-mid-preheat-ack30s':
    'the same, preheat commands on a 30 s ack wait (SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS, before the fix)',
  'registry-429': 'the registry answers every request 429 (Retry-After: 1) for the window',
  'registry-5xx': 'the registry answers every request 500, 502 or 503 for the window',
  'registry-slow': 'the registry answers after 2 s at 1 MiB/s in all for the window',
  'registry-down': 'every connection to the registry is reset for the window',
  'stalled-reader': 'a client on one agent asks for the largest blob and never reads',
  'full-disk-agent': "one agent's cache on a tmpfs of half the image",
  'full-disk-seed': "the seed server's cache on a tmpfs of half the image",
  'corrupting-peer': 'one agent flips a byte of every piece it serves',
  'slow-peer': 'one agent uploads at 1 MiB/s',
  'slow-peer-link':
    'one agent in a network namespace, its link shaped by tc tbf (time: the other agents)',
};

const USAGE = `usage: node bench/dist/src/faults.js [--agents N] [--layers MiB,...] [--faults LIST]
                                   [--rng-seed N] [--timeout-s S] [--window-s S] [--slow-mbit R]

  --agents N       agents pulling at once (default 4)
  --layers LIST    layer sizes of each generated image, in MiB (default 24,4,1)
  --faults LIST    which faults, comma-separated (default: all):
                   ${FAULTS.join(', ')}
  --rng-seed N     seed of the random fault moments (default 1)
  --timeout-s S    longest a pull may take, retries included (default 300)
  --window-s S     how long a registry fault lasts, from the start of the pull (default 5)
  --slow-mbit R    the slow peer's link for slow-peer-link, Mbit/s each way (default 16)
  --logs DIR       keep every process's log under DIR/<fault>/ (default: logs are removed)
`;

interface Options {
  readonly agents: number;
  readonly layerSizes: readonly number[];
  readonly faults: readonly Fault[];
  readonly rngSeed: number;
  readonly timeoutMs: number;
  /** How long a registry fault lasts, in ms. */
  readonly windowMs: number;
  /** The slow peer's link, in Mbit/s. */
  readonly slowMbit: number;
  /** Where to keep the processes' logs; undefined: not kept. */
  readonly logsDir: string | undefined;
}

/** Faults set up with the cluster, there from the start of the pull. */
const SETUP_FAULTS: ReadonlySet<Fault> = new Set<Fault>([
  'full-disk-agent',
  'full-disk-seed',
  'corrupting-peer',
  'slow-peer',
  'slow-peer-link',
]);

/** The `-ack30s` rows: the setting each puts back to the 30 s it was before the fix. */
const OLD_ACK_WAITS: Partial<Record<Fault, string>> = {
  'kill-seed-server-early-ack30s': 'SHOAL_SEED_REQUEST_ACK_WAIT_MS',
  'kill-watcher-mid-preheat-ack30s': 'SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS',
};

/** For a service whose settings start with `prefix`: its old ack wait, if `fault` wants it. */
function oldAckWait(fault: Fault, prefix: string): Record<string, string> {
  const name = OLD_ACK_WAITS[fault];
  return name?.startsWith(prefix) === true ? { [name]: '30000' } : {};
}

/** Faults struck on a preheat rather than on a pull. */
function isWatcherFault(fault: Fault): boolean {
  return fault === 'kill-watcher-mid-preheat' || fault === 'kill-watcher-mid-preheat-ack30s';
}

function isFault(value: string): value is Fault {
  return (FAULTS as readonly string[]).includes(value);
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '4' },
    layers: { type: 'string', default: '24,4,1' },
    faults: { type: 'string', default: FAULTS.join(',') },
    'rng-seed': { type: 'string', default: '1' },
    'timeout-s': { type: 'string', default: '300' },
    'window-s': { type: 'string', default: '5' },
    'slow-mbit': { type: 'string', default: '16' },
    logs: { type: 'string' },
  });
  const problems: string[] = [];
  const common = commonOptions(values, problems);
  if (common.agents < 3) {
    problems.push('--agents takes at least 3 (one to fault, two to keep pulling)');
  }
  const named = String(values.faults).split(',');
  for (const name of named.filter((n) => !isFault(n))) {
    problems.push(`--faults: unknown fault ${name}`);
  }
  const rngSeed = Number(values['rng-seed']);
  if (!Number.isInteger(rngSeed)) {
    problems.push('--rng-seed takes a whole number');
  }
  const windowS = Number(values['window-s']);
  if (!Number.isFinite(windowS) || windowS <= 0 || windowS > 120) {
    problems.push('--window-s takes seconds, at most 120');
  }
  const slowMbit = Number(values['slow-mbit']);
  if (!Number.isFinite(slowMbit) || slowMbit <= 0 || slowMbit > 10_000) {
    problems.push('--slow-mbit takes a rate in Mbit/s');
  }
  exitOnProblems(problems, USAGE);
  // The baseline always runs first: every time is compared with it.
  const faults = ['none' as const, ...named.filter(isFault).filter((f) => f !== 'none')];
  const logsDir = typeof values.logs === 'string' ? values.logs : undefined;
  return { ...common, faults, rngSeed, windowMs: windowS * 1000, slowMbit, logsDir };
}

/** What one client's pull came to. */
interface PullOutcome {
  /** Whose pull (agent-N). */
  readonly agent: string;
  readonly ok: boolean;
  readonly seconds: number;
  /** Completed responses whose bytes did not match their digest. */
  readonly corrupt: number;
  readonly retries: number;
  readonly error: string | undefined;
}

/** A blob asked for until it verifies or the deadline passes, as containerd does. */
async function pullBlob(
  agentUrl: string,
  target: PullTarget,
  blob: Descriptor,
  deadline: AbortSignal,
  tally: { corrupt: number; retries: number },
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    deadline.throwIfAborted();
    if (attempt > 0) {
      tally.retries += 1;
      await new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS));
    }
    let got: { bytes: number; digest: string };
    try {
      got = await fetchBlobDigest(agentUrl, target, blob, deadline);
    } catch {
      // Refused, failed or cut: never completed, so never trusted. Ask again.
      continue;
    }
    if (got.digest === blob.digest && got.bytes === blob.size) {
      return;
    }
    tally.corrupt += 1;
  }
}

/** Pulls the image through `agentUrl`: the manifest, then every blob at once, each retried. */
async function pullImage(
  agent: string,
  agentUrl: string,
  target: PullTarget,
  started: number,
  deadline: AbortSignal,
): Promise<PullOutcome> {
  const tally = { corrupt: 0, retries: 0 };
  try {
    // The blobs come from the target: the manifest path is the mirror tests' business.
    await Promise.all(
      target.blobs.map((blob) => pullBlob(agentUrl, target, blob, deadline, tally)),
    );
    return {
      agent,
      ok: true,
      seconds: (performance.now() - started) / 1000,
      ...tally,
      error: undefined,
    };
  } catch (error) {
    return {
      agent,
      ok: false,
      seconds: Number.NaN,
      ...tally,
      error: error instanceof Error ? error.message : String(error),
    };
  }
}

/** Copies every process's log (the current ones: a restarted process has a new log). */
async function keepLogs(dir: string, cluster: FaultCluster): Promise<void> {
  await mkdir(dir, { recursive: true });
  const logs: [string, string][] = [
    ...cluster.nats.logPaths().map((path, i): [string, string] => [`nats-${i}`, path]),
    ['seed', cluster.seed.process.logPath],
    ...cluster.trackers.map((t, i): [string, string] => [`tracker-${i}`, t.process.logPath]),
    ...cluster.agents.map((a, i): [string, string] => [`agent-${i}`, a.agent.process.logPath]),
    ...(cluster.watcher === undefined
      ? []
      : [['watcher', cluster.watcher.process.logPath] as [string, string]]),
  ];
  for (const [name, path] of logs) {
    await copyFile(path, join(dir, `${name}.log`)).catch(() => undefined);
  }
}

/** Checks an agent's cache: every blob file matches its name's digest, nothing in `tmp/`. */
async function cacheConsistent(cacheDir: string): Promise<{ ok: boolean; detail: string }> {
  const leftovers = await readdir(join(cacheDir, 'tmp')).catch(() => [] as string[]);
  const leftoverBytes = await Promise.all(
    leftovers.map((name) =>
      stat(join(cacheDir, 'tmp', name)).then(
        (s) => s.size,
        () => 0,
      ),
    ),
  );
  let blobs = 0;
  const bad: string[] = [];
  for (const algorithm of ['sha256']) {
    const dir = join(cacheDir, 'blobs', algorithm);
    for (const hex of await readdir(dir).catch(() => [] as string[])) {
      // A blob's sidecars (its media type, its fingerprint) are not blobs; any other name
      // is hashed, and fails unless it is a blob named by its digest.
      if (hex.endsWith('.type') || hex.endsWith('.checked')) {
        continue;
      }
      blobs += 1;
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(join(dir, hex))) {
        hash.update(chunk as Buffer);
      }
      if (hash.digest('hex') !== hex) {
        bad.push(hex.slice(0, 12));
      }
    }
  }
  const ok = leftovers.length === 0 && bad.length === 0;
  return {
    ok,
    detail: ok
      ? `${blobs} blobs verified`
      : `${blobs} blobs, ${bad.length} bad, ${leftovers.length} temp files ` +
        `(${leftoverBytes.map((b) => mib(b)).join(', ')})`,
  };
}

/** One agent of the cluster, restartable with the same ports and cache. */
interface AgentSlot {
  agent: AgentProcess;
  readonly start: () => Promise<AgentProcess>;
  readonly cacheDir: string;
  restarted: boolean;
  /** Aborted when the agent is killed for good: its client stops pulling, and is not counted. */
  readonly lost: AbortController;
}

/** The cluster's NATS: one server, or a three-node JetStream cluster with R3 streams. */
interface FaultNats {
  /** `SHOAL_NATS_URL`: every server, comma-separated. */
  readonly url: string;
  /** Settings every service gets besides the URL (stream replicas). */
  readonly env: Readonly<Record<string, string>>;
  logPaths(): readonly string[];
  /**
   * Kills a server (on a cluster, the node leading most pull-path streams) and restarts it
   * `downMs` later (default: `2 * RESTART_AFTER_MS`).
   */
  crashAndRestart(downMs?: number): Promise<string>;
}

/** A cluster for one fault: NATS, two trackers, a seed server, the agents, maybe a watcher. */
interface FaultCluster {
  readonly nats: FaultNats;
  /** The registry's fault proxy, which every service reads the registry through. */
  readonly proxy: FaultProxy;
  readonly trackers: ServiceProcess[];
  seed: ServiceProcess;
  readonly restartSeed: () => Promise<ServiceProcess>;
  /** With `kill-watcher-mid-preheat` only. */
  watcher: ServiceProcess | undefined;
  readonly restartWatcher: () => Promise<ServiceProcess>;
  readonly agents: AgentSlot[];
}

/** Mounts a tmpfs of `bytes` on `dir` (made first), unmounted by `teardown`. */
async function smallDisk(dir: string, bytes: number, teardown: Teardown): Promise<void> {
  await mkdir(dir, { recursive: true });
  await run('mount', ['-t', 'tmpfs', '-o', `size=${Math.floor(bytes)}`, 'tmpfs', dir]);
  teardown.add(`small disk ${dir}`, async () => {
    await run('umount', ['-l', dir]);
  });
}

async function startFaultNats(fault: Fault, host: string, teardown: Teardown): Promise<FaultNats> {
  if (fault === 'kill-nats-cluster-node') {
    const cluster = await startNatsCluster3();
    teardown.add('nats cluster', () => cluster.stop());
    return {
      url: cluster.urls.join(','),
      env: { SHOAL_NATS_STREAM_REPLICAS: '3' },
      logPaths: () => cluster.logPaths,
      crashAndRestart: async (downMs = 2 * RESTART_AFTER_MS) => {
        const index = await cluster.leaderOf(PULL_STREAMS);
        await cluster.crashAndRestart(index, downMs);
        return `nats-${index + 1}/3`;
      },
    };
  }
  const nats = await startNats({ host });
  teardown.add('nats-server', () => nats.stop());
  return {
    url: nats.url,
    env: {},
    logPaths: () => [nats.process.logPath],
    crashAndRestart: async (downMs = 2 * RESTART_AFTER_MS) => {
      await nats.crashAndRestart(downMs);
      return 'nats-server';
    },
  };
}

async function startFaultCluster(
  fault: Fault,
  registry: Registry,
  imageBytes: number,
  options: Options,
  teardown: Teardown,
): Promise<FaultCluster> {
  // For a peer behind a shaped link, every server listens on the lab's control address, which
  // the namespaced agent reaches over its link and everything else reaches locally.
  const lab = fault === 'slow-peer-link' ? await NetLab.create(progress) : undefined;
  if (lab !== undefined) {
    teardown.add('network namespaces', () => lab.close());
  }
  const host = lab?.controlAddress ?? '127.0.0.1';
  const proxy = await startFaultProxy({ upstream: registry.url, host });
  teardown.add('fault proxy', () => proxy.stop());
  const registries = `${registry.host}=${proxy.url}`;
  const nats = await startFaultNats(fault, host, teardown);
  const natsEnv = { ...nats.env };
  const trackers: ServiceProcess[] = [];
  for (let i = 0; i < 2; i++) {
    const tracker = await startTracker({ natsUrl: nats.url, host, env: natsEnv });
    trackers.push(tracker);
  }
  teardown.add('trackers', async () => {
    await Promise.all(trackers.map((t) => t.stop()));
  });
  const seedDir = await makeTempDir('faults-seed');
  teardown.add('seed directory', () => seedDir.remove());
  const seedCache = join(seedDir.path, 'cache');
  // The free space the seed server keeps: none on the small disk, so that the layers that fit
  // are seeded and only the one larger than the disk is refused.
  const seedDiskEnv: Record<string, string> = {};
  if (fault === 'full-disk-seed') {
    await smallDisk(seedCache, imageBytes / 2, teardown);
    seedDiskEnv.SHOAL_SEED_CACHE_MIN_FREE_BYTES = '0';
  }
  const seedPort = await freePort();
  const startSeed = (): Promise<ServiceProcess> =>
    startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-0',
      port: seedPort,
      host,
      env: {
        ...natsEnv,
        ...oldAckWait(fault, 'SHOAL_SEED_'),
        ...seedDiskEnv,
        SHOAL_SEED_CACHE_DIR: seedCache,
        SHOAL_STORE_DIR: join(seedDir.path, 'store'),
      },
    });
  const watcherPort = await freePort();
  const startFaultWatcher = (): Promise<ServiceProcess> =>
    startWatcher({
      natsUrl: nats.url,
      registries,
      id: 'watcher-0',
      port: watcherPort,
      env: { ...natsEnv, ...oldAckWait(fault, 'SHOAL_WATCHER_') },
    });
  const cluster: FaultCluster = {
    nats,
    proxy,
    trackers,
    seed: await startSeed(),
    restartSeed: startSeed,
    watcher: isWatcherFault(fault) ? await startFaultWatcher() : undefined,
    restartWatcher: startFaultWatcher,
    agents: [],
  };
  teardown.add('seed server', () => cluster.seed.stop());
  teardown.add('watcher', async () => {
    await cluster.watcher?.stop();
  });
  for (let i = 0; i < options.agents; i++) {
    const dir = await makeTempDir(`faults-agent-${i}`);
    teardown.add(`agent ${i} directory`, () => dir.remove());
    const cacheDir = join(dir.path, 'cache');
    // The first agent is the one a disk or peer fault is set on.
    const env: Record<string, string> = { ...natsEnv };
    if (i === 0 && fault === 'full-disk-agent') {
      await smallDisk(cacheDir, imageBytes / 2, teardown);
      env.SHOAL_AGENT_CACHE_MIN_FREE_BYTES = '0';
    }
    if (i === 0 && fault === 'corrupting-peer') {
      env.SHOAL_AGENT_FAULT_CORRUPT_PIECES = 'true';
    }
    if (i === 0 && fault === 'slow-peer') {
      env.SHOAL_AGENT_UPLOAD_RATE_BYTES = String(MiB);
    }
    let start: () => Promise<AgentProcess>;
    if (i === 0 && lab !== undefined) {
      // Its own namespace and address, every byte in or out over a link shaped both ways.
      const node = await lab.addHost('slow', 1, {
        mbit: options.slowMbit,
        delayMs: 0,
        lossPct: 0,
      });
      start = () =>
        startAgent({
          registries,
          natsUrl: nats.url,
          peerId: `agent-${i}`,
          defaultRegistry: registry.host,
          netns: node.netns,
          host: node.address,
          cacheDir,
          env,
        });
    } else {
      const [port, peerPort] = [await freePort(), await freePort()];
      start = () =>
        startAgent({
          registries,
          natsUrl: nats.url,
          peerId: `agent-${i}`,
          defaultRegistry: registry.host,
          port,
          host,
          cacheDir,
          env: {
            ...env,
            SHOAL_AGENT_PEER_LISTEN: `${host}:${peerPort}`,
            SHOAL_AGENT_PEER_URL: `http://${host}:${peerPort}`,
          },
        });
    }
    const slot: AgentSlot = {
      agent: await start(),
      start,
      cacheDir,
      restarted: false,
      lost: new AbortController(),
    };
    cluster.agents.push(slot);
    teardown.add(`agent ${i}`, () => slot.agent.stop());
  }
  return cluster;
}

/** The agent whose `metric` is highest (or lowest), among those not faulted by setup. */
async function pickAgent(
  cluster: FaultCluster,
  metric: string,
  labels: Record<string, string>,
  want: 'most' | 'least',
): Promise<AgentSlot> {
  let best: { slot: AgentSlot; value: number } | undefined;
  for (const slot of cluster.agents) {
    const value = await slot.agent.metric(metric, labels).catch(() => Number.NaN);
    if (
      Number.isFinite(value) &&
      (best === undefined || (want === 'most' ? value > best.value : value < best.value))
    ) {
      best = { slot, value };
    }
  }
  const chosen = best?.slot ?? cluster.agents[0];
  if (chosen === undefined) {
    throw new Error('no agent to fault');
  }
  return chosen;
}

/** Kills an agent and brings it back on the same ports and cache, as a DaemonSet would. */
async function killAndRestartAgent(slot: AgentSlot): Promise<string> {
  const name = slot.agent.peerId ?? 'agent';
  await slot.agent.process.kill();
  await new Promise((resolve) => setTimeout(resolve, RESTART_AFTER_MS));
  // The killed process's temporary directory (its log) goes with the old handle.
  const old = slot.agent;
  slot.agent = await slot.start();
  slot.restarted = true;
  await old.stop().catch(() => undefined);
  return name;
}

/** Kills a service and starts it again a moment later; returns the new process. */
async function killAndRestart(
  old: ServiceProcess,
  start: () => Promise<ServiceProcess>,
): Promise<ServiceProcess> {
  await old.process.kill();
  await new Promise((resolve) => setTimeout(resolve, RESTART_AFTER_MS));
  const started = await start();
  await old.stop().catch(() => undefined);
  return started;
}

/** The proxy's fault for a registry fault. */
function registryFault(fault: Fault): RegistryFault | undefined {
  switch (fault) {
    case 'registry-429':
      return { kind: 'status', statuses: [429], retryAfterS: 1 };
    case 'registry-5xx':
      return { kind: 'status', statuses: [500, 502, 503] };
    case 'registry-slow':
      return { kind: 'slow', delayMs: 2000, rateBytes: MiB };
    case 'registry-down':
      return { kind: 'down' };
    default:
      return undefined;
  }
}

/** Strikes `fault` on the running cluster; returns what was hit, and an undo for after the wave. */
async function strike(
  fault: Fault,
  cluster: FaultCluster,
  target: PullTarget,
): Promise<{ hit: string; undo: () => void }> {
  const none = (): void => undefined;
  switch (fault) {
    case 'kill-uploading-agent': {
      const slot = await pickAgent(cluster, 'shoal_agent_uploaded_bytes_total', {}, 'most');
      return { hit: await killAndRestartAgent(slot), undo: none };
    }
    case 'kill-downloading-agent': {
      const slot = await pickAgent(cluster, 'shoal_agent_fetched_bytes_total', {}, 'least');
      return { hit: await killAndRestartAgent(slot), undo: none };
    }
    case 'lose-uploading-agent': {
      const slot = await pickAgent(cluster, 'shoal_agent_uploaded_bytes_total', {}, 'most');
      slot.lost.abort();
      await slot.agent.process.kill();
      return { hit: slot.agent.peerId ?? 'agent', undo: none };
    }
    case 'kill-seed-server':
    case 'kill-seed-server-early':
    case 'kill-seed-server-early-ack30s': {
      cluster.seed = await killAndRestart(cluster.seed, cluster.restartSeed);
      return { hit: 'seed-0', undo: none };
    }
    case 'kill-tracker': {
      const [tracker] = cluster.trackers;
      if (tracker === undefined) {
        throw new Error('no tracker');
      }
      cluster.trackers[0] = await killAndRestart(tracker, () =>
        startTracker({ natsUrl: cluster.nats.url, env: { ...cluster.nats.env } }),
      );
      return { hit: 'tracker-0', undo: none };
    }
    case 'kill-nats':
    case 'kill-nats-cluster-node':
      return { hit: await cluster.nats.crashAndRestart(), undo: none };
    case 'nats-outage':
      return { hit: await cluster.nats.crashAndRestart(NATS_OUTAGE_MS), undo: none };
    case 'kill-watcher-mid-preheat':
    case 'kill-watcher-mid-preheat-ack30s': {
      if (cluster.watcher === undefined) {
        throw new Error('no watcher');
      }
      cluster.watcher = await killAndRestart(cluster.watcher, cluster.restartWatcher);
      return { hit: 'watcher-0', undo: none };
    }
    case 'stalled-reader': {
      const slot = cluster.agents[0];
      const largest = [...target.blobs].sort((a, b) => b.size - a.size)[0];
      if (slot === undefined || largest === undefined) {
        throw new Error('nothing to stall on');
      }
      const socket = await stalledRequest(
        slot.agent.url,
        `/v2/${target.repository}/blobs/${largest.digest}?ns=${encodeURIComponent(target.registryHost)}`,
      );
      return { hit: slot.agent.peerId ?? 'agent-0', undo: () => socket.destroy() };
    }
    case 'registry-429':
    case 'registry-5xx':
    case 'registry-slow':
    case 'registry-down':
      // Set when the pull starts and healed by its window (runFault).
      return { hit: 'registry', undo: none };
    case 'none':
    case 'full-disk-agent':
    case 'full-disk-seed':
    case 'corrupting-peer':
    case 'slow-peer':
    case 'slow-peer-link':
      return {
        hit: fault === 'none' ? '' : fault === 'full-disk-seed' ? 'seed-0' : 'agent-0',
        undo: none,
      };
  }
}

/** Sends a GET and never reads the answer: the socket's buffers fill and stay full. */
function stalledRequest(baseUrl: string, path: string): Promise<Socket> {
  const url = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: url.hostname, port: Number(url.port) }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\n\r\n`);
      socket.pause();
      resolve(socket);
    });
    socket.on('error', reject);
  });
}

interface FaultFigures {
  readonly fault: Fault;
  readonly hit: string;
  readonly outcomes: readonly PullOutcome[];
  /** When the fault struck, in s from the start of the pull (or of the preheat). */
  readonly at: number;
  /** How long the fault lasted, in s, for a fault with a window. */
  readonly windowS: number | undefined;
  readonly cache: string;
  /** Agents whose time is not counted (the slow peer is slow by construction). */
  readonly excluded: ReadonlySet<number>;
  /** The time this row is measured against, in s: undefined for the suite's baseline. */
  readonly ownBaseline: number | undefined;
  /** What else is worth a line under the table. */
  readonly notes: readonly string[];
  /** Bytes the registry served (through the fault proxy) ÷ the bytes of the images pulled. */
  readonly originShare: number;
}

/** Polls `probe` every `intervalMs` until it is true or `stop` settles; false when stopped. */
async function until(
  probe: () => Promise<boolean>,
  intervalMs: number,
  stop: Promise<unknown>,
): Promise<boolean> {
  const state = { stopped: false };
  const halt = (): void => {
    state.stopped = true;
  };
  stop.then(halt, halt);
  while (!state.stopped) {
    if (await probe().catch(() => false)) {
      return true;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  return false;
}

/** Bytes the agents fetched so far, from every source. */
async function fetchedBytes(cluster: FaultCluster): Promise<number> {
  let sum = 0;
  for (const slot of cluster.agents) {
    sum += await slot.agent.metric('shoal_agent_fetched_bytes_total').catch(() => 0);
  }
  return sum;
}

/**
 * Every agent pulls `target` at once, and the fault strikes when `due` says so (a registry
 * fault is set before the first request instead, for its window). Returns what was hit, when,
 * and the outcomes; a fault whose moment never came (the pulls were done first) hits nothing.
 */
async function pullWithFault(
  fault: Fault,
  cluster: FaultCluster,
  target: PullTarget,
  due: (pulls: Promise<unknown>) => Promise<boolean>,
  options: Options,
  interrupt: AbortSignal,
): Promise<{ hit: string; at: number; outcomes: PullOutcome[] }> {
  const deadline = AbortSignal.any([interrupt, AbortSignal.timeout(options.timeoutMs)]);
  const registry = registryFault(fault);
  // A registry fault is set before the first request: the seed's origin fetch meets it.
  const window =
    registry === undefined ? undefined : cluster.proxy.during(registry, options.windowMs, deadline);
  const started = performance.now();
  // Clients go through each slot's current agent: a restarted agent has the same URL. A lost
  // agent's client stops with it.
  const pulls = Promise.all(
    cluster.agents.map((slot, i) =>
      pullImage(
        `agent-${i}`,
        slot.agent.url,
        target,
        started,
        AbortSignal.any([deadline, slot.lost.signal]),
      ),
    ),
  );
  let struck: { hit: string; undo: () => void } = { hit: '', undo: () => undefined };
  let at = 0;
  if (fault !== 'none' && registry === undefined && (await due(pulls))) {
    at = (performance.now() - started) / 1000;
    struck = await strike(fault, cluster, target);
  }
  // A lost agent's pull is not counted: the row is about the others.
  const outcomes = (await pulls).filter((_, i) => cluster.agents[i]?.lost.signal.aborted !== true);
  struck.undo();
  await window;
  return { hit: registry === undefined ? struck.hit : 'registry', at, outcomes };
}

/**
 * A `nodes` preheat of `image` through the watcher, until its job is done or failed; with
 * `strikeAt`, the watcher is killed that many seconds in and restarted. Reads of the job's
 * status that fail while the watcher is down are asked again.
 */
async function preheatWithFault(
  cluster: FaultCluster,
  image: string,
  strikeAt: number | undefined,
  options: Options,
  interrupt: AbortSignal,
): Promise<{ seconds: number; job: JobStatus | undefined; hit: string }> {
  const watcher = (): ServiceProcess => {
    if (cluster.watcher === undefined) {
      throw new Error('no watcher');
    }
    return cluster.watcher;
  };
  const deadline = AbortSignal.any([interrupt, AbortSignal.timeout(options.timeoutMs)]);
  const started = performance.now();
  const submitted = await watcherApi(watcher(), '/preheat', {
    method: 'POST',
    body: { image, scope: 'nodes' },
  });
  const path = `/preheat/${encodeURIComponent(submitted.id)}`;
  let hit = '';
  const striking =
    strikeAt === undefined
      ? Promise.resolve()
      : new Promise((resolve) => setTimeout(resolve, strikeAt * 1000)).then(async () => {
          cluster.watcher = await killAndRestart(watcher(), cluster.restartWatcher);
          hit = 'watcher-0';
        });
  // Awaited after the polling; a failed restart must not go unhandled meanwhile.
  striking.catch(() => undefined);
  let job: JobStatus | undefined;
  while (!deadline.aborted) {
    job = await watcherApi(watcher(), path, { method: 'GET' }).catch(() => job);
    if (job !== undefined && (job.state === 'done' || job.state === 'failed')) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
  }
  const elapsed = (performance.now() - started) / 1000;
  await striking;
  return { seconds: elapsed, job, hit };
}

async function runFault(
  fault: Fault,
  registry: Registry,
  layoutDir: string,
  options: Options,
  random: () => number,
  interrupt: AbortSignal,
): Promise<FaultFigures> {
  const teardown = newTeardown();
  try {
    const push = (suffix: string): ReturnType<typeof pushTarget> =>
      pushTarget(
        layoutDir,
        registry,
        `${REPOSITORY}-${fault}${suffix}`,
        `faults-${fault}${suffix}-${Date.now()}`,
        options.layerSizes,
      );
    const { target, ref } = await push('');
    const imageBytes = target.blobs.reduce((sum, b) => sum + b.size, 0);
    const cluster = await startFaultCluster(fault, registry, imageBytes, options, teardown);
    progress(`${fault}: cluster up; pulling ${mib(imageBytes)} on ${options.agents} agents`);
    const isRegistryFault = registryFault(fault) !== undefined;
    const notes: string[] = [];
    // Most faults strike once the agents hold between 15% and 50% of what they pull (by bytes,
    // which a loaded machine slows down no more than the pull itself); an early seed kill
    // strikes as soon as the seed server has taken its first seed request.
    const share = 0.15 + 0.35 * random();
    const due = async (pulls: Promise<unknown>): Promise<boolean> => {
      if (SETUP_FAULTS.has(fault)) {
        return true;
      }
      if (fault === 'kill-seed-server-early' || fault === 'kill-seed-server-early-ack30s') {
        const taken = await until(
          async () =>
            (await cluster.seed.metric('shoal_seedserver_events_consumed_total', {
              type: 'seed-request',
            })) >= 1,
          10,
          pulls,
        );
        const ingested = await cluster.seed
          .metric('shoal_seedserver_ingested_bytes_total')
          .catch(() => Number.NaN);
        notes.push(`the seed server had read ${mib(ingested)} from the origin when killed`);
        return taken;
      }
      const goal = share * imageBytes * options.agents;
      return until(async () => (await fetchedBytes(cluster)) >= goal, 100, pulls);
    };
    let at = 0;
    let hit: string;
    let outcomes: PullOutcome[];
    let ownBaseline: number | undefined;
    if (isWatcherFault(fault)) {
      // A preheat without the fault first, of another image of the same sizes, on this cluster.
      const calm = await push('-calm');
      const unfaulted = await preheatWithFault(cluster, calm.ref, undefined, options, interrupt);
      ownBaseline = unfaulted.seconds;
      at = share * unfaulted.seconds;
      const faulted = await preheatWithFault(cluster, ref, at, options, interrupt);
      hit = faulted.hit;
      notes.push(
        `preheat unfaulted ${seconds(unfaulted.seconds)} (${unfaulted.job?.state ?? 'no status'}), ` +
          `with the watcher killed ${seconds(faulted.seconds)} (${faulted.job?.state ?? 'no status'}, ` +
          `${faulted.job?.nodesDone ?? 0}/${faulted.job?.nodesTotal ?? 0} nodes)`,
      );
      // Then every agent pulls the preheated image: it must be there, whole and verified.
      const after = await pullWithFault(
        'none',
        cluster,
        target,
        () => Promise.resolve(false),
        options,
        interrupt,
      );
      const done = faulted.job?.state === 'done';
      outcomes = after.outcomes.map((o) => ({
        ...o,
        ok: o.ok && done,
        // The row's time is the preheat's.
        seconds: faulted.seconds,
        error: done ? o.error : `preheat ${faulted.job?.state ?? 'never finished'}`,
      }));
    } else {
      ({ hit, at, outcomes } = await pullWithFault(
        fault,
        cluster,
        target,
        due,
        options,
        interrupt,
      ));
    }
    if (isRegistryFault) {
      const counts = cluster.proxy.counts();
      notes.push(
        `registry proxy: ${counts.refused} requests refused, ${counts.slowed} slowed, ` +
          `${counts.forwarded} forwarded, ${mib(counts.bytes)} passed`,
      );
    }
    const excluded = new Set<number>(fault === 'slow-peer-link' ? [0] : []);
    for (const i of excluded) {
      const own = outcomes[i];
      notes.push(
        `the slow peer itself (agent-${i}, ${options.slowMbit} Mbit/s): ` +
          (own?.ok === true ? seconds(own.seconds) : 'FAILED'),
      );
    }
    if (options.logsDir !== undefined) {
      await keepLogs(join(options.logsDir, fault), cluster);
    }
    const caches: string[] = [];
    for (const slot of cluster.agents.filter((s) => s.restarted)) {
      // A download still running (a piece the swarm asked for) holds a temporary file by
      // right; what is left once none runs is a leak.
      await until(
        async () => (await slot.agent.metric('shoal_agent_downloads_in_flight')) === 0,
        100,
        new Promise((resolve) => setTimeout(resolve, 10_000).unref()),
      );
      const check = await cacheConsistent(slot.cacheDir);
      caches.push(`${check.ok ? 'ok' : 'BROKEN'}: ${check.detail}`);
    }
    return {
      fault,
      hit,
      outcomes,
      at,
      windowS: isRegistryFault ? options.windowMs / 1000 : undefined,
      cache: caches.join('; ') || '-',
      excluded,
      ownBaseline,
      notes,
      // The watcher's rows preheat two images of the same size on their cluster.
      originShare: cluster.proxy.counts().bytes / (imageBytes * (isWatcherFault(fault) ? 2 : 1)),
    };
  } finally {
    await teardown.run();
  }
}

/** The row's time: until every counted agent was done; NaN when a pull failed. */
function slowest(f: FaultFigures): number {
  const counted = f.outcomes.filter((_, i) => !f.excluded.has(i));
  return f.outcomes.every((o) => o.ok) ? Math.max(...counted.map((o) => o.seconds)) : Number.NaN;
}

function report(options: Options, figures: readonly FaultFigures[]): string {
  const baseline = figures.find((f) => f.fault === 'none');
  const base = baseline === undefined ? Number.NaN : slowest(baseline);
  const rows = figures.map((f) => {
    const ok = f.outcomes.filter((o) => o.ok).length;
    const time = slowest(f);
    const against = f.ownBaseline ?? base;
    const struck =
      f.hit === ''
        ? '-'
        : f.windowS !== undefined
          ? `${f.hit} 0-${seconds(f.windowS)}`
          : SETUP_FAULTS.has(f.fault)
            ? `${f.hit} throughout`
            : `${f.hit} at ${seconds(f.at)}`;
    return [
      f.fault,
      struck,
      `${ok}/${f.outcomes.length}`,
      String(f.outcomes.reduce((sum, o) => sum + o.corrupt, 0)),
      String(f.outcomes.reduce((sum, o) => sum + o.retries, 0)),
      f.cache,
      Number.isNaN(time) ? 'FAILED' : seconds(time),
      Number.isNaN(time) || Number.isNaN(against) ? '-' : ratio(time / against),
      ratio(f.originShare),
    ];
  });
  const survived = figures.filter(
    (f) => f.outcomes.every((o) => o.ok) && f.outcomes.every((o) => o.corrupt === 0),
  ).length;
  const lines = [
    `Shoal fault suite: ${options.agents} agents, 2 trackers, 1 seed server; image layers ` +
      `${options.layerSizes.map((s) => s / MiB).join(', ')} MiB; rng seed ${options.rngSeed}; ` +
      `registry faults for ${options.windowMs / 1000} s`,
    table(
      [
        'fault',
        'struck',
        'pulls ok',
        'corrupt',
        'retries',
        'restarted cache',
        'time',
        'vs none',
        'origin ÷ image',
      ],
      rows,
    ),
    '',
    ...figures.map((f) => `${f.fault.padEnd(32)} ${DESCRIPTIONS[f.fault]}`),
    '',
    ...figures.flatMap((f) => f.notes.map((note) => `${f.fault}: ${note}`)),
    `faults survived (every pull ok, 0 corrupt responses): ${survived} of ${figures.length}`,
  ];
  for (const f of figures) {
    for (const o of f.outcomes) {
      if (!o.ok) {
        lines.push(`FAILED ${f.fault}, ${o.agent}: ${o.error ?? ''}`);
      }
    }
  }
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();
  // Seeded, so that a run's fault moments can be repeated.
  const random = seededRandom(options.rngSeed);
  const teardown = newTeardown();
  try {
    // The base's NATS is not used: each fault gets a NATS of its own, which it may kill.
    const { registry, layout } = await startBase(teardown, 'faults-image');
    const figures: FaultFigures[] = [];
    for (const fault of options.faults) {
      interrupt.signal.throwIfAborted();
      const result = await runFault(
        fault,
        registry,
        layout.path,
        options,
        random,
        interrupt.signal,
      );
      figures.push(result);
      progress(
        `${fault}: ${result.outcomes.filter((o) => o.ok).length}/${result.outcomes.length} ok`,
      );
    }
    process.stdout.write(report(options, figures));
    const bad = figures.some((f) => f.outcomes.some((o) => !o.ok || o.corrupt > 0));
    return bad ? 1 : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
