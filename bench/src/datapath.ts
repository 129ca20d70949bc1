#!/usr/bin/env node
/**
 * The data-path benchmark: what one agent costs per byte it hands to containerd, against the
 * same pull straight from the registry, in one run.
 *
 *   node bench/dist/src/datapath.js [--layers 160,64,32] [--small 10] [--timeout-s 600]
 *
 * One agent and one seed server (with nats-server and a tracker) serve `ctr images pull` of a
 * generated image; a fresh containerd per pull. In order: the image straight from the registry,
 * through the agent cold (swarm path: seed server, then agent), through the agent warm (cache
 * hit), straight again; a small image straight and through the agent cold; then a second agent
 * fetches the big image's pieces from the first (the seed server stopped). CPU seconds come
 * from /proc/PID/stat (utime + stime) and disk bytes from /proc/PID/io (write_bytes,
 * read_bytes), sampled just before and just after each pull.
 *
 * It reports figures; it never asserts one. It exits 1 when a pull fails.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  FAST_SWARM_ENV,
  freePort,
  mib,
  procCostBetween,
  ratio,
  readProcCost,
  scrapeMetrics,
  seconds,
  startAgent,
  startContainerd,
  startSeedServer,
  startTracker,
  table,
  writeMirrorHosts,
  type Containerd,
  type ProcCost,
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
} from './cli.js';
import { pushTarget, startBase } from './cluster.js';
import { prepareClient, type PullTarget } from './clients.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on every Linux we run on). */

const USAGE = `usage: node bench/dist/src/datapath.js [--layers MiB,MiB,...] [--small MiB] [--timeout-s S] [--cpu-prof-dir DIR]

  --layers LIST       layer sizes of the big image, in MiB (default 160,64,32: 256 MiB)
  --small MiB         size of the small single-layer image (default 10)
  --timeout-s S       longest a pull may take (default 600)
  --cpu-prof-dir DIR  the seed server and the agents write V8 CPU profiles there when they stop
`;

interface Options {
  readonly layerSizes: readonly number[];
  readonly smallBytes: number;
  readonly timeoutMs: number;
  /** Where the seed server and agents write CPU profiles; none when undefined. */
  readonly cpuProfDir: string | undefined;
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    layers: { type: 'string', default: '160,64,32' },
    small: { type: 'string', default: '10' },
    'timeout-s': { type: 'string', default: '600' },
    'cpu-prof-dir': { type: 'string' },
  });
  const problems: string[] = [];
  const layerSizes = String(values.layers)
    .split(',')
    .map((s) => Math.round(Number(s) * MiB));
  if (layerSizes.some((s) => !Number.isFinite(s) || s <= 0)) {
    problems.push('--layers takes sizes in MiB, e.g. 160,64,32');
  }
  const smallBytes = Math.round(Number(values.small) * MiB);
  if (!Number.isFinite(smallBytes) || smallBytes <= 0) {
    problems.push('--small takes a size in MiB');
  }
  const timeoutS = Number(values['timeout-s']);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    problems.push('--timeout-s takes a positive number of seconds');
  }
  exitOnProblems(problems, USAGE);
  const cpuProfDir = values['cpu-prof-dir'];
  return {
    layerSizes,
    smallBytes,
    timeoutMs: timeoutS * 1000,
    cpuProfDir: typeof cpuProfDir === 'string' ? cpuProfDir : undefined,
  };
}

/** The processes whose cost a pull is charged with, by name. */
type Watched = Readonly<Record<string, number>>;

/** One measured pull: wall time, and each watched process's cost during it. */
interface Measured {
  readonly seconds: number;
  readonly costs: Readonly<Record<string, ProcCost>>;
}

/** Runs `pull`, sampling the watched processes just before and just after it. */
async function measure(watched: Watched, pull: () => Promise<void>): Promise<Measured> {
  const before = new Map<string, ProcCost>();
  for (const [name, pid] of Object.entries(watched)) {
    before.set(name, await readProcCost(pid));
  }
  const started = performance.now();
  await pull();
  const elapsed = (performance.now() - started) / 1000;
  const costs: Record<string, ProcCost> = {};
  for (const [name, pid] of Object.entries(watched)) {
    const first = before.get(name);
    if (first !== undefined) {
      costs[name] = procCostBetween(first, await readProcCost(pid));
    }
  }
  return { seconds: elapsed, costs };
}

/** A fresh containerd pulling `target` straight from the registry (`mirrorUrl` undefined) or through an agent. */
async function ctrPull(
  target: PullTarget,
  mirrorUrl: string | undefined,
  timeoutMs: number,
  watched: Watched,
): Promise<Measured> {
  const containerd: Containerd = await startContainerd();
  try {
    if (mirrorUrl === undefined) {
      // Only the server line: plain HTTP to the registry itself.
      const dir = join(containerd.hostsDir, target.registryHost);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'hosts.toml'), `server = "${target.registryUrl}"\n`);
    } else {
      await writeMirrorHosts(
        containerd.hostsDir,
        target.registryHost,
        target.registryUrl,
        mirrorUrl,
      );
    }
    const ref = `${target.registryHost}/${target.repository}:${target.tag}`;
    const result = await measure(watched, async () => {
      await containerd.pull(ref, { timeoutMs });
    });
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

function blobBytes(target: PullTarget): number {
  return target.blobs.reduce((sum, b) => sum + b.size, 0);
}

/** Starts the swarm side: tracker, seed server, and one agent with a known peer port. */
async function startSwarm(
  natsUrl: string,
  registry: Registry,
  teardown: Teardown,
  profileEnv: Record<string, string>,
): Promise<{
  registries: string;
  seed: Awaited<ReturnType<typeof startSeedServer>>;
  agent: Awaited<ReturnType<typeof startAgent>>;
}> {
  const registries = `${registry.host}=${registry.url}`;
  const tracker = await startTracker({ natsUrl });
  teardown.add('tracker', () => tracker.stop());
  const seed = await startSeedServer({ natsUrl, registries, env: profileEnv });
  let seedStopped = false;
  teardown.add('seed server', async () => {
    if (!seedStopped) {
      await seed.stop();
    }
  });
  const agent = await startAgent({
    registries,
    natsUrl,
    peerId: 'agent-a',
    defaultRegistry: registry.host,
    env: { ...FAST_SWARM_ENV, ...profileEnv },
  });
  teardown.add('agent a', () => agent.stop());
  return {
    registries,
    seed: {
      ...seed,
      stop: async () => {
        seedStopped = true;
        await seed.stop();
      },
    },
    agent,
  };
}

interface Results {
  readonly bigBytes: number;
  readonly smallBytes: number;
  readonly direct: readonly Measured[];
  readonly cold: Measured;
  readonly warm: Measured;
  readonly smallDirect: Measured;
  readonly smallCold: Measured;
  readonly peer: {
    readonly measured: Measured;
    readonly fromPeers: number;
    readonly fromOrigin: number;
  };
  /** The first agent's largest resident set over the run (VmHWM), in bytes. */
  readonly agentPeakRss: number;
}

function report(options: Options, results: Results): string {
  const perGiB = (m: Measured, name: string, bytes: number): string => {
    const cost = m.costs[name];
    return cost === undefined ? '-' : (cost.cpuSeconds / (bytes / GiB)).toFixed(2);
  };
  const perByte = (
    m: Measured,
    name: string,
    pick: 'writeBytes' | 'readBytes',
    bytes: number,
  ): string => {
    const cost = m.costs[name];
    return cost === undefined ? '-' : ratio(cost[pick] / bytes);
  };
  const directS = results.direct.reduce((sum, m) => sum + m.seconds, 0) / results.direct.length;
  const row = (
    label: string,
    m: Measured,
    bytes: number,
    vsDirect: number | undefined,
  ): string[] => [
    label,
    seconds(m.seconds),
    vsDirect === undefined ? '' : ratio(m.seconds / vsDirect),
    perGiB(m, 'agent', bytes),
    perGiB(m, 'seed', bytes),
    perGiB(m, 'registry', bytes),
    perByte(m, 'agent', 'writeBytes', bytes),
    perByte(m, 'agent', 'readBytes', bytes),
    perByte(m, 'seed', 'writeBytes', bytes),
  ];
  const { bigBytes, smallBytes } = results;
  const out: string[] = [
    `Shoal data-path benchmark: ctr images pull, one agent + seed server vs the registry`,
    `big image: layers ${options.layerSizes.map((s) => s / MiB).join(', ')} MiB (${mib(bigBytes)} of blobs); ` +
      `small image: ${mib(smallBytes)} of blobs`,
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
      [
        ...results.direct.map((m, i) => row(`big, direct #${i + 1}`, m, bigBytes, undefined)),
        row('big, through Shoal, cold', results.cold, bigBytes, directS),
        row('big, through Shoal, warm (cache hit)', results.warm, bigBytes, directS),
        null,
        row('small, direct', results.smallDirect, smallBytes, undefined),
        row(
          'small, through Shoal, cold',
          results.smallCold,
          smallBytes,
          results.smallDirect.seconds,
        ),
      ],
    ),
    '(/ direct: over the mean of the direct pulls of the same image; W/B, R/B: disk bytes written, read per byte delivered)',
    '',
    `small image, cold: Shoal adds ${seconds(results.smallCold.seconds - results.smallDirect.seconds)}`,
  ];
  const { measured, fromPeers, fromOrigin } = results.peer;
  out.push(
    `agent to agent (loopback, seed server stopped): ${mib(fromPeers)} from peers in ${seconds(measured.seconds)} = ` +
      `${(fromPeers / 1e6 / measured.seconds).toFixed(0)} MB/s` +
      (fromOrigin > 0 ? ` (and ${mib(fromOrigin)} from the origin)` : '') +
      `; receiving agent ${perGiB(measured, 'agent b', bigBytes)} CPU s/GiB, ` +
      `serving agent ${perGiB(measured, 'agent', bigBytes)} CPU s/GiB`,
  );
  out.push(`agent peak RSS over the run: ${mib(results.agentPeakRss)}`);
  return `${out.join('\n')}\n`;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  try {
    const { nats, registry, layout } = await startBase(teardown, 'bench-datapath');
    progress('generating and pushing the images');
    const run = `${Date.now()}`;
    const big = await pushTarget(
      layout.path,
      registry,
      'bench/big',
      `big-${run}`,
      options.layerSizes,
    );
    const small = await pushTarget(layout.path, registry, 'bench/small', `small-${run}`, [
      options.smallBytes,
    ]);
    interrupt.signal.throwIfAborted();
    const profileEnv = cpuProfileEnv(options.cpuProfDir);
    const { registries, seed, agent } = await startSwarm(nats.url, registry, teardown, profileEnv);
    const pid = (p: { process: { child: { pid?: number | undefined } } }): number => {
      const value = p.process.child.pid;
      if (value === undefined) {
        throw new Error('a process has no pid');
      }
      return value;
    };
    const watched = {
      agent: pid(agent),
      seed: pid(seed),
      registry: pid(registry),
    };
    const { timeoutMs } = options;
    progress('big image: direct');
    const direct1 = await ctrPull(big.target, undefined, timeoutMs, watched);
    interrupt.signal.throwIfAborted();
    progress('big image: through Shoal, cold');
    const cold = await ctrPull(big.target, agent.url, timeoutMs, watched);
    interrupt.signal.throwIfAborted();
    progress('big image: through Shoal, warm');
    const warm = await ctrPull(big.target, agent.url, timeoutMs, watched);
    interrupt.signal.throwIfAborted();
    progress('big image: direct again');
    const direct2 = await ctrPull(big.target, undefined, timeoutMs, watched);
    interrupt.signal.throwIfAborted();
    progress('small image: direct, then through Shoal, cold');
    const smallDirect = await ctrPull(small.target, undefined, timeoutMs, watched);
    const smallCold = await ctrPull(small.target, agent.url, timeoutMs, watched);
    interrupt.signal.throwIfAborted();

    progress('agent to agent: a second agent takes the big image from the first');
    await seed.stop();
    const peerPort = await freePort();
    const agentB = await startAgent({
      registries,
      natsUrl: nats.url,
      peerId: 'agent-b',
      defaultRegistry: registry.host,
      env: {
        ...FAST_SWARM_ENV,
        ...profileEnv,
        SHOAL_AGENT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
        SHOAL_AGENT_PEER_URL: `http://127.0.0.1:${peerPort}`,
      },
    });
    teardown.add('agent b', () => agentB.stop());
    const client = await prepareClient('http', agentB.url, big.target, timeoutMs);
    const measured = await measure({ agent: pid(agent), 'agent b': pid(agentB) }, () =>
      client.pull(AbortSignal.any([interrupt.signal, AbortSignal.timeout(timeoutMs)])),
    );
    const metrics = await scrapeMetrics(agentB.url);
    const agentPeakRss = await agent.peakRssBytes();
    const results: Results = {
      bigBytes: blobBytes(big.target),
      smallBytes: blobBytes(small.target),
      direct: [direct1, direct2],
      cold,
      warm,
      smallDirect,
      smallCold,
      peer: {
        measured,
        fromPeers: metrics.get('shoal_agent_fetched_bytes_total', { source: 'peer' }),
        fromOrigin: metrics.get('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      },
      agentPeakRss,
    };
    process.stdout.write(report(options, results));
    return 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
