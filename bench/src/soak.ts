#!/usr/bin/env node
/**
 * Load and soak (issue 11, item 5), on one Shoal cluster (nats-server, two trackers, a seed
 * server, N agents with a small cache quota so that eviction runs):
 *
 * - load: every agent runs `--concurrency` pulls at once of a mix of images (each pull: every
 *   blob of one image, digests checked while streaming); counts errors and peak RSS;
 * - soak: for `--minutes`, rollouts one after another, every agent pulling the rollout's image
 *   at once, as a Deployment's rollout would. With `--cycle N` the rollouts go round N image
 *   versions (after the first pass every blob is one the cluster has seen: the steady state of
 *   a cluster that keeps running the same images, which must be flat); without it every
 *   rollout is a new version (new layers), so every per-blob table keeps meeting new keys and
 *   only its bounds (the tracker's have age, the seed cache quota) hold it.
 *
 *   Every `--sample-s` the agents', trackers', seed server's and nats-server's RSS, V8 heap
 *   in use and open file descriptors, and JetStream's bytes and messages, are read. It prints
 *   them at the start of the soak (after a warm-up) and at every quarter, and per process the
 *   growth over the second half and its slope (least squares over the second half's samples,
 *   per minute): a leak shows as a slope that stays positive however long the run.
 *
 *   node bench/dist/src/soak.js [--agents 16] [--concurrency 32] [--images 4] [--layers 4,1]
 *                               [--minutes 10] [--cycle 12] [--cache-mib 32]
 *                               [--seed-cache-mib 32] [--peer-max-age-s 1800] [--token-ttl-s 600]
 *                               [--sample-s 15] [--heap-snapshots DIR] [--timeout-s 300]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails.
 */
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  mib,
  startAgent,
  startSeedServer,
  startTracker,
  table,
  waitFor,
  type AgentProcess,
  type ServiceProcess,
} from '@shoal/testkit';

import {
  commonOptions,
  exitOnProblems,
  interruptOnSignal,
  newTeardown,
  progress,
  readOptions,
  runBench,
} from './cli.js';
import { pushTarget, startAgents, startBase } from './cluster.js';
import { pullBlob, type PullTarget } from './clients.js';

const MiB = 1024 * 1024;

const USAGE = `usage: node bench/dist/src/soak.js [--agents N] [--concurrency N] [--images N]
                                 [--layers MiB,...] [--minutes M] [--cycle N] [--cache-mib N]
                                 [--seed-cache-mib N] [--peer-max-age-s S] [--token-ttl-s S]
                                 [--sample-s S]
                                 [--heap-snapshots DIR] [--timeout-s S]

  --agents N           agents (default 16)
  --concurrency N      pulls at once per agent in the load phase (default 32)
  --images N           images in the load phase's mix (default 4)
  --layers LIST        layer sizes of every generated image, in MiB (default 4,1)
  --minutes M          length of the soak phase (default 10; 0: load only)
  --cycle N            rollouts go round N image versions (default 12; 0: a new version each)
  --cache-mib N        each agent's cache quota, so that rollouts evict (default 32)
  --seed-cache-mib N   the seed server's cache quota (SHOAL_SEED_CACHE_MAX_BYTES; default 32),
                       so that it evicts too and brings blobs back from the object gateway
  --peer-max-age-s S   the trackers' SHOAL_TRACKER_PEER_MAX_AGE_MS, in s (default: theirs, 1800)
  --token-ttl-s S      the trackers' SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS, in s (default: theirs,
                       600): the verified-token caches hold a token lifetime's worth
  --sample-s S         seconds between two readings of every process (default 15)
  --heap-snapshots DIR the trackers, the seed server and one agent write a V8 heap snapshot
                       into DIR after the warm-up and at the end (compare them with
                       node bench/dist/src/heap-diff.js A B)
  --timeout-s S        longest one pull may take (default 300)
`;

interface Options {
  readonly agents: number;
  readonly concurrency: number;
  readonly images: number;
  readonly layerSizes: readonly number[];
  readonly minutes: number;
  readonly cycle: number;
  readonly cacheBytes: number;
  readonly seedCacheBytes: number;
  readonly peerMaxAgeMs: number | undefined;
  readonly tokenTtlMs: number | undefined;
  readonly sampleMs: number;
  readonly heapSnapshots: string | undefined;
  readonly timeoutMs: number;
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '16' },
    concurrency: { type: 'string', default: '32' },
    images: { type: 'string', default: '4' },
    layers: { type: 'string', default: '4,1' },
    minutes: { type: 'string', default: '10' },
    cycle: { type: 'string', default: '12' },
    'cache-mib': { type: 'string', default: '32' },
    'seed-cache-mib': { type: 'string', default: '32' },
    'peer-max-age-s': { type: 'string' },
    'token-ttl-s': { type: 'string' },
    'sample-s': { type: 'string', default: '15' },
    'heap-snapshots': { type: 'string' },
    'timeout-s': { type: 'string', default: '300' },
  });
  const problems: string[] = [];
  const common = commonOptions(values, problems);
  const whole = (name: string, min: number, max: number): number => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < min || value > max) {
      problems.push(`--${name} takes a whole number from ${min} to ${max}`);
    }
    return value;
  };
  const concurrency = whole('concurrency', 1, 256);
  const images = whole('images', 1, 32);
  const cycle = whole('cycle', 0, 10_000);
  const cacheMib = whole('cache-mib', 1, 1_000_000);
  const seedCacheMib = whole('seed-cache-mib', 1, 100_000_000);
  const sampleS = whole('sample-s', 1, 3600);
  const peerMaxAgeS =
    values['peer-max-age-s'] === undefined ? undefined : whole('peer-max-age-s', 1, 86_400);
  const tokenTtlS =
    values['token-ttl-s'] === undefined ? undefined : whole('token-ttl-s', 10, 86_400);
  const minutes = Number(values.minutes);
  if (!Number.isFinite(minutes) || minutes < 0 || minutes > 24 * 60) {
    problems.push('--minutes takes a number of minutes from 0 to 1440');
  }
  exitOnProblems(problems, USAGE);
  const snapshots = values['heap-snapshots'];
  return {
    ...common,
    concurrency,
    images,
    minutes,
    cycle,
    cacheBytes: cacheMib * MiB,
    seedCacheBytes: seedCacheMib * MiB,
    peerMaxAgeMs: peerMaxAgeS === undefined ? undefined : peerMaxAgeS * 1000,
    tokenTtlMs: tokenTtlS === undefined ? undefined : tokenTtlS * 1000,
    sampleMs: sampleS * 1000,
    heapSnapshots: typeof snapshots === 'string' ? resolve(snapshots) : undefined,
  };
}

/** Pulls every blob of `target` through `agentUrl`; returns the error text or undefined. */
async function pullImage(
  agentUrl: string,
  target: PullTarget,
  timeoutMs: number,
): Promise<string | undefined> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    await Promise.all(target.blobs.map((blob) => pullBlob(agentUrl, target, blob, signal)));
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** What one process holds now. */
interface ProcessFigures {
  readonly rss: number;
  /**
   * V8's heap in use (live objects and garbage not yet collected), from its /metrics; NaN for
   * nats-server.
   */
  readonly heap: number;
  readonly fds: number;
}

/** RSS and open file descriptors of a process, from /proc. */
async function procFigures(pid: number | undefined): Promise<{ rss: number; fds: number }> {
  const status = await readFile(`/proc/${String(pid)}/status`, 'utf8');
  const rss = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? Number.NaN) * 1024;
  const fds = (await readdir(`/proc/${String(pid)}/fd`)).length;
  return { rss, fds };
}

async function serviceFigures(service: ServiceProcess): Promise<ProcessFigures> {
  const { rss, fds } = await procFigures(service.process.child.pid);
  const heap = await service.metric('nodejs_heap_size_used_bytes');
  return { rss, heap, fds };
}

/** The figures of a group of processes: the largest of each. */
async function groupFigures(services: readonly ServiceProcess[]): Promise<ProcessFigures> {
  const all = await Promise.all(services.map(serviceFigures));
  return {
    rss: Math.max(...all.map((f) => f.rss)),
    heap: Math.max(...all.map((f) => f.heap)),
    fds: Math.max(...all.map((f) => f.fds)),
  };
}

/** Bytes and messages JetStream holds, and the bytes limits, summed over Shoal's streams. */
async function jetStreamUsage(natsUrl: string): Promise<{
  bytes: number;
  messages: number;
  limit: number;
  byStream: Record<string, number>;
}> {
  const nc = await connect({ servers: natsUrl, timeout: 5_000 });
  try {
    const jsm = await jetstreamManager(nc);
    let bytes = 0;
    let messages = 0;
    let limit = 0;
    const byStream: Record<string, number> = {};
    for await (const stream of jsm.streams.list()) {
      bytes += stream.state.bytes;
      messages += stream.state.messages;
      limit += stream.config.max_bytes > 0 ? stream.config.max_bytes : 0;
      byStream[stream.config.name] = stream.state.messages;
    }
    return { bytes, messages, limit, byStream };
  } finally {
    await nc.close();
  }
}

/** One reading of every process, `atMs` after the soak started. */
interface Sample {
  readonly atMs: number;
  readonly rollouts: number;
  readonly agents: ProcessFigures;
  readonly trackers: ProcessFigures;
  readonly seed: ProcessFigures;
  readonly nats: ProcessFigures;
  readonly jetStreamBytes: number;
  readonly jetStreamMessages: number;
  readonly jetStreamLimit: number;
  /** Messages per stream (KV buckets are streams too: `KV_<bucket>`). */
  readonly streamMessages: Readonly<Record<string, number>>;
}

/** Least-squares slope of `y` over `x`; NaN with fewer than two points. */
function slope(points: readonly { x: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) {
    return Number.NaN;
  }
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? Number.NaN : num / den;
}

/**
 * Asks every process in `pids` for a heap snapshot (SIGUSR2, with `--heapsnapshot-signal`) and
 * waits until each has written it into `dir`; returns the files, named `<label>-<pid>`.
 */
async function heapSnapshots(
  dir: string,
  processes: readonly { label: string; pid: number | undefined }[],
): Promise<string[]> {
  const before = new Set(await readdir(dir));
  for (const { pid } of processes) {
    if (pid !== undefined) {
      process.kill(pid, 'SIGUSR2');
    }
  }
  const files: string[] = [];
  for (const { label, pid } of processes) {
    let found: string | undefined;
    let lastSize = -1;
    await waitFor(
      `the heap snapshot of ${label}`,
      async () => {
        found ??= (await readdir(dir)).find(
          (name) =>
            !before.has(name) &&
            name.endsWith('.heapsnapshot') &&
            name.includes(`.${String(pid)}.`),
        );
        if (found === undefined) {
          return false;
        }
        // Written in one go by the process; done when its size stops changing.
        const size = (await stat(join(dir, found))).size;
        const done = size > 0 && size === lastSize;
        lastSize = size;
        return done;
      },
      { timeoutMs: 120_000, intervalMs: 1_000 },
    );
    if (found !== undefined) {
      files.push(`${label}: ${join(dir, found)}`);
    }
  }
  return files;
}

/** The running cluster a soak reads and pulls through. */
interface Cluster {
  readonly agents: readonly AgentProcess[];
  readonly trackers: readonly ServiceProcess[];
  readonly seed: ServiceProcess;
  push(name: string): Promise<PullTarget>;
  read(atMs: number, rollouts: number): Promise<Sample>;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  let failures = 0;
  try {
    if (options.heapSnapshots !== undefined) {
      await mkdir(options.heapSnapshots, { recursive: true });
    }
    const snapshotEnv: Record<string, string> =
      options.heapSnapshots === undefined
        ? {}
        : {
            NODE_OPTIONS: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${options.heapSnapshots}`,
          };
    const { nats, registry, layout } = await startBase(teardown, 'soak-image');
    const registries = `${registry.host}=${registry.url}`;
    const trackers: ServiceProcess[] = [];
    for (let i = 0; i < 2; i++) {
      const tracker = await startTracker({
        natsUrl: nats.url,
        env: {
          ...snapshotEnv,
          ...(options.peerMaxAgeMs === undefined
            ? {}
            : { SHOAL_TRACKER_PEER_MAX_AGE_MS: String(options.peerMaxAgeMs) }),
          ...(options.tokenTtlMs === undefined
            ? {}
            : { SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS: String(options.tokenTtlMs) }),
        },
      });
      teardown.add(`tracker ${i}`, () => tracker.stop());
      trackers.push(tracker);
    }
    const seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      env: {
        ...snapshotEnv,
        SHOAL_SEED_CACHE_MAX_BYTES: String(options.seedCacheBytes),
        // The cache's own quota is what the soak exercises, not the disk's free space.
        SHOAL_SEED_CACHE_MIN_FREE_BYTES: '0',
      },
    });
    teardown.add('seed server', () => seed.stop());
    const agents: AgentProcess[] = await startAgents(
      options.agents,
      (i) =>
        startAgent({
          registries,
          natsUrl: nats.url,
          peerId: `agent-${i}`,
          defaultRegistry: registry.host,
          env: {
            ...(i === 0 ? snapshotEnv : {}),
            SHOAL_AGENT_CACHE_MAX_BYTES: String(options.cacheBytes),
            SHOAL_LOG_LEVEL: 'warn',
          },
        }),
      teardown,
    );
    const cluster: Cluster = {
      agents,
      trackers,
      seed,
      push: async (name) =>
        (
          await pushTarget(
            layout.path,
            registry,
            `soak/${name}`,
            `soak-${name}-${Date.now()}`,
            options.layerSizes,
          )
        ).target,
      read: async (atMs, rollouts) => {
        const usage = await jetStreamUsage(nats.url);
        return {
          atMs,
          rollouts,
          agents: await groupFigures(agents),
          trackers: await groupFigures(trackers),
          seed: await serviceFigures(seed),
          nats: { ...(await procFigures(nats.process.child.pid)), heap: Number.NaN },
          jetStreamBytes: usage.bytes,
          jetStreamMessages: usage.messages,
          jetStreamLimit: usage.limit,
          streamMessages: usage.byStream,
        };
      },
    };

    // Load: every agent pulls a mix of images, `concurrency` pulls at once.
    progress(
      `load: ${options.agents} agents x ${options.concurrency} pulls of ${options.images} images`,
    );
    const mix: PullTarget[] = [];
    for (let i = 0; i < options.images; i++) {
      mix.push(await cluster.push(`load-${i}`));
    }
    const loadStarted = performance.now();
    const outcomes = await Promise.all(
      agents.flatMap((agent) =>
        Array.from({ length: options.concurrency }, (_, j) => {
          const target = mix[j % mix.length];
          return target === undefined
            ? Promise.resolve('no image')
            : pullImage(agent.url, target, options.timeoutMs);
        }),
      ),
    );
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    const loadErrors = outcomes.filter((o): o is string => o !== undefined);
    failures += loadErrors.length;
    const peakRss = Math.max(...(await Promise.all(agents.map((a) => a.peakRssBytes()))));
    const lines: string[] = [
      `Shoal load and soak: ${options.agents} agents, 2 trackers, 1 seed server; images of ` +
        `${options.layerSizes.map((s) => s / MiB).join(', ')} MiB layers; agent cache quota ` +
        `${mib(options.cacheBytes)}, seed cache quota ${mib(options.seedCacheBytes)}; tracker have age ` +
        (options.peerMaxAgeMs === undefined
          ? 'default (1800 s)'
          : `${options.peerMaxAgeMs / 1000} s`) +
        `, token lifetime ${options.tokenTtlMs === undefined ? 'default (600 s)' : `${options.tokenTtlMs / 1000} s`}`,
      '',
      `load: ${outcomes.length} pulls (${options.concurrency} at once per agent, ${options.images} images), ` +
        `${outcomes.length - loadErrors.length} ok, ${loadErrors.length} failed, in ${loadSeconds.toFixed(1)} s; ` +
        `largest agent peak RSS ${mib(peakRss)}`,
      ...[...new Set(loadErrors)].slice(0, 5).map((e) => `  failed: ${e}`),
    ];
    if (options.minutes > 0) {
      const soaked = await soak(options, cluster, interrupt.signal);
      failures += soaked.failures;
      lines.push('', ...soaked.lines);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    return failures > 0 ? 1 : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

/** The soak phase: rollouts until the time is up, with readings every `sampleMs`. */
async function soak(
  options: Options,
  cluster: Cluster,
  signal: AbortSignal,
): Promise<{ lines: string[]; failures: number }> {
  const { agents } = cluster;
  const started = Date.now();
  const until = started + options.minutes * 60_000;
  const versions: PullTarget[] = [];
  let rollouts = 0;
  let failures = 0;
  const samples: Sample[] = [];
  const snapshotFiles: string[] = [];
  const snapshotProcesses = [
    ...cluster.trackers.map((t, i) => ({ label: `tracker-${i}`, pid: t.process.child.pid })),
    { label: 'seed', pid: cluster.seed.process.child.pid },
    { label: 'agent-0', pid: agents[0]?.process.child.pid },
  ];
  const snapshot = async (when: string): Promise<void> => {
    if (options.heapSnapshots !== undefined) {
      const files = await heapSnapshots(options.heapSnapshots, snapshotProcesses);
      snapshotFiles.push(...files.map((file) => `heap snapshot ${when}: ${file}`));
    }
  };
  // Readings start after a warm-up: three rollouts, or the first pass of the cycle.
  const warmUp = Math.max(3, options.cycle);
  let nextReadingAt = 0;
  while (Date.now() < until && !signal.aborted) {
    const version = options.cycle > 0 ? rollouts % options.cycle : rollouts;
    let target = versions[version];
    if (target === undefined) {
      target = await cluster.push(`rollout-${version}`);
      if (options.cycle > 0) {
        versions[version] = target;
      }
    }
    const pulled = target;
    const errors = (
      await Promise.all(agents.map((a) => pullImage(a.url, pulled, options.timeoutMs)))
    ).filter((o) => o !== undefined);
    failures += errors.length;
    for (const error of new Set(errors)) {
      progress(`rollout ${rollouts + 1} failed: ${error}`);
    }
    rollouts += 1;
    if (rollouts === warmUp) {
      await snapshot(`after rollout ${rollouts}`);
    }
    if (rollouts >= warmUp && Date.now() >= nextReadingAt) {
      samples.push(await cluster.read(Date.now() - started, rollouts));
      nextReadingAt = Date.now() + options.sampleMs;
    }
    if (rollouts % 10 === 0) {
      progress(`soak: ${rollouts} rollouts, ${failures} failed pulls`);
    }
  }
  samples.push(await cluster.read(Date.now() - started, rollouts));
  await snapshot('at the end');
  return {
    lines: [
      `soak: ${options.minutes} min, ${rollouts} rollouts ` +
        (options.cycle > 0
          ? `going round ${options.cycle} image versions`
          : 'of a new image version each') +
        ` to every agent, ${rollouts * agents.length - failures} pulls ok, ${failures} failed`,
      ...soakReport(samples),
      ...snapshotFiles,
    ],
    failures,
  };
}

/** A signed value, e.g. `+1.2 MiB`, `-3`. */
function signed(value: number, format: (n: number) => string): string {
  if (!Number.isFinite(value)) {
    return '-';
  }
  return `${value < 0 ? '-' : '+'}${format(Math.abs(value))}`;
}

/** The readings at the start, at each quarter and at the end, then the second half's growth. */
function soakReport(samples: readonly Sample[]): string[] {
  const first = samples[0];
  const last = samples.at(-1);
  if (first === undefined || last === undefined) {
    return [];
  }
  const span = last.atMs - first.atMs;
  const shown: Sample[] = [first];
  for (const quarter of [1, 2, 3]) {
    const at = first.atMs + (span * quarter) / 4;
    const nearest = samples.reduce((a, b) =>
      Math.abs(b.atMs - at) < Math.abs(a.atMs - at) ? b : a,
    );
    if (!shown.includes(nearest)) {
      shown.push(nearest);
    }
  }
  if (!shown.includes(last)) {
    shown.push(last);
  }
  const minutes = (ms: number): string => `${(ms / 60_000).toFixed(1)} min`;
  const readings = table(
    [
      '',
      'rollouts',
      'agent RSS',
      'agent heap',
      'agent fds',
      'tracker RSS',
      'tracker heap',
      'tracker fds',
      'seed RSS',
      'seed heap',
      'seed fds',
      'nats RSS',
      'nats fds',
      'JetStream bytes / limits',
      'JetStream msgs',
    ],
    shown.map((s) => [
      `at ${minutes(s.atMs)}`,
      String(s.rollouts),
      mib(s.agents.rss),
      mib(s.agents.heap),
      String(s.agents.fds),
      mib(s.trackers.rss),
      mib(s.trackers.heap),
      String(s.trackers.fds),
      mib(s.seed.rss),
      mib(s.seed.heap),
      String(s.seed.fds),
      mib(s.nats.rss),
      String(s.nats.fds),
      `${mib(s.jetStreamBytes)} / ${mib(s.jetStreamLimit)}`,
      String(s.jetStreamMessages),
    ]),
  );
  // The second half: the readings from the soak's middle to the end.
  const middle = first.atMs + span / 2;
  const half = samples.filter((s) => s.atMs >= middle);
  const from = half[0] ?? last;
  const size = (n: number): string => mib(n);
  const count = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(1));
  const row = (what: string, pick: (s: Sample) => number, format: (n: number) => string) => {
    const perMinute = slope(half.map((s) => ({ x: s.atMs / 60_000, y: pick(s) })));
    return [
      what,
      format(pick(from)),
      format(pick(last)),
      signed(pick(last) - pick(from), format),
      `${signed(perMinute, format)}/min`,
    ];
  };
  const growth = table(
    [
      `second half (${minutes(from.atMs)} to ${minutes(last.atMs)}, ${half.length} readings)`,
      'from',
      'to',
      'growth',
      'slope',
    ],
    [
      row('agent RSS (largest)', (s) => s.agents.rss, size),
      row('agent heap (largest)', (s) => s.agents.heap, size),
      row('agent fds (most)', (s) => s.agents.fds, count),
      row('tracker RSS (largest)', (s) => s.trackers.rss, size),
      row('tracker heap (largest)', (s) => s.trackers.heap, size),
      row('tracker fds (most)', (s) => s.trackers.fds, count),
      row('seed server RSS', (s) => s.seed.rss, size),
      row('seed server heap', (s) => s.seed.heap, size),
      row('seed server fds', (s) => s.seed.fds, count),
      row('nats-server RSS', (s) => s.nats.rss, size),
      row('nats-server fds', (s) => s.nats.fds, count),
      row('JetStream bytes', (s) => s.jetStreamBytes, size),
      row('JetStream messages', (s) => s.jetStreamMessages, count),
    ],
  );
  const streams = Object.keys(last.streamMessages)
    .sort()
    .map(
      (name) => `${name} ${from.streamMessages[name] ?? 0} -> ${last.streamMessages[name] ?? 0}`,
    );
  return [
    readings,
    '',
    growth,
    `JetStream messages per stream, second half: ${streams.join(', ')}`,
    '',
  ];
}

await runBench(main);
