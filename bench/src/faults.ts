#!/usr/bin/env node
/**
 * The fault suite (issue 11, item 4): N agents pull one image at once through a Shoal cluster
 * (NATS, two trackers, a seed server) while one fault strikes at a random moment of the pull:
 * a process killed with SIGKILL and restarted a moment later as its supervisor would, a
 * stalled reader, a full disk, a peer that corrupts pieces or uploads slowly. Each fault runs
 * on a cluster and an image of its own; the pull without a fault is the baseline.
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
 * - time: until every agent is done, and against the baseline.
 *
 *   node bench/dist/src/faults.js [--agents 4] [--layers 64,16,1] [--faults a,b,...]
 *                                 [--rng-seed N] [--timeout-s 300]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails or a corrupt
 * response completes.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readdir } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

import {
  freePort,
  makeTempDir,
  mib,
  ratio,
  seconds,
  startAgent,
  startNats,
  startSeedServer,
  startTracker,
  table,
  type AgentProcess,
  type Descriptor,
  type NatsServer,
  type Registry,
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

const run = promisify(execFile);
const MiB = 1024 * 1024;
const REPOSITORY = 'bench/faults';
/** A supervisor (kubelet, systemd) restarts a killed process after about this long, in ms. */
const RESTART_AFTER_MS = 1000;
/** Pause before a client asks again for a blob that failed, in ms. */
const RETRY_PAUSE_MS = 500;

const FAULTS = [
  'none',
  'kill-uploading-agent',
  'kill-downloading-agent',
  'kill-seed-server',
  'kill-tracker',
  'kill-nats',
  'stalled-reader',
  'full-disk-agent',
  'corrupting-peer',
  'slow-peer',
] as const;
type Fault = (typeof FAULTS)[number];

const DESCRIPTIONS: Record<Fault, string> = {
  none: 'no fault (baseline)',
  'kill-uploading-agent': 'SIGKILL the agent that uploaded most, restart it',
  'kill-downloading-agent': 'SIGKILL the agent that fetched least, restart it',
  'kill-seed-server': 'SIGKILL the seed server, restart it (same cache, same gateway)',
  'kill-tracker': 'SIGKILL one of the two trackers, restart it',
  'kill-nats': 'SIGKILL nats-server, restart it (same port, same JetStream store)',
  'stalled-reader': 'a client on one agent asks for the largest blob and never reads',
  'full-disk-agent': "one agent's cache on a tmpfs of half the image",
  'corrupting-peer': 'one agent flips a byte of every piece it serves',
  'slow-peer': 'one agent uploads at 1 MiB/s',
};

const USAGE = `usage: node bench/dist/src/faults.js [--agents N] [--layers MiB,...] [--faults LIST]
                                   [--rng-seed N] [--timeout-s S]

  --agents N       agents pulling at once (default 4)
  --layers LIST    layer sizes of each generated image, in MiB (default 64,16,1)
  --faults LIST    which faults, comma-separated (default: all):
                   ${FAULTS.join(', ')}
  --rng-seed N     seed of the random fault moments (default 1)
  --timeout-s S    longest a pull may take, retries included (default 300)
  --logs DIR       keep every process's log under DIR/<fault>/ (default: logs are removed)
`;

interface Options {
  readonly agents: number;
  readonly layerSizes: readonly number[];
  readonly faults: readonly Fault[];
  readonly rngSeed: number;
  readonly timeoutMs: number;
  /** Where to keep the processes' logs; undefined: not kept. */
  readonly logsDir: string | undefined;
}

function isFault(value: string): value is Fault {
  return (FAULTS as readonly string[]).includes(value);
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '4' },
    layers: { type: 'string', default: '64,16,1' },
    faults: { type: 'string', default: FAULTS.join(',') },
    'rng-seed': { type: 'string', default: '1' },
    'timeout-s': { type: 'string', default: '300' },
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
  exitOnProblems(problems, USAGE);
  // The baseline always runs first: every time is compared with it.
  const faults = ['none' as const, ...named.filter(isFault).filter((f) => f !== 'none')];
  const logsDir = typeof values.logs === 'string' ? values.logs : undefined;
  return { ...common, faults, rngSeed, logsDir };
}

/** What one client's pull came to. */
interface PullOutcome {
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
    return { ok: true, seconds: (performance.now() - started) / 1000, ...tally, error: undefined };
  } catch (error) {
    return {
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
    ['nats', join(cluster.nats.process.logPath)],
    ['seed', cluster.seed.process.logPath],
    ...cluster.trackers.map((t, i): [string, string] => [`tracker-${i}`, t.process.logPath]),
    ...cluster.agents.map((a, i): [string, string] => [`agent-${i}`, a.agent.process.logPath]),
  ];
  for (const [name, path] of logs) {
    await copyFile(path, join(dir, `${name}.log`)).catch(() => undefined);
  }
}

/** Checks an agent's cache: every blob file matches its name's digest, nothing in `tmp/`. */
async function cacheConsistent(cacheDir: string): Promise<{ ok: boolean; detail: string }> {
  const leftovers = await readdir(join(cacheDir, 'tmp')).catch(() => []);
  let blobs = 0;
  const bad: string[] = [];
  for (const algorithm of ['sha256']) {
    const dir = join(cacheDir, 'blobs', algorithm);
    for (const hex of await readdir(dir).catch(() => [] as string[])) {
      if (hex.endsWith('.type')) {
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
      : `${bad.length} bad blobs, ${leftovers.length} temp files`,
  };
}

/** One agent of the cluster, restartable with the same ports and cache. */
interface AgentSlot {
  agent: AgentProcess;
  readonly start: () => Promise<AgentProcess>;
  readonly cacheDir: string;
  restarted: boolean;
}

/** A cluster for one fault: NATS, two trackers, a seed server and the agents. */
interface FaultCluster {
  readonly nats: NatsServer;
  readonly trackers: ServiceProcess[];
  seed: ServiceProcess;
  readonly restartSeed: () => Promise<ServiceProcess>;
  readonly agents: AgentSlot[];
}

async function startFaultCluster(
  fault: Fault,
  registry: Registry,
  imageBytes: number,
  options: Options,
  teardown: Teardown,
): Promise<FaultCluster> {
  const registries = `${registry.host}=${registry.url}`;
  const nats = await startNats();
  teardown.add('nats-server', () => nats.stop());
  const trackers: ServiceProcess[] = [];
  for (let i = 0; i < 2; i++) {
    const tracker = await startTracker({ natsUrl: nats.url });
    trackers.push(tracker);
  }
  teardown.add('trackers', async () => {
    await Promise.all(trackers.map((t) => t.stop()));
  });
  const seedDir = await makeTempDir('faults-seed');
  teardown.add('seed directory', () => seedDir.remove());
  const seedPort = await freePort();
  const startSeed = (): Promise<ServiceProcess> =>
    startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-0',
      port: seedPort,
      env: {
        SHOAL_SEED_CACHE_DIR: join(seedDir.path, 'cache'),
        SHOAL_STORE_DIR: join(seedDir.path, 'store'),
      },
    });
  const cluster: FaultCluster = {
    nats,
    trackers,
    seed: await startSeed(),
    restartSeed: startSeed,
    agents: [],
  };
  teardown.add('seed server', () => cluster.seed.stop());
  for (let i = 0; i < options.agents; i++) {
    const dir = await makeTempDir(`faults-agent-${i}`);
    teardown.add(`agent ${i} directory`, () => dir.remove());
    const cacheDir = join(dir.path, 'cache');
    // The first agent is the one a disk or peer fault is set on.
    const env: Record<string, string> = {};
    if (i === 0 && fault === 'full-disk-agent') {
      await run('mkdir', ['-p', cacheDir]);
      await run('mount', [
        '-t',
        'tmpfs',
        '-o',
        `size=${Math.floor(imageBytes / 2)}`,
        'tmpfs',
        cacheDir,
      ]);
      teardown.add('small disk', async () => {
        await run('umount', ['-l', cacheDir]);
      });
      env.SHOAL_AGENT_CACHE_MIN_FREE_BYTES = '0';
    }
    if (i === 0 && fault === 'corrupting-peer') {
      env.SHOAL_AGENT_FAULT_CORRUPT_PIECES = 'true';
    }
    if (i === 0 && fault === 'slow-peer') {
      env.SHOAL_AGENT_UPLOAD_RATE_BYTES = String(MiB);
    }
    const [port, peerPort] = [await freePort(), await freePort()];
    const start = (): Promise<AgentProcess> =>
      startAgent({
        registries,
        natsUrl: nats.url,
        peerId: `agent-${i}`,
        defaultRegistry: registry.host,
        port,
        cacheDir,
        env: {
          ...env,
          SHOAL_AGENT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
          SHOAL_AGENT_PEER_URL: `http://127.0.0.1:${peerPort}`,
        },
      });
    const slot: AgentSlot = { agent: await start(), start, cacheDir, restarted: false };
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
    case 'kill-seed-server': {
      await cluster.seed.process.kill();
      await new Promise((resolve) => setTimeout(resolve, RESTART_AFTER_MS));
      const old = cluster.seed;
      cluster.seed = await cluster.restartSeed();
      await old.stop().catch(() => undefined);
      return { hit: 'seed-0', undo: none };
    }
    case 'kill-tracker': {
      const [tracker] = cluster.trackers;
      if (tracker === undefined) {
        throw new Error('no tracker');
      }
      await tracker.process.kill();
      await new Promise((resolve) => setTimeout(resolve, RESTART_AFTER_MS));
      cluster.trackers[0] = await startTracker({ natsUrl: cluster.nats.url });
      await tracker.stop().catch(() => undefined);
      return { hit: 'tracker-0', undo: none };
    }
    case 'kill-nats': {
      await cluster.nats.crashAndRestart(2 * RESTART_AFTER_MS);
      return { hit: 'nats-server', undo: none };
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
    case 'none':
    case 'full-disk-agent':
    case 'corrupting-peer':
    case 'slow-peer':
      return { hit: fault === 'none' ? '' : 'agent-0', undo: none };
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
  /** When the fault struck, in s from the start of the pull. */
  readonly at: number;
  readonly cache: string;
}

async function runFault(
  fault: Fault,
  registry: Registry,
  layoutDir: string,
  options: Options,
  baselineSeconds: number | undefined,
  random: () => number,
  interrupt: AbortSignal,
): Promise<FaultFigures> {
  const teardown = newTeardown();
  try {
    const { target } = await pushTarget(
      layoutDir,
      registry,
      `${REPOSITORY}-${fault}`,
      `faults-${fault}-${Date.now()}`,
      options.layerSizes,
    );
    const imageBytes = target.blobs.reduce((sum, b) => sum + b.size, 0);
    const cluster = await startFaultCluster(fault, registry, imageBytes, options, teardown);
    progress(`${fault}: cluster up; pulling ${mib(imageBytes)} on ${options.agents} agents`);
    const deadline = AbortSignal.any([interrupt, AbortSignal.timeout(options.timeoutMs)]);
    const started = performance.now();
    // Clients go through each slot's current agent: a restarted agent has the same URL.
    const pulls = cluster.agents.map((slot) =>
      pullImage(slot.agent.url, target, started, deadline),
    );
    // The fault strikes between 15% and 50% of the baseline's time into the pull.
    const at = baselineSeconds === undefined ? 0 : (0.15 + 0.35 * random()) * baselineSeconds;
    let struck: { hit: string; undo: () => void } = { hit: '', undo: () => undefined };
    if (fault !== 'none') {
      await new Promise((resolve) => setTimeout(resolve, at * 1000));
      struck = await strike(fault, cluster, target);
    }
    const outcomes = await Promise.all(pulls);
    struck.undo();
    if (options.logsDir !== undefined) {
      await keepLogs(join(options.logsDir, fault), cluster);
    }
    const caches: string[] = [];
    for (const slot of cluster.agents.filter((s) => s.restarted)) {
      const check = await cacheConsistent(slot.cacheDir);
      caches.push(`${check.ok ? 'ok' : 'BROKEN'}: ${check.detail}`);
    }
    return { fault, hit: struck.hit, outcomes, at, cache: caches.join('; ') || '-' };
  } finally {
    await teardown.run();
  }
}

function report(options: Options, figures: readonly FaultFigures[]): string {
  const baseline = figures.find((f) => f.fault === 'none');
  const slowest = (f: FaultFigures): number =>
    f.outcomes.every((o) => o.ok) ? Math.max(...f.outcomes.map((o) => o.seconds)) : Number.NaN;
  const base = baseline === undefined ? Number.NaN : slowest(baseline);
  const rows = figures.map((f) => {
    const ok = f.outcomes.filter((o) => o.ok).length;
    const time = slowest(f);
    return [
      f.fault,
      f.hit === '' ? '-' : `${f.hit} at ${seconds(f.at)}`,
      `${ok}/${f.outcomes.length}`,
      String(f.outcomes.reduce((sum, o) => sum + o.corrupt, 0)),
      String(f.outcomes.reduce((sum, o) => sum + o.retries, 0)),
      f.cache,
      Number.isNaN(time) ? 'FAILED' : seconds(time),
      Number.isNaN(time) || Number.isNaN(base) ? '-' : ratio(time / base),
    ];
  });
  const survived = figures.filter(
    (f) => f.outcomes.every((o) => o.ok) && f.outcomes.every((o) => o.corrupt === 0),
  ).length;
  const lines = [
    `Shoal fault suite: ${options.agents} agents, 2 trackers, 1 seed server; image layers ` +
      `${options.layerSizes.map((s) => s / MiB).join(', ')} MiB; rng seed ${options.rngSeed}`,
    table(
      ['fault', 'struck', 'pulls ok', 'corrupt', 'retries', 'restarted cache', 'time', 'vs none'],
      rows,
    ),
    '',
    ...figures.map((f) => `${f.fault.padEnd(24)} ${DESCRIPTIONS[f.fault]}`),
    '',
    `faults survived (every pull ok, 0 corrupt responses): ${survived} of ${figures.length}`,
  ];
  for (const f of figures) {
    for (const [i, o] of f.outcomes.entries()) {
      if (!o.ok) {
        lines.push(`FAILED ${f.fault}, agent-${i}: ${o.error ?? ''}`);
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
    let baselineSeconds: number | undefined;
    for (const fault of options.faults) {
      interrupt.signal.throwIfAborted();
      const result = await runFault(
        fault,
        registry,
        layout.path,
        options,
        baselineSeconds,
        random,
        interrupt.signal,
      );
      figures.push(result);
      if (fault === 'none') {
        baselineSeconds = Math.max(...result.outcomes.map((o) => o.seconds));
      }
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
