#!/usr/bin/env node
/**
 * The swarm benchmark: N agents pull one image at the same moment, first as a Shoal swarm
 * (tracker, seed server, agents exchanging pieces), then as N plain mirrors of the origin (the
 * baseline, same run, same image), then N clients straight from the registry with no agent at
 * all (direct: with `--client ctr`, N fresh containerds). Prints what came from where, how
 * long each agent took and how much memory it used, and the swarm's figures as ratios of the
 * baseline's and of the direct pulls'.
 *
 *   node bench/dist/src/swarm.js [--agents 6] [--layers 256,16,1] [--seed-rate-mbps N]
 *                                [--client http|skopeo|ctr] [--timeout-s 600]
 *                                [--build DIR] [--cpu-prof-dir DIR]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails or does not verify.
 */

import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';

import {
  mib,
  percent,
  procCostBetween,
  ratio,
  readProcCost,
  scrapeMetrics,
  seconds,
  startAgent,
  startSeedServer,
  startTracker,
  table,
  type AgentProcess,
  type ProcCost,
  type Registry,
} from '@shoal/testkit';

import {
  commonOptions,
  cpuProfileEnv,
  exitOnProblems,
  interruptOnSignal,
  mean,
  newTeardown,
  progress,
  readOptions,
  runBench,
  settleDisk,
} from './cli.js';
import { pushTarget, startAgents, startBase } from './cluster.js';
import {
  CLIENTS,
  prepareClient,
  type ClientKind,
  type PreparedClient,
  type PullTarget,
} from './clients.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** CPU seconds with two decimals ('-' when not measured). */
function cpuText(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : '-';
}
const REPOSITORY = 'bench/swarm';

const USAGE = `usage: node bench/dist/src/swarm.js [--agents N] [--layers MiB,MiB,...] [--seed-rate-mbps N]
                                  [--client http|skopeo|ctr] [--timeout-s S]
                                  [--build DIR] [--cpu-prof-dir DIR]

  --agents N           agents pulling at once (default 6)
  --layers LIST        layer sizes of the generated image, in MiB (default 256,16,1)
  --seed-rate-mbps N   the seed server's upload limit, in megabits/s (default: none)
  --client KIND        http (default): the mirror API, digests checked while streaming;
                       skopeo: skopeo copy to an OCI layout; ctr: a fresh containerd per agent
  --timeout-s S        longest a pull may take (default 600)
  --build DIR          run the agents, tracker and seed server of another checkout built
                       with tsc -b (e.g. services/seedserver/tools/build-at.sh), for a
                       before/after in alternating runs of this bench
  --cpu-prof-dir DIR   the agents and the seed server write V8 CPU profiles there when they stop
`;

interface Options {
  readonly agents: number;
  readonly layerSizes: readonly number[];
  /** The seed server's upload limit in bytes/s; 0: none. */
  readonly seedRateBytes: number;
  readonly client: ClientKind;
  readonly timeoutMs: number;
  /** A checkout built with `tsc -b` whose services run instead of this one's. */
  readonly build: string | undefined;
  readonly cpuProfDir: string | undefined;
}

function isClient(value: string): value is ClientKind {
  return (CLIENTS as readonly string[]).includes(value);
}

/** Parses the command line; every problem is printed at once, with the usage, and exits 2. */
function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '6' },
    layers: { type: 'string', default: '256,16,1' },
    'seed-rate-mbps': { type: 'string', default: '0' },
    client: { type: 'string', default: 'http' },
    'timeout-s': { type: 'string', default: '600' },
    build: { type: 'string' },
    'cpu-prof-dir': { type: 'string' },
  });
  const problems: string[] = [];
  const common = commonOptions(values, problems);
  const mbps = Number(values['seed-rate-mbps']);
  if (!Number.isFinite(mbps) || mbps < 0) {
    problems.push('--seed-rate-mbps takes a rate in megabits/s (0: none)');
  }
  const client = String(values.client);
  if (!isClient(client)) {
    problems.push(`--client takes one of ${CLIENTS.join(', ')}`);
  }
  exitOnProblems(problems, USAGE);
  return {
    ...common,
    seedRateBytes: Math.round((mbps * 1_000_000) / 8),
    client: isClient(client) ? client : 'http',
    build: typeof values.build === 'string' ? resolve(values.build) : undefined,
    cpuProfDir:
      typeof values['cpu-prof-dir'] === 'string' ? resolve(values['cpu-prof-dir']) : undefined,
  };
}

/** A successful blob GET the registry served, with the bytes it wrote. */
interface OriginGet {
  readonly digest: string;
  readonly written: number;
}

/** Successful blob GETs in the registry's own log, oldest first. */
async function originGets(registry: Registry): Promise<OriginGet[]> {
  return (await registry.blobGets()).map((get) => ({
    digest: /\/blobs\/(sha(?:256|512):[0-9a-f]+)/.exec(get.uri)?.[1] ?? '',
    written: get.written,
  }));
}

/** One agent's figures for one phase. */
interface AgentFigures {
  readonly name: string;
  readonly origin: number;
  readonly seed: number;
  readonly peer: number;
  readonly uploaded: number;
  /** From the common start to this agent's last verified byte, in seconds. */
  readonly seconds: number;
  readonly peakRss: number;
  /** CPU seconds the agent spent during the pulls (from /proc), NaN for a direct client. */
  readonly cpuSeconds: number;
  readonly error: string | undefined;
}

interface PhaseFigures {
  readonly agents: readonly AgentFigures[];
  /** Successful blob GETs the registry served during the phase. */
  readonly blobGets: number;
  /** Sum of the sizes of the blobs those GETs asked for. */
  readonly originBytes: number;
  /** Bytes the registry wrote for them, by its own log. */
  readonly originWritten: number;
  /** The registry's CPU seconds during the pulls (from /proc). */
  readonly registryCpuSeconds: number;
  /** The clients' CPU seconds during the pulls: containerds and `ctr`, or the HTTP client. */
  readonly clientCpuSeconds: number;
  /** The seed server's figures (swarm only), its CPU seconds during the pulls from /proc. */
  readonly seed:
    { readonly ingested: number; readonly served: number; readonly cpuSeconds: number } | undefined;
}

/** How one client's pull ended: its time from the common start, and its error if it failed. */
interface Outcome {
  readonly seconds: number;
  readonly error: string | undefined;
}

/**
 * CPU seconds of this process and of its children that have ended and been waited for
 * (utime, stime, cutime and cstime of /proc/self/stat).
 */
async function ownAndChildrenCpu(): Promise<number> {
  const stat = await readFile('/proc/self/stat', 'utf8');
  // Fields after the command name (which may hold spaces), from the third: utime is the 14th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
  return ticks / 100;
}

/** CPU seconds of each watched process (name -> pid) between `before` and now. */
async function cpuSince(
  watched: ReadonlyMap<string, number>,
  before: ReadonlyMap<string, ProcCost>,
): Promise<Map<string, number>> {
  const spent = new Map<string, number>();
  for (const [name, pid] of watched) {
    const first = before.get(name);
    if (first !== undefined) {
      spent.set(name, procCostBetween(first, await readProcCost(pid)).cpuSeconds);
    }
  }
  return spent;
}

/**
 * One client per entry of `mirrors` (an agent's URL, or undefined: straight from the registry)
 * pulls the image at the same moment; returns each client's outcome, the registry's blob GETs
 * during the pulls, and the CPU seconds the `watched` processes (name -> pid; the registry is
 * always watched, as `registry`) spent from the common start to the last client's end.
 */
async function pullAtOnce(
  mirrors: readonly (string | undefined)[],
  target: PullTarget,
  registry: Registry,
  options: Options,
  interrupt: AbortSignal,
  watching: ReadonlyMap<string, number> = new Map(),
): Promise<
  { outcomes: Outcome[]; cpu: Map<string, number> } & Omit<
    PhaseFigures,
    'seed' | 'agents' | 'registryCpuSeconds' | 'clientCpuSeconds'
  >
> {
  const teardown = newTeardown();
  try {
    const clients: PreparedClient[] = [];
    for (const mirror of mirrors) {
      const client = await prepareClient(options.client, mirror, target, options.timeoutMs);
      clients.push(client);
      teardown.add(`${options.client} client`, () => client.close());
    }
    // Nothing the phase before wrote is still being written back when the clock starts.
    await settleDisk();
    const before = (await originGets(registry)).length;
    const signal = AbortSignal.any([interrupt, AbortSignal.timeout(options.timeoutMs)]);
    const watched = new Map(watching);
    for (const [index, client] of clients.entries()) {
      if (client.daemonPid !== undefined) {
        watched.set(`client-${index}`, client.daemonPid);
      }
    }
    const selfBefore = await ownAndChildrenCpu();
    const registryPid = registry.process.child.pid;
    if (registryPid !== undefined) {
      watched.set('registry', registryPid);
    }
    const costs = new Map<string, ProcCost>();
    for (const [name, pid] of watched) {
      costs.set(name, await readProcCost(pid));
    }
    const started = performance.now();
    const outcomes = await Promise.all(
      clients.map(async (client): Promise<Outcome> => {
        let error: string | undefined;
        try {
          await client.pull(signal);
        } catch (caught) {
          error = caught instanceof Error ? caught.message.split('\n')[0] : String(caught);
        }
        return { seconds: (performance.now() - started) / 1000, error };
      }),
    );
    const cpu = await cpuSince(watched, costs);
    // The clients: their daemons (containerd), and this process with the children it waited
    // for (the `ctr`/`skopeo` commands; the HTTP client runs here).
    let clientCpu = (await ownAndChildrenCpu()) - selfBefore;
    for (const [name, seconds] of cpu) {
      if (name.startsWith('client-')) {
        clientCpu += seconds;
      }
    }
    cpu.set('clients', clientCpu);
    const sizes = new Map(target.blobs.map((b) => [b.digest, b.size]));
    const gets = (await originGets(registry)).slice(before);
    return {
      outcomes,
      cpu,
      blobGets: gets.length,
      originBytes: gets.reduce((sum, g) => sum + (sizes.get(g.digest) ?? 0), 0),
      originWritten: gets.reduce((sum, g) => sum + g.written, 0),
    };
  } finally {
    await teardown.run();
  }
}

/** Every agent pulls the image at the same moment; returns each agent's figures. */
async function pullAll(
  agents: readonly AgentProcess[],
  target: PullTarget,
  registry: Registry,
  options: Options,
  interrupt: AbortSignal,
  /** More processes to take the CPU of (name -> pid), e.g. the seed server. */
  others: ReadonlyMap<string, number> = new Map(),
): Promise<Omit<PhaseFigures, 'seed'> & { cpu: Map<string, number> }> {
  const watched = new Map(others);
  for (const [index, agent] of agents.entries()) {
    if (agent.process.child.pid !== undefined) {
      watched.set(`agent-${index}`, agent.process.child.pid);
    }
  }
  const { outcomes, cpu, ...origin } = await pullAtOnce(
    agents.map((a) => a.url),
    target,
    registry,
    options,
    interrupt,
    watched,
  );
  const figures: AgentFigures[] = [];
  for (const [index, agent] of agents.entries()) {
    const metrics = await scrapeMetrics(agent.url);
    const fetched = (source: string): number =>
      metrics.get('shoal_agent_fetched_bytes_total', { source });
    const outcome = outcomes[index] ?? { seconds: Number.NaN, error: 'no outcome' };
    figures.push({
      name: agent.peerId ?? `agent-${index}`,
      origin: fetched('origin'),
      seed: fetched('seed'),
      peer: fetched('peer'),
      uploaded: metrics.get('shoal_agent_uploaded_bytes_total'),
      seconds: outcome.seconds,
      peakRss: await agent.peakRssBytes(),
      cpuSeconds: cpu.get(`agent-${index}`) ?? Number.NaN,
      error: outcome.error,
    });
  }
  return {
    agents: figures,
    ...origin,
    cpu,
    registryCpuSeconds: cpu.get('registry') ?? Number.NaN,
    clientCpuSeconds: cpu.get('clients') ?? Number.NaN,
  };
}

/** The direct baseline: N clients straight from the registry, no agent on the way. */
async function directPhase(
  registry: Registry,
  target: PullTarget,
  options: Options,
  interrupt: AbortSignal,
): Promise<PhaseFigures> {
  progress(`direct: ${options.agents} ${options.client} clients pull from the registry itself`);
  const { outcomes, cpu, ...origin } = await pullAtOnce(
    Array.from({ length: options.agents }, () => undefined),
    target,
    registry,
    options,
    interrupt,
  );
  const share = options.agents > 0 ? origin.originBytes / options.agents : 0;
  return {
    ...origin,
    // Each client's bytes came from the origin; the registry's log does not say whose GET
    // was whose, so each is charged an equal share.
    agents: outcomes.map((o, i) => ({
      name: `direct-${i}`,
      origin: share,
      seed: 0,
      peer: 0,
      uploaded: 0,
      seconds: o.seconds,
      peakRss: Number.NaN,
      cpuSeconds: Number.NaN,
      error: o.error,
    })),
    registryCpuSeconds: cpu.get('registry') ?? Number.NaN,
    clientCpuSeconds: cpu.get('clients') ?? Number.NaN,
    seed: undefined,
  };
}

/** The services of `--build`, when given. */
function buildChoice(options: Options): { buildRoot?: string } {
  return options.build === undefined ? {} : { buildRoot: options.build };
}

/** The swarm: a tracker, a seed server and N agents on the same NATS. */
async function swarmPhase(
  natsUrl: string,
  registry: Registry,
  target: PullTarget,
  options: Options,
  interrupt: AbortSignal,
): Promise<PhaseFigures> {
  const teardown = newTeardown();
  try {
    const registries = `${registry.host}=${registry.url}`;
    const build = buildChoice(options);
    const profileEnv = cpuProfileEnv(options.cpuProfDir);
    const tracker = await startTracker({ natsUrl, ...build });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({
      natsUrl,
      registries,
      env: { SHOAL_SEED_UPLOAD_RATE_BYTES: String(options.seedRateBytes), ...profileEnv },
      ...build,
    });
    teardown.add('seed server', () => seed.stop());
    const agents = await startAgents(
      options.agents,
      (i) =>
        startAgent({
          registries,
          natsUrl,
          peerId: `agent-${i}`,
          defaultRegistry: registry.host,
          env: profileEnv,
          ...build,
        }),
      teardown,
    );
    interrupt.throwIfAborted();
    progress(`swarm: ${agents.length} agents, a tracker and a seed server are up; pulling`);
    const seedPid = seed.process.child.pid;
    const { cpu, ...pulled } = await pullAll(
      agents,
      target,
      registry,
      options,
      interrupt,
      new Map(seedPid === undefined ? [] : [['seed', seedPid]]),
    );
    const seedMetrics = await scrapeMetrics(seed.url);
    return {
      ...pulled,
      seed: {
        ingested: seedMetrics.get('shoal_seedserver_ingested_bytes_total', { source: 'origin' }),
        served: seedMetrics.get('shoal_seedserver_served_bytes_total'),
        cpuSeconds: cpu.get('seed') ?? Number.NaN,
      },
    };
  } finally {
    await teardown.run();
  }
}

/** The baseline: the same N agents as plain mirrors (no NATS), each going to the origin. */
async function baselinePhase(
  registry: Registry,
  target: PullTarget,
  options: Options,
  interrupt: AbortSignal,
): Promise<PhaseFigures> {
  const teardown = newTeardown();
  try {
    const registries = `${registry.host}=${registry.url}`;
    const agents = await startAgents(
      options.agents,
      () =>
        startAgent({
          registries,
          defaultRegistry: registry.host,
          env: cpuProfileEnv(options.cpuProfDir),
          ...buildChoice(options),
        }),
      teardown,
    );
    interrupt.throwIfAborted();
    progress(`baseline: ${agents.length} agents without the swarm are up; pulling`);
    const pulled = await pullAll(agents, target, registry, options, interrupt);
    return {
      ...pulled,
      agents: pulled.agents.map((a, i) => ({ ...a, name: `mirror-${i}` })),
      seed: undefined,
    };
  } finally {
    await teardown.run();
  }
}

/** Prints the report: both phases' tables, then the swarm's figures against the baseline's. */
function report(
  options: Options,
  target: PullTarget,
  imageRef: string,
  swarm: PhaseFigures,
  baseline: PhaseFigures,
  direct: PhaseFigures,
): string {
  const imageBytes = target.blobs.reduce((sum, b) => sum + b.size, 0);
  const rateText =
    options.seedRateBytes === 0
      ? 'unlimited'
      : `${(options.seedRateBytes * 8) / 1_000_000} Mbit/s (${mib(options.seedRateBytes)}/s)`;
  const out: string[] = [];
  out.push(
    `Shoal swarm benchmark: ${options.agents} agents, client ${options.client}, seed upload ${rateText}`,
    `image   ${imageRef}`,
    `        ${target.blobs.length - 1} layers + config = ${mib(imageBytes)} of blobs ` +
      `(layers ${options.layerSizes.map((s) => s / MiB).join(', ')} MiB; manifest ${target.manifest.size} B)`,
    '',
  );

  const swarmRows = swarm.agents.map((a) => [
    a.name,
    mib(a.origin),
    mib(a.seed),
    mib(a.peer),
    mib(a.uploaded),
    a.error === undefined ? seconds(a.seconds) : 'FAILED',
    mib(a.peakRss),
    cpuText(a.cpuSeconds),
  ]);
  const sum = (pick: (a: AgentFigures) => number): number =>
    swarm.agents.reduce((total, a) => total + pick(a), 0);
  const fetchedTotal = sum((a) => a.origin + a.seed + a.peer);
  out.push(
    `Swarm: tracker + seed server + ${options.agents} agents, all pulling at once`,
    table(
      ['agent', 'origin', 'seed', 'peer', 'uploaded', 'time', 'peak RSS', 'CPU'],
      [
        ...swarmRows,
        null,
        [
          'total',
          mib(sum((a) => a.origin)),
          mib(sum((a) => a.seed)),
          mib(sum((a) => a.peer)),
          mib(sum((a) => a.uploaded)),
          seconds(Math.max(...swarm.agents.map((a) => a.seconds))),
          mib(Math.max(...swarm.agents.map((a) => a.peakRss))),
          cpuText(sum((a) => a.cpuSeconds)),
        ],
        [
          'share',
          percent(
            sum((a) => a.origin),
            fetchedTotal,
          ),
          percent(
            sum((a) => a.seed),
            fetchedTotal,
          ),
          percent(
            sum((a) => a.peer),
            fetchedTotal,
          ),
          '',
          '',
          '',
          '',
        ],
      ],
    ),
    `(total time: the slowest agent; total peak RSS: the largest; CPU: during the pulls, from /proc)`,
    '',
  );

  out.push(
    `Baseline: the same ${options.agents} agents without the swarm, each a mirror of the origin`,
    table(
      ['agent', 'origin', 'time', 'peak RSS', 'CPU'],
      baseline.agents.map((a) => [
        a.name,
        mib(a.origin),
        a.error === undefined ? seconds(a.seconds) : 'FAILED',
        mib(a.peakRss),
        cpuText(a.cpuSeconds),
      ]),
    ),
    '',
    `Direct: ${options.agents} ${options.client} clients straight from the registry, no agent`,
    table(
      ['client', 'time'],
      direct.agents.map((a) => [a.name, a.error === undefined ? seconds(a.seconds) : 'FAILED']),
    ),
    '',
  );

  const meanTime = (p: PhaseFigures): number => mean(p.agents.map((a) => a.seconds));
  const maxTime = (p: PhaseFigures): number => Math.max(...p.agents.map((a) => a.seconds));
  const meanRss = (p: PhaseFigures): number => mean(p.agents.map((a) => a.peakRss));
  const originRatio = (p: PhaseFigures): number => p.originBytes / imageBytes;
  const delivered = imageBytes * options.agents;
  const agentCpuPerGiB = (p: PhaseFigures): number =>
    p.agents.reduce((total, a) => total + a.cpuSeconds, 0) / (delivered / GiB);
  const clientCpuPerGiB = (p: PhaseFigures): number => p.clientCpuSeconds / (delivered / GiB);
  const registryCpuPerGiB = (p: PhaseFigures): number =>
    p.registryCpuSeconds / (p.originWritten / GiB);
  const writtenRatio = (p: PhaseFigures): number => p.originWritten / imageBytes;
  /** One row comparing a figure of the phases, with swarm ÷ baseline and swarm ÷ direct. */
  const compare = (
    label: string,
    figure: (p: PhaseFigures) => number,
    format: (value: number) => string,
    withDirect = true,
  ): string[] => [
    label,
    format(figure(swarm)),
    format(figure(baseline)),
    withDirect ? format(figure(direct)) : '',
    ratio(figure(swarm) / figure(baseline)),
    withDirect ? ratio(figure(swarm) / figure(direct)) : '',
  ];
  out.push(
    table(
      ['', 'swarm', 'baseline', 'direct', 'swarm / baseline', 'swarm / direct'],
      [
        [
          'registry blob GETs',
          String(swarm.blobGets),
          String(baseline.blobGets),
          String(direct.blobGets),
          '',
          '',
        ],
        compare('origin bytes / image size', originRatio, ratio),
        compare('registry bytes written / image size', writtenRatio, ratio),
        compare('mean time per node', meanTime, seconds),
        compare('time until every node is done', maxTime, seconds),
        compare('mean agent peak RSS', meanRss, mib, false),
        compare("agents' CPU s / GiB delivered", agentCpuPerGiB, cpuText, false),
        compare('registry CPU s / GiB it wrote', registryCpuPerGiB, cpuText),
        compare("clients' CPU s / GiB delivered", clientCpuPerGiB, cpuText),
      ],
    ),
    '(baseline: the agents as plain mirrors of the origin; direct: the clients with no agent)',
    '',
    `bytes the agents fetched from peers: ${percent(
      sum((a) => a.peer),
      fetchedTotal,
    )} ` + `(${mib(sum((a) => a.peer))} of ${mib(fetchedTotal)})`,
  );
  if (swarm.seed !== undefined) {
    const { ingested, served, cpuSeconds } = swarm.seed;
    out.push(
      `seed server: read ${mib(ingested)} from the origin, served ${mib(served)} to agents; ` +
        `${cpuText(cpuSeconds)} CPU s, ${cpuText(cpuSeconds / ((ingested + served) / GiB))} per GiB ingested + served`,
      `agents: ${cpuText(sum((a) => a.cpuSeconds) / (sum((a) => a.uploaded + a.origin + a.seed + a.peer) / GiB))} ` +
        `CPU s per GiB received + uploaded (swarm)`,
    );
  }
  const failures = [...swarm.agents, ...baseline.agents, ...direct.agents].filter(
    (a) => a.error !== undefined,
  );
  for (const a of failures) {
    out.push(`FAILED ${a.name}: ${a.error ?? ''}`);
  }
  return `${out.join('\n')}\n`;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();

  const teardown = newTeardown();
  try {
    const { nats, registry, layout } = await startBase(teardown, 'bench-image');
    progress(`generating and pushing a ${options.layerSizes.length}-layer image`);
    const { ref: imageRef, target } = await pushTarget(
      layout.path,
      registry,
      REPOSITORY,
      `bench-${Date.now()}`,
      options.layerSizes,
    );
    interrupt.signal.throwIfAborted();

    const swarm = await swarmPhase(nats.url, registry, target, options, interrupt.signal);
    interrupt.signal.throwIfAborted();
    const baseline = await baselinePhase(registry, target, options, interrupt.signal);
    interrupt.signal.throwIfAborted();
    const direct = await directPhase(registry, target, options, interrupt.signal);
    process.stdout.write(report(options, target, imageRef, swarm, baseline, direct));
    return [...swarm.agents, ...baseline.agents, ...direct.agents].some(
      (a) => a.error !== undefined,
    )
      ? 1
      : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
