#!/usr/bin/env node
/**
 * Load and soak (issue 11, item 5), on one Shoal cluster (nats-server, two trackers, a seed
 * server, N agents with a small cache quota so that eviction runs):
 *
 * - load: every agent runs `--concurrency` pulls at once of a mix of images (each pull: every
 *   blob of one image, digests checked while streaming); counts errors and peak RSS;
 * - soak: for `--minutes`, rollouts one after another: a new image version (new layers) is
 *   pushed and every agent pulls it at once, as a Deployment's rollout would. The agents', the
 *   trackers' and the seed server's RSS and open file descriptors, and JetStream's storage
 *   against its limits, are read after the first rollouts and at the end: growth there is a
 *   leak.
 *
 *   node bench/dist/src/soak.js [--agents 16] [--concurrency 32] [--images 4] [--layers 4,1]
 *                               [--minutes 10] [--cache-mib 64] [--timeout-s 300]
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails.
 */
import { readdir, readFile } from 'node:fs/promises';

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  mib,
  startAgent,
  startSeedServer,
  startTracker,
  table,
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
                                 [--layers MiB,...] [--minutes M] [--cache-mib N] [--timeout-s S]

  --agents N        agents (default 16)
  --concurrency N   pulls at once per agent in the load phase (default 32)
  --images N        images in the load phase's mix (default 4)
  --layers LIST     layer sizes of every generated image, in MiB (default 4,1)
  --minutes M       length of the soak phase (default 10; 0: load only)
  --cache-mib N     each agent's cache quota, so that rollouts evict (default 64)
  --timeout-s S     longest one pull may take (default 300)
`;

interface Options {
  readonly agents: number;
  readonly concurrency: number;
  readonly images: number;
  readonly layerSizes: readonly number[];
  readonly minutes: number;
  readonly cacheBytes: number;
  readonly timeoutMs: number;
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    agents: { type: 'string', default: '16' },
    concurrency: { type: 'string', default: '32' },
    images: { type: 'string', default: '4' },
    layers: { type: 'string', default: '4,1' },
    minutes: { type: 'string', default: '10' },
    'cache-mib': { type: 'string', default: '64' },
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
  const cacheMib = whole('cache-mib', 1, 1_000_000);
  const minutes = Number(values.minutes);
  if (!Number.isFinite(minutes) || minutes < 0 || minutes > 24 * 60) {
    problems.push('--minutes takes a number of minutes from 0 to 1440');
  }
  exitOnProblems(problems, USAGE);
  return { ...common, concurrency, images, minutes, cacheBytes: cacheMib * MiB };
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
  /** V8's heap in use (live objects and garbage not yet collected), from its /metrics. */
  readonly heap: number;
  readonly fds: number;
}

async function processFigures(service: ServiceProcess): Promise<ProcessFigures> {
  const pid = String(service.process.child.pid);
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? Number.NaN) * 1024;
  const fds = (await readdir(`/proc/${pid}/fd`)).length;
  const heap = await service.metric('nodejs_heap_size_used_bytes');
  return { rss, heap, fds };
}

/** The figures of a group of processes: the largest RSS and file descriptor count. */
async function groupFigures(services: readonly ServiceProcess[]): Promise<ProcessFigures> {
  const all = await Promise.all(services.map(processFigures));
  return {
    rss: Math.max(...all.map((f) => f.rss)),
    heap: Math.max(...all.map((f) => f.heap)),
    fds: Math.max(...all.map((f) => f.fds)),
  };
}

/** Bytes JetStream holds, and their limits, summed over Shoal's streams. */
async function jetStreamUsage(natsUrl: string): Promise<{ bytes: number; limit: number }> {
  const nc = await connect({ servers: natsUrl, timeout: 5_000 });
  try {
    const jsm = await jetstreamManager(nc);
    let bytes = 0;
    let limit = 0;
    for await (const stream of jsm.streams.list()) {
      bytes += stream.state.bytes;
      limit += stream.config.max_bytes > 0 ? stream.config.max_bytes : 0;
    }
    return { bytes, limit };
  } finally {
    await nc.close();
  }
}

interface Snapshot {
  readonly label: string;
  readonly agents: ProcessFigures;
  readonly trackers: ProcessFigures;
  readonly seed: ProcessFigures;
  readonly jetStreamBytes: number;
  readonly jetStreamLimit: number;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  let failures = 0;
  try {
    const { nats, registry, layout } = await startBase(teardown, 'soak-image');
    const registries = `${registry.host}=${registry.url}`;
    const trackers: ServiceProcess[] = [];
    for (let i = 0; i < 2; i++) {
      const tracker = await startTracker({ natsUrl: nats.url });
      teardown.add(`tracker ${i}`, () => tracker.stop());
      trackers.push(tracker);
    }
    const seed = await startSeedServer({ natsUrl: nats.url, registries });
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
            SHOAL_AGENT_CACHE_MAX_BYTES: String(options.cacheBytes),
            SHOAL_LOG_LEVEL: 'warn',
          },
        }),
      teardown,
    );
    const snapshot = async (label: string): Promise<Snapshot> => {
      const usage = await jetStreamUsage(nats.url);
      return {
        label,
        agents: await groupFigures(agents),
        trackers: await groupFigures(trackers),
        seed: await processFigures(seed),
        jetStreamBytes: usage.bytes,
        jetStreamLimit: usage.limit,
      };
    };
    const push = async (name: string): Promise<PullTarget> =>
      (
        await pushTarget(
          layout.path,
          registry,
          `soak/${name}`,
          `soak-${name}-${Date.now()}`,
          options.layerSizes,
        )
      ).target;

    // Load: every agent pulls a mix of images, `concurrency` pulls at once.
    progress(
      `load: ${options.agents} agents x ${options.concurrency} pulls of ${options.images} images`,
    );
    const mix: PullTarget[] = [];
    for (let i = 0; i < options.images; i++) {
      mix.push(await push(`load-${i}`));
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
        `${options.layerSizes.map((s) => s / MiB).join(', ')} MiB layers; agent cache quota ${mib(options.cacheBytes)}`,
      '',
      `load: ${outcomes.length} pulls (${options.concurrency} at once per agent, ${options.images} images), ` +
        `${outcomes.length - loadErrors.length} ok, ${loadErrors.length} failed, in ${loadSeconds.toFixed(1)} s; ` +
        `largest agent peak RSS ${mib(peakRss)}`,
      ...[...new Set(loadErrors)].slice(0, 5).map((e) => `  failed: ${e}`),
    ];

    // Soak: rollouts one after another until the time is up.
    if (options.minutes > 0) {
      const soakStarted = Date.now();
      const until = soakStarted + options.minutes * 60_000;
      /** Quarters of the soak already recorded. */
      let quarters = 0;
      const snapshots: Snapshot[] = [];
      let rollouts = 0;
      let rolloutErrors = 0;
      while (Date.now() < until && !interrupt.signal.aborted) {
        const target = await push(`rollout-${rollouts}`);
        const errors = (
          await Promise.all(agents.map((a) => pullImage(a.url, target, options.timeoutMs)))
        ).filter((o) => o !== undefined);
        rolloutErrors += errors.length;
        rollouts += 1;
        // The first few rollouts warm everything up; growth is measured from there.
        if (rollouts === 3) {
          snapshots.push(await snapshot(`after rollout 3`));
        }
        const quarter = Math.floor(((Date.now() - soakStarted) / (until - soakStarted)) * 4);
        if (rollouts > 3 && quarter > quarters && quarter < 4) {
          quarters = quarter;
          snapshots.push(await snapshot(`after rollout ${rollouts}`));
        }
        if (rollouts % 10 === 0) {
          progress(`soak: ${rollouts} rollouts, ${rolloutErrors} failed pulls`);
        }
      }
      failures += rolloutErrors;
      snapshots.push(await snapshot(`after rollout ${rollouts}`));
      lines.push(
        '',
        `soak: ${options.minutes} min, ${rollouts} rollouts of a new image version to every agent, ` +
          `${rollouts * agents.length - rolloutErrors} pulls ok, ${rolloutErrors} failed`,
        table(
          [
            '',
            'agent RSS (max)',
            'agent heap',
            'agent fds (max)',
            'tracker RSS (max)',
            'tracker heap',
            'tracker fds',
            'seed RSS',
            'seed heap',
            'seed fds',
            'JetStream bytes / limits',
          ],
          snapshots.map((s) => [
            s.label,
            mib(s.agents.rss),
            mib(s.agents.heap),
            String(s.agents.fds),
            mib(s.trackers.rss),
            mib(s.trackers.heap),
            String(s.trackers.fds),
            mib(s.seed.rss),
            mib(s.seed.heap),
            String(s.seed.fds),
            `${mib(s.jetStreamBytes)} / ${mib(s.jetStreamLimit)}`,
          ]),
        ),
      );
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    return failures > 0 ? 1 : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
