#!/usr/bin/env node
/**
 * The preheat benchmark: what a `nodes` preheat buys at rollout time. One cluster (nats-server,
 * a tracker, a seed server, a watcher and N agents in the swarm) and two images of the same
 * sizes. The first is rolled out cold: every agent pulls it at once with nothing preheated. The
 * second is preheated to every node through the watcher's API, then rolled out the same way.
 * Prints both rollouts, the preheat, and the preheated rollout's figures as ratios of the cold
 * one's.
 *
 *   node bench/dist/src/preheat.js [--agents 4] [--layers 128,16] [--timeout-s 600]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails or does not verify,
 * or when the preheat does not finish on every node.
 */
import { availableParallelism } from 'node:os';

import {
  FAST_SWARM_ENV,
  makeTempDir,
  mib,
  ratio,
  scrapeMetrics,
  seconds,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  table,
  waitFor,
  type AgentProcess,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import {
  commonOptions,
  exitOnProblems,
  interruptOnSignal,
  mean,
  newTeardown,
  progress,
  readOptions,
  runBench,
} from './cli.js';
import { pushTarget, startAgents } from './cluster.js';
import { prepareClient, type PullTarget } from './clients.js';
import { watcherApi, type JobStatus } from './watcher-api.js';

const MiB = 1024 * 1024;
const COLD_REPOSITORY = 'bench/cold';
const PREHEATED_REPOSITORY = 'bench/preheated';

/** How often the preheat job's status is read while waiting for it, in ms. */
const JOB_POLL_MS = 100;

const USAGE = `usage: node bench/dist/src/preheat.js [--agents N] [--layers MiB,MiB,...] [--timeout-s S]

  --agents N      agents in the cluster, all pulling at once (default 4)
  --layers LIST   layer sizes of each generated image, in MiB (default 128,16)
  --timeout-s S   longest a rollout or the preheat may take (default 600)
`;

interface Options {
  readonly agents: number;
  readonly layerSizes: readonly number[];
  readonly timeoutMs: number;
}

/** Parses the command line; every problem is printed at once, with the usage, and exits 2. */
function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '4' },
    layers: { type: 'string', default: '128,16' },
    'timeout-s': { type: 'string', default: '600' },
  });
  const problems: string[] = [];
  const options = commonOptions(values, problems);
  exitOnProblems(problems, USAGE);
  return options;
}

/** Bytes an agent received, by source (`shoal_agent_fetched_bytes_total{source}`). */
interface Sources {
  readonly origin: number;
  readonly seed: number;
  readonly peer: number;
}

/** An agent's counters at one moment, to subtract one reading from a later one. */
interface AgentCounters extends Sources {
  /** `shoal_agent_cache_requests_total{result="hit"}`: blob requests served from its cache. */
  readonly hits: number;
}

async function readCounters(agent: AgentProcess): Promise<AgentCounters> {
  const metrics = await scrapeMetrics(agent.url);
  const fetched = (source: string): number =>
    metrics.get('shoal_agent_fetched_bytes_total', { source });
  return {
    origin: fetched('origin'),
    seed: fetched('seed'),
    peer: fetched('peer'),
    hits: metrics.get('shoal_agent_cache_requests_total', { result: 'hit' }),
  };
}

function since(after: AgentCounters, before: AgentCounters): AgentCounters {
  return {
    origin: after.origin - before.origin,
    seed: after.seed - before.seed,
    peer: after.peer - before.peer,
    hits: after.hits - before.hits,
  };
}

async function readAll(agents: readonly AgentProcess[]): Promise<AgentCounters[]> {
  return Promise.all(agents.map(readCounters));
}

const ZERO: AgentCounters = { origin: 0, seed: 0, peer: 0, hits: 0 };

function total(counters: readonly AgentCounters[]): AgentCounters {
  return counters.reduce(
    (sum, c) => ({
      origin: sum.origin + c.origin,
      seed: sum.seed + c.seed,
      peer: sum.peer + c.peer,
      hits: sum.hits + c.hits,
    }),
    ZERO,
  );
}

/** One agent's figures for one rollout: counter deltas over the rollout, and its time. */
interface AgentRollout extends AgentCounters {
  readonly name: string;
  /** From the common start to this agent's last verified byte, in seconds. */
  readonly seconds: number;
  readonly error: string | undefined;
}

interface Rollout {
  readonly agents: readonly AgentRollout[];
  /** Successful blob GETs the registry served during the rollout. */
  readonly blobGets: number;
}

/** Every agent pulls `target` at the same moment, streaming each blob and checking its digest. */
async function rollout(
  agents: readonly AgentProcess[],
  target: PullTarget,
  registry: Registry,
  options: Options,
  interrupt: AbortSignal,
): Promise<Rollout> {
  const clients = await Promise.all(
    agents.map((agent) => prepareClient('http', agent.url, target, options.timeoutMs)),
  );
  const before = await readAll(agents);
  const getsBefore = (await registry.blobGets()).length;
  const signal = AbortSignal.any([interrupt, AbortSignal.timeout(options.timeoutMs)]);
  const started = performance.now();
  const outcomes = await Promise.all(
    clients.map(async (client) => {
      let error: string | undefined;
      try {
        await client.pull(signal);
      } catch (caught) {
        error = caught instanceof Error ? caught.message.split('\n')[0] : String(caught);
      }
      return { seconds: (performance.now() - started) / 1000, error };
    }),
  );
  const after = await readAll(agents);
  const gets = (await registry.blobGets()).length - getsBefore;
  return {
    agents: agents.map((agent, i) => {
      const outcome = outcomes[i] ?? { seconds: Number.NaN, error: 'no outcome' };
      return {
        name: agent.peerId ?? `agent-${i}`,
        ...since(after[i] ?? ZERO, before[i] ?? ZERO),
        seconds: outcome.seconds,
        error: outcome.error,
      };
    }),
    blobGets: gets,
  };
}

interface Preheat {
  readonly job: JobStatus;
  /** From the POST to the first status read that says the job finished, in seconds. */
  readonly seconds: number;
  /** Successful blob GETs the registry served during the preheat. */
  readonly blobGets: number;
  /** What the agents fetched during the preheat, summed over agents. */
  readonly fetched: AgentCounters;
}

/** Asks the watcher to preheat `image` on every node and waits until the job finishes. */
async function preheat(
  watcher: ServiceProcess,
  image: string,
  agents: readonly AgentProcess[],
  registry: Registry,
  options: Options,
  interrupt: AbortSignal,
): Promise<Preheat> {
  const before = await readAll(agents);
  const getsBefore = (await registry.blobGets()).length;
  const started = performance.now();
  const submitted = await watcherApi(watcher, '/preheat', {
    method: 'POST',
    body: { image, scope: 'nodes' },
  });
  let job = submitted;
  await waitFor(
    `preheat job ${submitted.id} to finish`,
    async () => {
      interrupt.throwIfAborted();
      job = await watcherApi(watcher, `/preheat/${encodeURIComponent(submitted.id)}`, {
        method: 'GET',
      });
      return job.state === 'done' || job.state === 'failed';
    },
    { timeoutMs: options.timeoutMs, intervalMs: JOB_POLL_MS },
  );
  const elapsed = (performance.now() - started) / 1000;
  interrupt.throwIfAborted();
  const after = await readAll(agents);
  return {
    job,
    seconds: elapsed,
    blobGets: (await registry.blobGets()).length - getsBefore,
    fetched: total(agents.map((_, i) => since(after[i] ?? ZERO, before[i] ?? ZERO))),
  };
}

function rolloutTable(figures: Rollout): string {
  const sum = total(figures.agents);
  return table(
    ['agent', 'origin', 'seed', 'peer', 'cache hits', 'time'],
    [
      ...figures.agents.map((a) => [
        a.name,
        mib(a.origin),
        mib(a.seed),
        mib(a.peer),
        String(a.hits),
        a.error === undefined ? seconds(a.seconds) : 'FAILED',
      ]),
      null,
      [
        'total',
        mib(sum.origin),
        mib(sum.seed),
        mib(sum.peer),
        String(sum.hits),
        seconds(Math.max(...figures.agents.map((a) => a.seconds))),
      ],
    ],
  );
}

/** The report: both rollouts, the preheat, and the preheated rollout against the cold one. */
function report(
  options: Options,
  blobCount: number,
  imageBytes: number,
  cold: Rollout,
  heat: Preheat,
  warm: Rollout,
): string {
  const out: string[] = [];
  out.push(
    `Shoal preheat benchmark: ${options.agents} agents, a tracker, a seed server and a watcher`,
    `images  two of ${blobCount - 1} layers + config = ${mib(imageBytes)} of blobs each ` +
      `(layers ${options.layerSizes.map((s) => s / MiB).join(', ')} MiB), different content`,
    `This runs on one machine (loopback, ${availableParallelism()} cores shared by every process): ` +
      'the times are relative, to compare within this run, not with a cluster.',
    '',
    `Cold rollout: image 1, nothing preheated, ${options.agents} agents pulling at once`,
    rolloutTable(cold),
    '(bytes and cache hits during the rollout; total time: the slowest agent)',
    '',
  );

  const { job } = heat;
  out.push(
    `Preheat: image 2, POST /preheat {scope: "nodes"} to the watcher, until GET /preheat/<id> says done`,
    table(
      ['job', 'state', 'blobs', 'nodes', 'registry blob GETs', 'duration'],
      [
        [
          job.id,
          job.state,
          `${job.blobsDone}/${job.blobsTotal}`,
          `${job.nodesDone ?? 0}/${job.nodesTotal ?? 0}`,
          String(heat.blobGets),
          seconds(heat.seconds),
        ],
      ],
    ),
    `agents fetched during the preheat: origin ${mib(heat.fetched.origin)}, ` +
      `seed ${mib(heat.fetched.seed)}, peers ${mib(heat.fetched.peer)}`,
    '',
    `Preheated rollout: image 2, ${options.agents} agents pulling at once`,
    rolloutTable(warm),
    '',
  );

  const maxTime = (r: Rollout): number => Math.max(...r.agents.map((a) => a.seconds));
  const meanTime = (r: Rollout): number => mean(r.agents.map((a) => a.seconds));
  const coldSum = total(cold.agents);
  const warmSum = total(warm.agents);
  out.push(
    table(
      ['at rollout time', 'cold', 'preheated', 'preheated / cold'],
      [
        [
          'time until every agent is done',
          seconds(maxTime(cold)),
          seconds(maxTime(warm)),
          ratio(maxTime(warm) / maxTime(cold)),
        ],
        [
          'mean time per agent',
          seconds(meanTime(cold)),
          seconds(meanTime(warm)),
          ratio(meanTime(warm) / meanTime(cold)),
        ],
        ['registry blob GETs', String(cold.blobGets), String(warm.blobGets), ''],
        ['bytes from the origin', mib(coldSum.origin), mib(warmSum.origin), ''],
        ['bytes from the seed server', mib(coldSum.seed), mib(warmSum.seed), ''],
        ['bytes from peers', mib(coldSum.peer), mib(warmSum.peer), ''],
        ['cache hits', String(coldSum.hits), String(warmSum.hits), ''],
      ],
    ),
    '',
    `preheat duration ${seconds(heat.seconds)} (before the rollout; ` +
      `${ratio(heat.seconds / maxTime(cold))}x the cold rollout)`,
  );
  if (job.state !== 'done' || job.nodesDone !== options.agents) {
    out.push(
      `PREHEAT INCOMPLETE: ${job.state}, nodes ${job.nodesDone ?? 0}/${job.nodesTotal ?? 0}` +
        (job.error === undefined ? '' : `: ${job.error}`),
    );
  }
  for (const a of [...cold.agents, ...warm.agents].filter((x) => x.error !== undefined)) {
    out.push(`FAILED ${a.name}: ${a.error ?? ''}`);
  }
  return `${out.join('\n')}\n`;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();

  const teardown = newTeardown();
  try {
    // The origin, without notifications: nothing is preheated unless the bench asks.
    const nats = await startNats();
    teardown.add('nats-server', () => nats.stop());
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const registries = `${registry.host}=${registry.url}`;

    // Two images of the same sizes and different content, both pushed before anything runs.
    const layouts = await makeTempDir('bench-preheat-images');
    teardown.add('image layouts', () => layouts.remove());
    progress(`generating and pushing two ${options.layerSizes.length}-layer images`);
    const run = Date.now();
    const cold = await pushTarget(
      layouts.path,
      registry,
      COLD_REPOSITORY,
      `cold-${run}`,
      options.layerSizes,
    );
    const warm = await pushTarget(
      layouts.path,
      registry,
      PREHEATED_REPOSITORY,
      `preheated-${run}`,
      options.layerSizes,
    );
    interrupt.signal.throwIfAborted();

    // The cluster: a tracker, a seed server, a watcher and the agents, on one NATS.
    const tracker = await startTracker({ natsUrl: nats.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: nats.url, registries });
    teardown.add('seed server', () => seed.stop());
    const watcher = await startWatcher({ natsUrl: nats.url, registries });
    teardown.add('watcher', () => watcher.stop());
    const agents = await startAgents(
      options.agents,
      (i) =>
        startAgent({
          registries,
          defaultRegistry: registry.host,
          natsUrl: nats.url,
          peerId: `agent-${i}`,
          env: FAST_SWARM_ENV,
        }),
      teardown,
    );
    interrupt.signal.throwIfAborted();

    progress(`cold: ${agents.length} agents pulling ${cold.ref}`);
    const coldRollout = await rollout(agents, cold.target, registry, options, interrupt.signal);
    interrupt.signal.throwIfAborted();
    progress(`preheat: ${warm.ref} on every node`);
    const heat = await preheat(watcher, warm.ref, agents, registry, options, interrupt.signal);
    progress(`preheated: ${agents.length} agents pulling ${warm.ref}`);
    const warmRollout = await rollout(agents, warm.target, registry, options, interrupt.signal);

    const imageBytes = warm.image.blobs.reduce((sum, b) => sum + b.size, 0);
    process.stdout.write(
      report(options, warm.image.blobs.length, imageBytes, coldRollout, heat, warmRollout),
    );
    const failed =
      [...coldRollout.agents, ...warmRollout.agents].some((a) => a.error !== undefined) ||
      heat.job.state !== 'done' ||
      heat.job.nodesDone !== options.agents;
    return failed ? 1 : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
