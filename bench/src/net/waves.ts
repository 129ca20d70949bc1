/**
 * The shaped-network bench's waves: every node of the lab pulls one image with `ctr images
 * pull` at the same moment (late nodes a set time after), straight from the registry, through
 * a pull-through cache, or through Shoal. Each wave starts cold: a fresh containerd per node,
 * and for the cache and Shoal a fresh cache, seed server and agents.
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';

import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { encodeMessage, seedRequest, seedRequestSubject, type SeedRequest } from '@shoal/proto';
import {
  mib,
  readProcCost,
  scrapeMetrics,
  startAgent,
  startContainerd,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  waitFor,
  writeMirrorHosts,
  type AgentProcess,
  type Containerd,
  type LabHost,
  type Registry,
  type RunningProcess,
  type ServiceProcess,
  type Teardown,
} from '@shoal/testkit';

import { newTeardown, progress } from '../cli.js';
import { readHistogram, type HistogramFigures } from '../histogram.js';
import { WaveSampler, type Sample } from './sampler.js';

/** Which agents a Shoal wave runs, beyond the settings every Shoal process gets. */
export interface ShoalAgentChoice {
  /** The root of another checkout built with `tsc -b`, whose agent runs instead of this one's. */
  readonly buildRoot?: string | undefined;
  /** The seed server of `buildRoot` too (default: this checkout's seed server). */
  readonly seedToo?: boolean;
  /** More environment for the agents only (a CPU-profile preload). */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * The blobs the seed server takes in from the registry before the nodes pull (a preheated
   * seed: the nodes' pulls then measure the swarm alone, not the seed's intake).
   */
  readonly warmSeed?: WarmSeed;
}

/** What a preheated seed server holds before the pulls: the image's blobs (`shoalWave`). */
export interface WarmSeed {
  readonly repository: string;
  readonly blobs: readonly { readonly digest: string; readonly size: number }[];
}

/** A node of the lab and when it starts pulling. */
export interface LabNode {
  readonly host: LabHost;
  /** Seconds after the wave's start at which this node starts its pull. */
  readonly startAfterS: number;
}

/** One node's pull. */
export interface NodePull {
  readonly name: string;
  /** From this node's own start to its pull's end, in seconds. */
  readonly seconds: number;
  /** From the wave's start to this node's pull's end, in seconds. */
  readonly doneAtS: number;
  readonly error: string | undefined;
}

/** What a wave's caller gives every wave. */
export interface WaveContext {
  readonly nodes: readonly LabNode[];
  readonly registry: Registry;
  /** `host:port/repository:tag` of the image, as the nodes name it. */
  readonly ref: string;
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
}

/** Shoal's cost in a wave: CPU seconds by role, and what the swarm moved. */
export interface SwarmFigures {
  readonly cpuSeconds: Readonly<Record<'agents' | 'seed' | 'tracker' | 'nats', number>>;
  /** Bytes the agents fetched, by source, and uploaded to peers. */
  readonly fetched: Readonly<Record<'origin' | 'seed' | 'peer', number>>;
  readonly uploaded: number;
  /** Bytes the seed server served to agents. */
  readonly seedServed: number;
  /** Piece requests that failed (timeouts, errors), and those the seed turned away. */
  readonly piecesFailed: number;
  readonly piecesRationed: number;
  /**
   * Piece requests the agents answered 429 for want of an upload slot, by reason (`busy`:
   * every slot taken; `peer-busy`: the asker's own slots taken).
   */
  readonly peerRefusals: Readonly<Record<'busy' | 'peer-busy', number>>;
  /**
   * Downloads that read the rest from the origin, by reason (`stall`: nothing from the swarm
   * for the stall timeout; `seed-failed`: the seed gave the blob up).
   */
  readonly fallbacks: Readonly<Record<'stall' | 'seed-failed', number>>;
  /** The seed server's piece requests by result (served, rationed, aborted, busy, ...). */
  readonly seedRequests: Readonly<Record<string, number>>;
  /**
   * Pieces the seed sent although its fan-out had counted enough copies of them, by the
   * exemption that let them through (`shoal_seedserver_ration_exemptions_total`).
   */
  readonly seedExemptions: Readonly<Record<string, number>>;
  /** Pieces the seed served that were cut off before the agent had them whole. */
  readonly seedCut: number;
  /**
   * Intake notices the seed sent (bytes came in, no piece landed since its last look), those
   * it sent while waiting for a blob's first byte, and those the agents heard
   * (`shoal_seedserver_intake_notices_total{while}`, the agents' seed-intake events).
   */
  readonly intakeNotices: {
    readonly sent: number;
    readonly waiting: number;
    readonly heard: number;
  };
  /** Bytes out of the control namespace's link (the seed's pieces, NATS, the tracker). */
  readonly controlLinkBytes: number;
  /**
   * Bytes into it: the registry's answers to the seed, and what the nodes send NATS and the
   * seed (their messages, the acknowledgements of what they receive).
   */
  readonly controlLinkInBytes: number;
  /**
   * How long the agents' pieces took from request to verified, by source
   * (`shoal_agent_piece_fetch_seconds`, summed over the agents).
   */
  readonly pieceSeconds: Readonly<Record<'seed' | 'peer', HistogramFigures>>;
  /** The counters read every second during the pulls, per node in the wave's order. */
  readonly samples: readonly Sample[];
}

/**
 * The upper bounds of the agent's `shoal_agent_piece_fetch_seconds`, in s, as it builds them
 * (`PIECE_SECONDS_BUCKETS` in services/agent/src/metrics.ts; a bound an agent does not report
 * reads as nothing within it, so quantiles err high).
 */
const PIECE_SECONDS_BOUNDS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
] as const;

const PIECE_SECONDS = 'shoal_agent_piece_fetch_seconds';

/** The seed's ration exemptions (its `ExemptReason`), as its metric labels them. */
const RATION_EXEMPTIONS = ['asked-again', 'not-from', 'unheard', 'starved'] as const;

export interface WaveResult {
  readonly pulls: readonly NodePull[];
  /** Bytes of blobs the origin registry wrote during the wave, by its own log. */
  readonly registryBytes: number;
  /** Bytes the registry's link carried out during the wave (with TCP/IP overhead). */
  readonly registryLinkBytes: number;
  readonly swarm: SwarmFigures | undefined;
}

/** containerd on every node, each torn down by `teardown`; `hosts` writes its hosts.toml. */
async function startContainerds(
  nodes: readonly LabNode[],
  teardown: Teardown,
): Promise<Containerd[]> {
  return Promise.all(
    nodes.map(async (node) => {
      const containerd = await startContainerd({ netns: node.host.netns });
      teardown.add(`containerd on ${node.host.name}`, () => containerd.stop());
      return containerd;
    }),
  );
}

/** Every node pulls `ref` (late ones later); the registry's figures around the pulls. */
async function pullEverywhere(
  context: WaveContext,
  containerds: readonly Containerd[],
  registryHost: LabHost,
): Promise<Omit<WaveResult, 'swarm'>> {
  const { nodes, registry, ref, timeoutMs } = context;
  const before = (await registry.blobGets()).length;
  const linkBefore = await registryHost.counters();
  const started = performance.now();
  const pulls = await Promise.all(
    nodes.map(async (node, index): Promise<NodePull> => {
      const containerd = containerds[index];
      if (node.startAfterS > 0) {
        await new Promise((resolve) => setTimeout(resolve, node.startAfterS * 1000));
      }
      const own = performance.now();
      let error: string | undefined;
      try {
        context.signal.throwIfAborted();
        if (containerd === undefined) {
          throw new Error('no containerd');
        }
        await containerd.pull(ref, { timeoutMs, signal: context.signal });
      } catch (caught) {
        // ctr's own complaint is the last line of the error's output.
        const lines = (caught instanceof Error ? caught.message : String(caught))
          .split('\n')
          .filter((line) => line.trim() !== '');
        error = lines.at(-1) ?? 'failed';
      }
      const end = performance.now();
      return {
        name: node.host.name,
        seconds: (end - own) / 1000,
        doneAtS: (end - started) / 1000,
        error,
      };
    }),
  );
  const gets = (await registry.blobGets()).slice(before);
  const linkAfter = await registryHost.counters();
  return {
    pulls,
    registryBytes: gets.reduce((sum, get) => sum + get.written, 0),
    registryLinkBytes: linkAfter.tx - linkBefore.tx,
  };
}

/** (a) Every node pulls straight from the registry. */
export async function directWave(context: WaveContext, registryHost: LabHost): Promise<WaveResult> {
  const teardown = newTeardown();
  try {
    const containerds = await startContainerds(context.nodes, teardown);
    // The registry as its own only host: containerd 1.6 ignores `server`'s http scheme when a
    // hosts.toml has no host table.
    const { host, url } = context.registry;
    await Promise.all(containerds.map((c) => writeMirrorHosts(c.hostsDir, host, url, url)));
    progress(`direct: ${context.nodes.length} nodes pulling from the registry`);
    return { ...(await pullEverywhere(context, containerds, registryHost)), swarm: undefined };
  } finally {
    await teardown.run();
  }
}

/** (b) Every node pulls through a pull-through cache (distribution in proxy mode). */
export async function cacheWave(
  context: WaveContext,
  registryHost: LabHost,
  cacheHost: LabHost,
): Promise<WaveResult> {
  const teardown = newTeardown();
  try {
    const cache = await startRegistry({
      netns: cacheHost.netns,
      host: cacheHost.address,
      proxyRemoteUrl: context.registry.url,
    });
    teardown.add('pull-through cache', () => cache.stop());
    const containerds = await startContainerds(context.nodes, teardown);
    await Promise.all(
      containerds.map((c) =>
        writeMirrorHosts(c.hostsDir, context.registry.host, context.registry.url, cache.url),
      ),
    );
    progress(`cache: ${context.nodes.length} nodes pulling through ${cache.url}`);
    return { ...(await pullEverywhere(context, containerds, registryHost)), swarm: undefined };
  } finally {
    await teardown.run();
  }
}

/** CPU seconds every process in `processes` has used so far. */
async function cpuOf(processes: readonly RunningProcess[]): Promise<number> {
  let total = 0;
  for (const proc of processes) {
    if (proc.child.pid !== undefined) {
      total += (await readProcCost(proc.child.pid)).cpuSeconds;
    }
  }
  return total;
}

/** Longest a preheated seed may take to hold the image, in ms (a 25 Mbit/s link: 86 s per 256 MiB). */
const WARM_SEED_TIMEOUT_MS = 600_000;

/**
 * Has the seed server take `warm`'s blobs in from the registry, as a preheat does (one
 * seed-request each, on the seed server's JetStream subject), and waits until it has taken in
 * every byte of them (`shoal_seedserver_ingested_bytes_total`).
 */
async function warmSeed(
  natsUrl: string,
  seed: ServiceProcess,
  context: WaveContext,
  warm: WarmSeed,
): Promise<void> {
  const nc = await connect({ servers: natsUrl, name: 'shoal-bench-warm-seed' });
  try {
    const js = jetstream(nc, { timeout: 10_000 });
    for (const blob of warm.blobs) {
      const request: SeedRequest = {
        type: 'seed-request',
        blob: blob.digest,
        registry: context.registry.host,
        repository: warm.repository,
        reason: { kind: 'want' },
      };
      await js.publish(seedRequestSubject(blob.digest), encodeMessage(seedRequest, request), {
        msgID: blob.digest,
      });
    }
  } finally {
    await nc.close();
  }
  const bytes = warm.blobs.reduce((sum, blob) => sum + blob.size, 0);
  progress(`shoal: the seed server is taking the image in (${mib(bytes)}) before the pulls`);
  const started = performance.now();
  await waitFor(
    'the seed server to hold the image',
    // Interrupted: no longer waited for (the wave throws before its pulls).
    async () =>
      context.signal.aborted ||
      (await scrapeMetrics(seed.url)).get('shoal_seedserver_ingested_bytes_total') >= bytes,
    { timeoutMs: WARM_SEED_TIMEOUT_MS, intervalMs: 500, process: seed.process },
  );
  const seconds = (performance.now() - started) / 1000;
  progress(
    `shoal: the seed server held the image after ${seconds.toFixed(1)} s (${(bytes / 1e6 / seconds).toFixed(2)} MB/s)`,
  );
}

/**
 * (c) Every node pulls through its Shoal agent: NATS, a tracker and the seed server in the
 * control namespace, an agent per node on the node's own address, writing containerd's
 * hosts.toml itself. `env` goes to the agents and the seed server.
 */
export async function shoalWave(
  context: WaveContext,
  registryHost: LabHost,
  controlHost: LabHost,
  env: Readonly<Record<string, string>>,
  choice?: ShoalAgentChoice,
): Promise<WaveResult> {
  const teardown = newTeardown();
  const placed = { netns: controlHost.netns, host: controlHost.address };
  try {
    const registries = `${context.registry.host}=${context.registry.url}`;
    const nats = await startNats(placed);
    teardown.add('nats-server', () => nats.stop());
    const tracker = await startTracker({ natsUrl: nats.url, ...placed });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      env: { ...env },
      ...placed,
      ...(choice?.buildRoot !== undefined && choice.seedToo === true
        ? { buildRoot: choice.buildRoot }
        : {}),
    });
    teardown.add('seed server', () => seed.stop());
    if (choice?.warmSeed !== undefined) {
      await warmSeed(nats.url, seed, context, choice.warmSeed);
      context.signal.throwIfAborted();
    }
    const containerds = await startContainerds(context.nodes, teardown);
    const agents: AgentProcess[] = await Promise.all(
      context.nodes.map(async (node, index) => {
        const agent = await startAgent({
          registries,
          natsUrl: nats.url,
          peerId: node.host.name,
          netns: node.host.netns,
          host: node.host.address,
          env: {
            SHOAL_AGENT_HOSTS_DIR: containerds[index]?.hostsDir ?? '',
            ...env,
            ...choice?.env,
          },
          ...(choice?.buildRoot === undefined ? {} : { buildRoot: choice.buildRoot }),
        });
        teardown.add(`agent on ${node.host.name}`, () => agent.stop());
        return agent;
      }),
    );
    // The agents write containerd's hosts.toml once they listen; pull only after they have.
    await Promise.all(
      containerds.map((c) =>
        waitFor('the agent to write hosts.toml', async () => {
          await access(join(c.hostsDir, context.registry.host, 'hosts.toml'));
          return true;
        }),
      ),
    );
    context.signal.throwIfAborted();
    const roles = {
      agents: agents.map((a) => a.process),
      seed: [seed.process],
      tracker: [tracker.process],
      nats: [nats.process],
    };
    const cpuBefore = await Promise.all(Object.values(roles).map(cpuOf));
    progress(`shoal: ${agents.length} agents, a tracker and a seed server are up; pulling`);
    const sampler = new WaveSampler(
      agents.map((a, i) => ({ name: context.nodes[i]?.host.name ?? String(i), url: a.url })),
      seed.url,
    );
    await sampler.start();
    const controlBefore = await controlHost.counters();
    const pulled = await pullEverywhere(context, containerds, registryHost);
    const samples = await sampler.stop();
    const controlAfter = await controlHost.counters();
    const cpuAfter = await Promise.all(Object.values(roles).map(cpuOf));
    const cpu = (i: number): number => (cpuAfter[i] ?? 0) - (cpuBefore[i] ?? 0);

    const scraped = await Promise.all(agents.map((a) => scrapeMetrics(a.url)));
    const sum = (name: string, labels: Record<string, string> = {}): number =>
      scraped.reduce((total, m) => total + m.get(name, labels), 0);
    const fetched = (source: string): number => sum('shoal_agent_fetched_bytes_total', { source });
    const seedMetrics = await scrapeMetrics(seed.url);
    return {
      ...pulled,
      swarm: {
        cpuSeconds: { agents: cpu(0), seed: cpu(1), tracker: cpu(2), nats: cpu(3) },
        fetched: { origin: fetched('origin'), seed: fetched('seed'), peer: fetched('peer') },
        uploaded: sum('shoal_agent_uploaded_bytes_total'),
        seedServed: seedMetrics.get('shoal_seedserver_served_bytes_total'),
        piecesFailed: sum('shoal_agent_pieces_total', { result: 'failed' }),
        piecesRationed: sum('shoal_agent_pieces_total', { result: 'deferred' }),
        peerRefusals: {
          busy: sum('shoal_agent_uploads_refused_total', { reason: 'busy' }),
          'peer-busy': sum('shoal_agent_uploads_refused_total', { reason: 'peer-busy' }),
        },
        fallbacks: {
          stall: sum('shoal_agent_swarm_fallbacks_total', { reason: 'stall' }),
          'seed-failed': sum('shoal_agent_swarm_fallbacks_total', { reason: 'seed-failed' }),
        },
        seedRequests: Object.fromEntries(
          ['served', 'rationed', 'aborted', 'busy', 'missing'].map((result) => [
            result,
            seedMetrics.get('shoal_seedserver_piece_requests_total', { result }),
          ]),
        ),
        seedExemptions: Object.fromEntries(
          RATION_EXEMPTIONS.map((reason) => [
            reason,
            seedMetrics.get('shoal_seedserver_ration_exemptions_total', { reason }),
          ]),
        ),
        seedCut: seedMetrics.get('shoal_seedserver_pieces_cut_total'),
        intakeNotices: {
          // All less those of a wait: a seed of before the label counts notices of bytes only.
          sent:
            seedMetrics.get('shoal_seedserver_intake_notices_total') -
            seedMetrics.get('shoal_seedserver_intake_notices_total', { while: 'waiting' }),
          waiting: seedMetrics.get('shoal_seedserver_intake_notices_total', { while: 'waiting' }),
          heard: sum('shoal_agent_events_received_total', { type: 'seed-intake' }),
        },
        controlLinkBytes: controlAfter.tx - controlBefore.tx,
        controlLinkInBytes: controlAfter.rx - controlBefore.rx,
        pieceSeconds: {
          seed: readHistogram(scraped, PIECE_SECONDS, { source: 'seed' }, PIECE_SECONDS_BOUNDS),
          peer: readHistogram(scraped, PIECE_SECONDS, { source: 'peer' }, PIECE_SECONDS_BOUNDS),
        },
        samples,
      },
    };
  } finally {
    await teardown.run();
  }
}
