#!/usr/bin/env node
/**
 * Shoal's whole swarm on one machine: nats-server, a tracker, a seed server with the
 * filesystem store, several agents, and a containerd per agent (a node each). Every containerd
 * pulls the same image through its agent at the same moment; the demo prints what each agent
 * got from its peers, the seed server and the origin, and how long each pull took.
 *
 *   node tools/local/dist/src/demo.js [--agents 3] [--layers 64,16,1] [--keep]
 *                                     [--registry URL --image REPO:TAG [--docker-config PATH]]
 *
 * By default the origin is a local registry holding a generated sample image, and the
 * registry's own log shows how often it served each blob. With --registry and --image the
 * agents mirror your registry instead, and origin bytes come from the services' own metrics.
 * It exits 1 when a pull fails or a digest does not verify.
 */
import {
  generateImage,
  makeTempDir,
  pushImage,
  scrapeMetrics,
  startAgent,
  startContainerd,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  table,
  Teardown,
  writeMirrorHosts,
  type AgentProcess,
  type Containerd,
  type Descriptor,
  type MetricsSnapshot,
  type Registry,
} from '@shoal/testkit';

import { credentialsFor } from './docker-config.js';
import { parseDemoOptions, type DemoOptions } from './options.js';

const MiB = 1024 * 1024;
const DEMO_REPOSITORY = 'shoal/demo';

const say = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

/** The image the agents pull and the registry it comes from. */
interface Origin {
  /** Name in image references and `ns=`. */
  readonly host: string;
  readonly url: string;
  readonly repository: string;
  /** `:tag` or `@sha256:...` */
  readonly reference: string;
  /** The local registry, when the demo runs one (registry-side counting). */
  readonly registry: Registry | undefined;
  /** What the pull must store, when the demo generated the image. */
  readonly expected: readonly Descriptor[] | undefined;
  /** `user:password` for containerd, from --docker-config. */
  readonly user: string | undefined;
  readonly dockerConfig: string | undefined;
}

/** A local registry holding a freshly generated image. */
async function localOrigin(options: DemoOptions, teardown: Teardown): Promise<Origin> {
  const registry = await startRegistry();
  teardown.add('registry', () => registry.stop());
  say(`registry     ${registry.url}  (Debian's docker-registry)`);
  const layout = await makeTempDir('demo-image');
  teardown.add('image layout', () => layout.remove());
  const image = await generateImage(layout.path, {
    layerSizes: options.layerSizes,
    seed: `demo-${Date.now()}`,
  });
  const ref = await pushImage(image, registry.host, DEMO_REPOSITORY);
  say(`image        ${ref}  (${image.layers.length} layers, ${mib(image.totalBytes)})`);
  return {
    host: registry.host,
    url: registry.url,
    repository: DEMO_REPOSITORY,
    reference: `:${image.tag}`,
    registry,
    expected: [image.manifest, ...image.blobs],
    user: undefined,
    dockerConfig: undefined,
  };
}

/** The user's registry and image (--registry, --image). */
async function ownOrigin(own: NonNullable<DemoOptions['own']>): Promise<Origin> {
  const user =
    own.dockerConfig === undefined ? undefined : await credentialsFor(own.dockerConfig, own.host);
  say(`registry     ${own.url}  (yours; named ${own.host} in image references)`);
  say(
    `image        ${own.host}/${own.repository}${own.reference}` +
      (own.dockerConfig === undefined
        ? ''
        : `  (credentials: ${own.dockerConfig}${user === undefined ? `, none for ${own.host}` : ''})`),
  );
  return {
    host: own.host,
    url: own.url,
    repository: own.repository,
    reference: own.reference,
    registry: undefined,
    expected: undefined,
    user,
    dockerConfig: own.dockerConfig,
  };
}

/** Starts `count` of something at once; registers a stop for each that started. */
async function startAll<T extends { stop(): Promise<void> }>(
  what: string,
  count: number,
  start: (index: number) => Promise<T>,
  teardown: Teardown,
): Promise<T[]> {
  const settled = await Promise.allSettled(Array.from({ length: count }, (_, i) => start(i)));
  const started: T[] = [];
  for (const [i, result] of settled.entries()) {
    if (result.status === 'fulfilled') {
      const value = result.value;
      started.push(value);
      teardown.add(`${what} ${i}`, () => value.stop());
    }
  }
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed !== undefined) {
    throw new Error(`a ${what} did not start: ${String(failed.reason)}`);
  }
  return started;
}

/** What one node's pull did. */
interface PullOutcome {
  /** From the common start to the end of `ctr images pull`, in seconds. */
  readonly seconds: number;
  readonly error: string | undefined;
}

/** Pulls `ref` on one containerd and checks that everything expected was stored. */
async function pullOne(
  containerd: Containerd,
  ref: string,
  origin: Origin,
  timeoutMs: number,
): Promise<void> {
  try {
    await containerd.pull(ref, {
      timeoutMs,
      ...(origin.user === undefined ? {} : { user: origin.user }),
    });
  } catch (error) {
    // ctr's command line, which the error quotes, carries the credentials.
    const message = error instanceof Error ? error.message : String(error);
    const redacted =
      origin.user === undefined ? message : message.split(origin.user).join('<credentials>');
    // Keep ctr's own error line ("ctr: failed to resolve reference ..."), not its progress bars.
    const lines = redacted.split('\n').map((line) => line.trim());
    throw new Error(
      lines.findLast((line) => line.startsWith('ctr: ')) ?? lines[0] ?? 'ctr images pull failed',
    );
  }
  if (origin.expected !== undefined) {
    const stored = await containerd.contentDigests();
    const missing = origin.expected.filter((d) => !stored.has(d.digest));
    if (missing.length > 0) {
      throw new Error(`containerd did not store ${missing.map((d) => d.digest).join(', ')}`);
    }
  }
}

/** One agent's counters after the pull. */
interface AgentFigures {
  readonly peer: number;
  readonly seed: number;
  readonly origin: number;
  readonly verificationFailures: number;
}

async function agentFigures(agent: AgentProcess): Promise<AgentFigures> {
  const metrics = await scrapeMetrics(agent.url);
  const fetched = (source: string): number =>
    metrics.get('shoal_agent_fetched_bytes_total', { source });
  return {
    peer: fetched('peer'),
    seed: fetched('seed'),
    origin: fetched('origin'),
    verificationFailures: metrics.get('shoal_agent_verification_failures_total'),
  };
}

/** Resolves on the first SIGINT or SIGTERM; from then on those no longer end the process. */
function interruption(): Promise<'interrupted'> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('interrupted'));
    process.once('SIGTERM', () => resolve('interrupted'));
  });
}

/** Prints each agent's endpoint and how to pull through it, for --keep. */
function printKeepInstructions(
  agents: readonly AgentProcess[],
  containerds: readonly Containerd[],
  origin: Origin,
  ref: string,
): void {
  const tag = origin.reference.startsWith(':') ? origin.reference.slice(1) : 'latest';
  say('\nStill running; Ctrl-C stops everything. Each agent mirrors ' + origin.host + ':');
  for (const [i, agent] of agents.entries()) {
    say(
      `  agent-${i}  ${agent.url}   (metrics ${agent.url}/metrics, log ${agent.process.logPath})`,
    );
  }
  const first = agents[0];
  const firstContainerd = containerds[0];
  if (first === undefined || firstContainerd === undefined) {
    return;
  }
  const creds = origin.user === undefined ? '' : ' --src-creds USER:PASSWORD';
  say('\nPull through agent-0 yourself:');
  say(
    `  skopeo copy --src-tls-verify=false${creds} docker://127.0.0.1:${first.port}/${origin.repository}${origin.reference} oci:/tmp/shoal-demo:${tag}`,
  );
  say(
    `  curl -H 'Accept: application/vnd.oci.image.manifest.v1+json' '${first.url}/v2/${origin.repository}/manifests/${origin.reference.slice(1)}?ns=${origin.host}'`,
  );
  say(
    `  ctr --address ${firstContainerd.address} -n shoal-test images pull --hosts-dir ${firstContainerd.hostsDir} --snapshotter native ${ref}`,
  );
  say(`\nOr point your own containerd at it: /etc/containerd/certs.d/${origin.host}/hosts.toml`);
  say(`  server = "${origin.url}"`);
  say(`  [host."${first.url}"]`);
  say('    capabilities = ["pull", "resolve"]');
}

/** The registry's log lengths before the pulls, to count what they asked of it. */
interface RegistryMark {
  readonly requests: number;
  readonly blobGets: number;
}

/** Prints what came from where; returns whether every pull completed and verified. */
async function printSummary(
  origin: Origin,
  outcomes: readonly PullOutcome[],
  figures: readonly AgentFigures[],
  seedMetrics: MetricsSnapshot,
  before: RegistryMark,
): Promise<boolean> {
  const total = (pick: (f: AgentFigures) => number): number =>
    figures.reduce((sum, f) => sum + pick(f), 0);
  const rows = figures.map((f, i) => {
    const outcome = outcomes[i];
    return [
      `agent-${i}`,
      mib(f.peer),
      mib(f.seed),
      mib(f.origin),
      `${(outcome?.seconds ?? Number.NaN).toFixed(2)} s`,
      outcome?.error === undefined ? 'ok' : 'FAILED',
    ];
  });
  rows.push([
    'total',
    mib(total((f) => f.peer)),
    mib(total((f) => f.seed)),
    mib(total((f) => f.origin)),
    `${Math.max(...outcomes.map((o) => o.seconds)).toFixed(2)} s`,
    '',
  ]);
  say(table(['agent', 'from peers', 'from seed', 'from origin', 'time', 'pull'], rows));
  say();

  const line = (label: string, value: string): void => {
    say(`${label.padEnd(44)}${value}`);
  };
  const seedFromOrigin = seedMetrics.get('shoal_seedserver_ingested_bytes_total', {
    source: 'origin',
  });
  if (origin.registry !== undefined && origin.expected !== undefined) {
    const requests = (await origin.registry.requests()).slice(before.requests);
    const blobGets = (await origin.registry.blobGets()).length - before.blobGets;
    const blobs = origin.expected.length - 1;
    line(
      'registry blob GETs (its own log)',
      `${blobGets}  (the image has ${blobs} blobs; ${figures.length} node${figures.length === 1 ? '' : 's'} without Shoal: ${blobs * figures.length})`,
    );
    line(
      'requests containerd sent around the agents',
      String(requests.filter((r) => r.userAgent.startsWith('containerd')).length),
    );
  } else {
    // Each agent fetched every blob once, from somewhere: that is the image's size.
    const imageBytes = Math.max(...figures.map((f) => f.peer + f.seed + f.origin));
    const fromOrigin = seedFromOrigin + total((f) => f.origin);
    const times = imageBytes > 0 ? (fromOrigin / imageBytes).toFixed(2) : '-';
    line(
      'bytes read from your registry',
      `${mib(fromOrigin)} = ${times} x the image's blobs (${mib(imageBytes)})`,
    );
    line('', "(the seed server's and the agents' own counts; no registry-side count here)");
  }
  line(
    'seed server',
    `read ${mib(seedFromOrigin)} from the origin, served ${mib(seedMetrics.get('shoal_seedserver_served_bytes_total'))} to agents`,
  );
  const fetched = total((f) => f.peer + f.seed + f.origin);
  line(
    'bytes the agents got from peers',
    `${fetched > 0 ? ((100 * total((f) => f.peer)) / fetched).toFixed(1) : '0.0'} % of ${mib(fetched)}`,
  );
  const failures = outcomes.filter((o) => o.error !== undefined).length;
  const badContent = total((f) => f.verificationFailures);
  const verified = failures === 0 && badContent === 0;
  line(
    'every pull completed, every blob verified',
    verified ? 'yes' : `NO (${failures} failed pulls, ${badContent} verification failures)`,
  );
  for (const [i, outcome] of outcomes.entries()) {
    if (outcome.error !== undefined) {
      say(`agent-${i}: ${outcome.error}`);
    }
  }
  return verified;
}

async function main(options: DemoOptions, teardown: Teardown): Promise<number> {
  // Ctrl-C and SIGTERM stop the demo through the teardown, never by exiting on the spot.
  const interrupted = interruption();
  say(`Shoal local demo: a swarm of ${options.agents} agents on one machine\n`);

  // Control plane.
  const nats = await startNats();
  teardown.add('nats-server', () => nats.stop());
  say(`nats-server  ${nats.url}`);

  // Origin: a local registry with a generated image, or the user's.
  const origin =
    options.own === undefined ? await localOrigin(options, teardown) : await ownOrigin(options.own);
  const ref = `${origin.host}/${origin.repository}${origin.reference}`;
  const registries = `${origin.host}=${origin.url}`;

  // Swarm services: the tracker and the seed server (filesystem store in its directory).
  const tracker = await startTracker({ natsUrl: nats.url });
  teardown.add('tracker', () => tracker.stop());
  say(`tracker      ${tracker.url}`);
  const seed = await startSeedServer({
    natsUrl: nats.url,
    registries,
    ...(origin.dockerConfig === undefined
      ? {}
      : { env: { SHOAL_SEED_DOCKER_CONFIG: origin.dockerConfig } }),
  });
  teardown.add('seed server', () => seed.stop());
  say(`seed server  ${seed.url}  (filesystem store ${seed.dir}/store)`);

  // Nodes: an agent and a containerd each, containerd sending pulls of the origin to its agent.
  const agents = await startAll(
    'agent',
    options.agents,
    (i) =>
      startAgent({
        registries,
        natsUrl: nats.url,
        peerId: `agent-${i}`,
        defaultRegistry: origin.host,
      }),
    teardown,
  );
  say(`agents       ${agents.map((a, i) => `agent-${i} ${a.url}`).join(', ')}`);
  const containerds = await startAll(
    'containerd',
    agents.length,
    () => startContainerd(),
    teardown,
  );
  for (const [i, containerd] of containerds.entries()) {
    const agent = agents[i];
    if (agent !== undefined) {
      await writeMirrorHosts(containerd.hostsDir, origin.host, origin.url, agent.url);
    }
  }

  say(`\n${containerds.length} containerd instances pull ${ref} through their agents at once...\n`);
  const before: RegistryMark = {
    requests: (await origin.registry?.requests())?.length ?? 0,
    blobGets: (await origin.registry?.blobGets())?.length ?? 0,
  };
  const started = performance.now();
  const pulls = Promise.all(
    containerds.map(async (containerd): Promise<PullOutcome> => {
      let error: string | undefined;
      try {
        await pullOne(containerd, ref, origin, options.timeoutMs);
      } catch (caught) {
        error = caught instanceof Error ? caught.message : String(caught);
      }
      return { seconds: (performance.now() - started) / 1000, error };
    }),
  );
  const outcomes = await Promise.race([pulls, interrupted]);
  if (outcomes === 'interrupted') {
    say('interrupted: stopping everything');
    return 1;
  }

  const figures = await Promise.all(agents.map(agentFigures));
  const seedMetrics = await scrapeMetrics(seed.url);
  const verified = await printSummary(origin, outcomes, figures, seedMetrics, before);
  if (options.keep) {
    printKeepInstructions(agents, containerds, origin, ref);
    await interrupted;
  }
  return verified ? 0 : 1;
}

const options = parseDemoOptions(process.argv.slice(2));
const teardown = new Teardown((what, error) =>
  process.stderr.write(`stopping ${what} failed: ${error.message}\n`),
);
try {
  process.exitCode = await main(options, teardown);
} catch (error) {
  process.stderr.write(
    `demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
} finally {
  await teardown.run();
}
