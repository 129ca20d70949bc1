#!/usr/bin/env node
/**
 * The data-path benchmark: what one agent costs per byte it hands to containerd, against the
 * same pull straight from the registry, in one run.
 *
 *   node bench/dist/src/datapath.js [--layers 160,64,32] [--small 10] [--timeout-s 600] [--only tls]
 *
 * One agent and one seed server (with nats-server and a tracker) serve `ctr images pull` of a
 * generated image; a fresh containerd per pull. In order: the image straight from the registry,
 * through the agent cold (swarm path: seed server, then agent), through the agent warm (cache
 * hit), straight again; a small image straight and through the agent cold; then a second agent
 * fetches the big image's pieces from the first (the seed server stopped), and the same once
 * more over TLS: a third agent with a TLS peer port (mutual TLS, certificates of a CA made for
 * the run) takes the image from the first two, they stop, and a fourth agent takes it from the
 * third over HTTPS; the two agent-to-agent pulls are printed side by side, as ratios. With
 * `--only tls` the pulls through containerd are skipped (the first agent takes the image from
 * the seed server with a plain HTTP client) and only that comparison runs. CPU seconds come
 * from /proc/PID/stat (utime + stime) and disk bytes from /proc/PID/io (write_bytes,
 * read_bytes), sampled just before and just after each pull.
 *
 * It reports figures; it never asserts one. It exits 1 when a pull fails.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  FAST_SWARM_ENV,
  makeTestCa,
  mib,
  procCostBetween,
  ratio,
  readProcCost,
  scrapeMetrics,
  seconds,
  startAgent,
  startContainerd,
  startSeedServer,
  startNats,
  startOtlpReceiver,
  startTracker,
  table,
  writeMirrorHosts,
  type CollectedSpan,
  type Containerd,
  type GeneratedImage,
  type OtlpReceiver,
  type AgentProcess,
  type ProcCost,
  type ServiceProcess,
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
/** Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on every Linux we run on). */

const USAGE = `usage: node bench/dist/src/datapath.js [--layers MiB,MiB,...] [--small MiB] [--small-runs N]
                                     [--timeout-s S] [--only tls|small] [--cpu-prof-dir DIR]

  --layers LIST       layer sizes of the big image, in MiB (default 160,64,32: 256 MiB)
  --small MiB         size of the small single-layer image (default 10)
  --small-runs N      small images pulled, each a new one, direct then cold (default 1;
                      figures are their medians)
  --timeout-s S       longest a pull may take (default 600)
  --only tls          only the agent-to-agent pulls, plain HTTP against TLS
  --only small        only the small image's pulls and its cold timeline
  --spans-file PATH   write every span the swarm exported to PATH (JSON lines)
  --baseline DIR      with the small image: a second swarm (its own nats-server) runs the
                      services built at DIR (a checkout built with tsc -b, e.g. by
                      services/seedserver/tools/build-at.sh); each small run also pulls a
                      new small image cold through it, alternating which goes first
  --cpu-prof-dir DIR  the seed server and the agents write V8 CPU profiles there when they stop
`;

interface Options {
  readonly layerSizes: readonly number[];
  readonly smallBytes: number;
  /** Small images pulled, each a new one (direct, then cold through the agent). */
  readonly smallRuns: number;
  readonly timeoutMs: number;
  /** Only the agent-to-agent comparison of plain HTTP and TLS. */
  readonly tlsOnly: boolean;
  /** Only the small image's pulls. */
  readonly smallOnly: boolean;
  /** Where every span received is written at the end, one JSON object a line. */
  readonly spansFile: string | undefined;
  /** A checkout built with `tsc -b` whose services the baseline swarm runs. */
  readonly baseline: string | undefined;
  /** Where the seed server and agents write CPU profiles; none when undefined. */
  readonly cpuProfDir: string | undefined;
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    layers: { type: 'string', default: '160,64,32' },
    small: { type: 'string', default: '10' },
    'small-runs': { type: 'string', default: '1' },
    'timeout-s': { type: 'string', default: '600' },
    only: { type: 'string' },
    'cpu-prof-dir': { type: 'string' },
    'spans-file': { type: 'string' },
    baseline: { type: 'string' },
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
  const smallRuns = Number(values['small-runs']);
  if (!Number.isInteger(smallRuns) || smallRuns < 1 || smallRuns > 50) {
    problems.push('--small-runs takes a whole number from 1 to 50');
  }
  const timeoutS = Number(values['timeout-s']);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    problems.push('--timeout-s takes a positive number of seconds');
  }
  if (values.only !== undefined && values.only !== 'tls' && values.only !== 'small') {
    problems.push('--only takes tls or small');
  }
  if (values.baseline !== undefined && values.only === 'tls') {
    problems.push('--baseline compares the small image, which --only tls leaves out');
  }
  exitOnProblems(problems, USAGE);
  const cpuProfDir = values['cpu-prof-dir'];
  const spansFile = values['spans-file'];
  const baseline = values.baseline;
  return {
    layerSizes,
    smallBytes,
    smallRuns,
    timeoutMs: timeoutS * 1000,
    tlsOnly: values.only === 'tls',
    smallOnly: values.only === 'small',
    cpuProfDir: typeof cpuProfDir === 'string' ? cpuProfDir : undefined,
    spansFile: typeof spansFile === 'string' ? spansFile : undefined,
    baseline: typeof baseline === 'string' ? baseline : undefined,
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

/**
 * Starts the swarm side: tracker, seed server and one agent. The seed server and the agent
 * may be stopped before the teardown (which then leaves them alone).
 */
async function startSwarm(
  natsUrl: string,
  registry: Registry,
  teardown: Teardown,
  /** For all three: CPU profiles, trace export. */
  env: Record<string, string>,
  /** Another checkout's build to run (the baseline), and its agent's peer id. */
  baseline?: { buildRoot: string; peerId: string },
): Promise<{ seed: ServiceProcess; agent: AgentProcess; tracker: ServiceProcess }> {
  const build = baseline === undefined ? {} : { buildRoot: baseline.buildRoot };
  const tracker = await startTracker({ natsUrl, env, ...build });
  teardown.add('tracker', () => tracker.stop());
  const seed = await startSeedServer({
    natsUrl,
    registries: `${registry.host}=${registry.url}`,
    env,
    ...build,
  });
  const stopSeed = once(() => seed.stop());
  teardown.add('seed server', stopSeed);
  const agent = await startPeer(
    natsUrl,
    registry,
    baseline?.peerId ?? 'agent-a',
    undefined,
    env,
    baseline?.buildRoot,
  );
  const stopAgent = once(() => agent.stop());
  teardown.add('agent a', stopAgent);
  return { seed: { ...seed, stop: stopSeed }, agent: { ...agent, stop: stopAgent }, tracker };
}

/** One agent taking the big image from another, with both agents' costs. */
interface PeerPull {
  readonly measured: Measured;
  readonly fromPeers: number;
  readonly fromOrigin: number;
}

/** The big image's pulls through containerd (left out with `--only tls` and `--only small`). */
interface BigResults {
  readonly direct: readonly Measured[];
  readonly cold: Measured;
  readonly warm: Measured;
}

/** One small image: straight from the registry, then cold through the agent, and its timeline. */
interface SmallRun {
  readonly direct: Measured;
  readonly cold: Measured;
  /** The cold pull's phases, per blob of the image (layer, config), from the exported spans. */
  readonly timelines: ReadonlyMap<'layer' | 'config', readonly Phase[]>;
  /** Another new small image, cold through the baseline swarm (with `--baseline`). */
  readonly baseline?: {
    readonly cold: Measured;
    readonly timelines: ReadonlyMap<'layer' | 'config', readonly Phase[]>;
  };
}

/** The pulls through containerd (left out with `--only tls`). */
interface CtrResults {
  readonly big: BigResults | undefined;
  readonly small: readonly SmallRun[];
}

interface Results {
  readonly bigBytes: number;
  readonly smallBytes: number;
  readonly ctr: CtrResults | undefined;
  /** Agent to agent over plain HTTP, then over TLS (left out with `--only small`). */
  readonly peer: PeerPull | undefined;
  readonly peerTls: PeerPull | undefined;
  /** The first agent's largest resident set over the run (VmHWM), in bytes. */
  readonly agentPeakRss: number;
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
  const rows: (string[] | null)[] = [];
  const { big, small } = ctr;
  if (big !== undefined) {
    const directS = big.direct.reduce((sum, m) => sum + m.seconds, 0) / big.direct.length;
    rows.push(
      ...big.direct.map((m, i) => row(`big, direct #${i + 1}`, m, bigBytes, undefined)),
      row('big, through Shoal, cold', big.cold, bigBytes, directS),
      row('big, through Shoal, warm (cache hit)', big.warm, bigBytes, directS),
      null,
    );
  }
  // With several small images, the rows are the runs of median time.
  const smallDirect = medianRun(small.map((r) => r.direct));
  const smallCold = medianRun(small.map((r) => r.cold));
  const baselineCold = medianRun(
    small.flatMap((r) => (r.baseline === undefined ? [] : [r.baseline.cold])),
  );
  const of = small.length > 1 ? ` (median of ${small.length})` : '';
  if (smallDirect !== undefined && smallCold !== undefined) {
    rows.push(
      row(`small, direct${of}`, smallDirect, smallBytes, undefined),
      row(`small, through Shoal, cold${of}`, smallCold, smallBytes, smallDirect.seconds),
    );
    if (baselineCold !== undefined) {
      rows.push(
        row(
          `small, through the baseline, cold${of}`,
          baselineCold,
          smallBytes,
          smallDirect.seconds,
        ),
      );
    }
  }
  const lines = [
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
      rows,
    ),
    '(/ direct: over the mean of the direct pulls of the same image; W/B, R/B: disk bytes written, read per byte delivered)',
    '',
  ];
  if (smallDirect !== undefined && smallCold !== undefined) {
    lines.push(
      `small image, cold: Shoal adds ${seconds(smallCold.seconds - smallDirect.seconds)}${of}`,
    );
    if (baselineCold !== undefined) {
      lines.push(
        `small image, cold: the baseline adds ${seconds(baselineCold.seconds - smallDirect.seconds)}${of}`,
      );
    }
    if (small.length > 1) {
      const each = (r: SmallRun): string =>
        [r.cold, ...(r.baseline === undefined ? [] : [r.baseline.cold]), r.direct]
          .map((m) => m.seconds.toFixed(2))
          .join('/');
      lines.push(
        `  each run, cold${baselineCold === undefined ? '' : ' / baseline cold'} / direct: ${small.map(each).join(' ')} s`,
      );
    }
    lines.push('', ...timelineReport(small), '');
  }
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
  type Timelines = SmallRun['timelines'];
  const phaseMs = (
    pick: (r: SmallRun) => Timelines | undefined,
    blob: 'layer' | 'config',
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

function peerReport(bigBytes: number, peer: PeerPull, peerTls: PeerPull): string[] {
  const figures = (pull: PeerPull) => ({
    mbps: pull.fromPeers / 1e6 / pull.measured.seconds,
    receiving: perGiB(pull.measured, 'receiver', bigBytes),
    serving: perGiB(pull.measured, 'sender', bigBytes),
  });
  const plain = figures(peer);
  const tls = figures(peerTls);
  const row = (label: string, pull: PeerPull, f: typeof plain): string[] => [
    label,
    mib(pull.fromPeers),
    seconds(pull.measured.seconds),
    f.mbps.toFixed(0),
    f.receiving.toFixed(2),
    f.serving.toFixed(2),
    mib(pull.fromOrigin),
  ];
  return [
    'agent to agent (loopback, seed server stopped, one agent holding the image):',
    table(
      [
        'pieces over',
        'from peers',
        'time',
        'MB/s',
        'receiving agent CPU s/GiB',
        'serving agent CPU s/GiB',
        'from origin',
      ],
      [
        row('plain HTTP', peer, plain),
        row('TLS (mutual, ECDSA P-256)', peerTls, tls),
        null,
        [
          'TLS / plain',
          '',
          ratio(peerTls.measured.seconds / peer.measured.seconds),
          ratio(tls.mbps / plain.mbps),
          ratio(tls.receiving / plain.receiving),
          ratio(tls.serving / plain.serving),
          '',
        ],
      ],
    ),
  ];
}

function report(options: Options, results: Results): string {
  const out: string[] = [
    options.tlsOnly
      ? 'Shoal data-path benchmark: pieces between agents, plain HTTP and TLS'
      : 'Shoal data-path benchmark: ctr images pull, one agent + seed server vs the registry',
    ...(options.smallOnly
      ? []
      : [
          `big image: layers ${options.layerSizes.map((s) => s / MiB).join(', ')} MiB (${mib(results.bigBytes)} of blobs)`,
        ]),
    ...(results.ctr === undefined ? [''] : ctrReport(results, results.ctr)),
    ...(results.peer === undefined || results.peerTls === undefined
      ? []
      : peerReport(results.bigBytes, results.peer, results.peerTls)),
    `agent peak RSS over the run: ${mib(results.agentPeakRss)}`,
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
  sender: AgentProcess,
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
    fromOrigin: metrics.get('shoal_agent_fetched_bytes_total', { source: 'origin' }),
  };
}

/** An agent in the swarm on a peer port of its own; with `pieceTls`, that port serves HTTPS. */
async function startPeer(
  natsUrl: string,
  registry: Registry,
  peerId: string,
  pieceTls: Parameters<typeof startAgent>[0]['pieceTls'],
  profileEnv: Record<string, string>,
  buildRoot?: string,
): Promise<AgentProcess> {
  return startAgent({
    registries: `${registry.host}=${registry.url}`,
    natsUrl,
    peerId,
    defaultRegistry: registry.host,
    ...(pieceTls === undefined ? {} : { pieceTls }),
    ...(buildRoot === undefined ? {} : { buildRoot }),
    env: { ...FAST_SWARM_ENV, ...profileEnv },
  });
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  try {
    const { nats, registry, layout } = await startBase(teardown, 'bench-datapath');
    progress('generating and pushing the images');
    const run = `${Date.now()}`;
    const big = options.smallOnly
      ? undefined
      : await pushTarget(layout.path, registry, 'bench/big', `big-${run}`, options.layerSizes);
    interrupt.signal.throwIfAborted();
    // The swarm's processes export their spans here, for the small image's timeline.
    const receiver = options.tlsOnly ? undefined : await startOtlpReceiver();
    if (receiver !== undefined) {
      teardown.add('OTLP receiver', () => receiver.stop());
    }
    const profileEnv = cpuProfileEnv(options.cpuProfDir);
    const { seed, agent } = await startSwarm(nats.url, registry, teardown, {
      ...profileEnv,
      ...receiver?.env,
    });
    // The baseline swarm: another build, on a nats-server of its own (its streams and
    // consumers are its own business), exporting its spans to the same receiver.
    let baselineAgent: AgentProcess | undefined;
    if (options.baseline !== undefined) {
      const baseNats = await startNats();
      teardown.add('baseline nats-server', () => baseNats.stop());
      baselineAgent = (
        await startSwarm(
          baseNats.url,
          registry,
          teardown,
          { ...profileEnv, ...receiver?.env },
          { buildRoot: options.baseline, peerId: 'agent-baseline' },
        )
      ).agent;
    }
    const { timeoutMs } = options;
    let ctr: CtrResults | undefined;
    if (receiver === undefined) {
      if (big !== undefined) {
        progress('big image: the first agent takes it from the seed server');
        const client = await prepareClient('http', agent.url, big.target, timeoutMs);
        await client.pull(AbortSignal.any([interrupt.signal, AbortSignal.timeout(timeoutMs)]));
      }
    } else {
      const watched = { agent: pid(agent), seed: pid(seed), registry: pid(registry) };
      let bigResults: BigResults | undefined;
      if (big !== undefined) {
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
        bigResults = { direct: [direct1, direct2], cold, warm };
      }
      const small: SmallRun[] = [];
      for (let i = 0; i < options.smallRuns; i++) {
        progress(`small image ${i + 1} of ${options.smallRuns}: direct, then through Shoal, cold`);
        // A new image each time, in a folder of its own: every cold pull is cold.
        const image = await pushTarget(
          join(layout.path, `small-${i}`),
          registry,
          'bench/small',
          `small-${run}-${i}`,
          [options.smallBytes],
        );
        const direct = await ctrPull(image.target, undefined, timeoutMs, watched);
        // With a baseline, which swarm pulls first alternates, so neither always meets the
        // machine as the other left it.
        const pullThis = async (): Promise<Omit<SmallRun, 'direct'>> => {
          const cold = await ctrPull(image.target, agent.url, timeoutMs, watched);
          return { cold, timelines: await timelines(receiver, image.image) };
        };
        const pullBaseline = async (): Promise<SmallRun['baseline']> => {
          if (baselineAgent === undefined) {
            return undefined;
          }
          const other = await pushTarget(
            join(layout.path, `small-base-${i}`),
            registry,
            'bench/small-base',
            `small-base-${run}-${i}`,
            [options.smallBytes],
          );
          const cold = await ctrPull(other.target, baselineAgent.url, timeoutMs, {
            registry: pid(registry),
          });
          return { cold, timelines: await timelines(receiver, other.image) };
        };
        let current: Omit<SmallRun, 'direct'>;
        let baseline: SmallRun['baseline'];
        if (i % 2 === 0) {
          current = await pullThis();
          baseline = await pullBaseline();
        } else {
          baseline = await pullBaseline();
          current = await pullThis();
        }
        interrupt.signal.throwIfAborted();
        small.push({ direct, ...current, ...(baseline === undefined ? {} : { baseline }) });
      }
      ctr = { big: bigResults, small };
    }

    let peer: PeerPull | undefined;
    let peerTls: PeerPull | undefined;
    let agentPeakRss = await agent.peakRssBytes();
    if (big !== undefined) {
      progress('agent to agent: a second agent takes the big image from the first');
      await seed.stop();
      const agentB = await startPeer(nats.url, registry, 'agent-b', undefined, profileEnv);
      const stopB = once(() => agentB.stop());
      teardown.add('agent b', stopB);
      peer = await peerPull(agent, agentB, big.target, timeoutMs, interrupt.signal);
      agentPeakRss = await agent.peakRssBytes();
      interrupt.signal.throwIfAborted();

      // TLS: a third agent with a TLS peer port takes the image from the first two; once they
      // are gone, a fourth takes it from the third alone, over HTTPS with client certificates.
      progress('agent to agent over TLS: a third agent takes the image, a fourth takes it from it');
      const ca = await makeTestCa('bench-datapath-ca');
      teardown.add('test CA', () => ca.remove());
      const pieceTls = { ca, verifyClients: true };
      const agentC = await startPeer(nats.url, registry, 'agent-c', pieceTls, profileEnv);
      teardown.add('agent c', () => agentC.stop());
      const warmUp = await prepareClient('http', agentC.url, big.target, timeoutMs);
      await warmUp.pull(AbortSignal.any([interrupt.signal, AbortSignal.timeout(timeoutMs)]));
      await stopB();
      await agent.stop();
      const agentD = await startPeer(nats.url, registry, 'agent-d', pieceTls, profileEnv);
      teardown.add('agent d', () => agentD.stop());
      peerTls = await peerPull(agentC, agentD, big.target, timeoutMs, interrupt.signal);
    }

    const results: Results = {
      bigBytes: big === undefined ? 0 : blobBytes(big.target),
      smallBytes: options.smallBytes,
      ctr,
      peer,
      peerTls,
      agentPeakRss,
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

/** How long a cold pull's spans may take to reach the receiver, in ms. */
const SPANS_WAIT_MS = 5_000;

/**
 * The phases of the cold pull of each blob of `image` (its layer and its config), from the
 * spans exported for it; a blob whose trace did not arrive in time has none.
 */
async function timelines(
  receiver: OtlpReceiver,
  image: GeneratedImage,
): Promise<Map<'layer' | 'config', Phase[]>> {
  const blobs = new Map<'layer' | 'config', string>([
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
  const out = new Map<'layer' | 'config', Phase[]>();
  for (const [blob, digest] of blobs) {
    const root = mirrorRoot(receiver.spans(), digest);
    if (root !== undefined) {
      out.set(blob, pullTimeline(root, receiver.trace(root.traceId)));
    }
  }
  return out;
}

/** `stop` run at most once, however many times it is called (a process stopped early and at teardown). */
function once(stop: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= stop());
}

await runBench(main);
