/**
 * A whole Shoal cluster on this machine for tests: nats-server, the registry with a generated
 * image, trackers, a seed server and agents, each a separate process.
 */
import {
  FAST_SWARM_ENV,
  generateImage,
  makeTempDir,
  makeTestCa,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type PieceTls,
  type Registry,
  type ServiceProcess,
  type TestCa,
} from '@shoal/testkit';

import { streamDigest, type StreamOutcome } from './http.js';

export interface AgentSpec {
  readonly peerId: string;
  readonly env?: Record<string, string>;
}

export interface ClusterSpec {
  readonly layerSizes: readonly number[];
  readonly seed: string;
  readonly repository: string;
  readonly trackers: number;
  readonly agents: readonly AgentSpec[];
  /** Extra seed-server variables (object gateway, rates). */
  readonly seedEnv?: Record<string, string>;
  /** Variables every service gets (telemetry: `OTEL_*`). */
  readonly env?: Record<string, string>;
  /** Reuse a registry (and its image) instead of starting one. */
  readonly registry?: { registry: Registry; image: GeneratedImage };
  /**
   * The URL the seed server and the agents reach the registry by (a fault proxy in front of
   * it, say); the registry's own by default.
   */
  readonly upstreamUrl?: string;
  /** NATS over TLS from a CA of the test's own; every service gets a client certificate. */
  readonly natsTls?: { readonly verifyClients: boolean };
  /** Pieces over TLS (peer ports and the seed server) from the same CA; mutual with `verifyClients`. */
  readonly pieceTls?: { readonly verifyClients: boolean };
}

export interface Cluster {
  readonly nats: NatsServer;
  /** The CA of NATS's and the piece servers' certificates, with `natsTls` or `pieceTls`. */
  readonly ca: TestCa | undefined;
  /** The piece TLS every agent and the seed server get, to start more agents alike. */
  readonly pieceTls: PieceTls | undefined;
  readonly registry: Registry;
  readonly image: GeneratedImage;
  readonly trackers: ServiceProcess[];
  seed: ServiceProcess;
  readonly agents: AgentProcess[];
  /** Environment every agent gets, to start more or restart one. */
  readonly agentEnv: Record<string, string>;
  /** Stops everything it started (the registry only if it started it). */
  stop(): Promise<void>;
}

export { FAST_SWARM_ENV } from '@shoal/testkit';

export async function startCluster(spec: ClusterSpec): Promise<Cluster> {
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    for (const stop of stops.reverse()) {
      await stop().catch(() => undefined);
    }
  };
  try {
    const ca =
      spec.natsTls === undefined && spec.pieceTls === undefined ? undefined : await makeTestCa();
    if (ca !== undefined) {
      stops.push(() => ca.remove());
    }
    const pieceTls: PieceTls | undefined =
      ca === undefined || spec.pieceTls === undefined
        ? undefined
        : { ca, verifyClients: spec.pieceTls.verifyClients };
    const nats = await startNats(
      ca === undefined || spec.natsTls === undefined
        ? {}
        : { tls: { ca, verifyClients: spec.natsTls.verifyClients } },
    );
    stops.push(() => nats.stop());
    let registry: Registry;
    let image: GeneratedImage;
    if (spec.registry === undefined) {
      registry = await startRegistry();
      stops.push(() => registry.stop());
      const layout = await makeTempDir('image');
      stops.push(() => layout.remove());
      image = await generateImage(layout.path, { layerSizes: spec.layerSizes, seed: spec.seed });
      await pushImage(image, registry.host, spec.repository);
    } else {
      ({ registry, image } = spec.registry);
    }
    const trackers: ServiceProcess[] = [];
    for (let i = 0; i < spec.trackers; i++) {
      const tracker = await startTracker({
        natsUrl: nats.url,
        env: { ...spec.env, ...(await nats.clientEnv(`tracker-${String(i)}`)) },
      });
      trackers.push(tracker);
    }
    stops.push(async () => {
      for (const tracker of trackers) {
        await tracker.stop();
      }
    });
    const registries = `${registry.host}=${spec.upstreamUrl ?? registry.url}`;
    const cluster: Cluster = {
      nats,
      ca,
      pieceTls,
      registry,
      image,
      trackers,
      seed: await startSeedServer({
        natsUrl: nats.url,
        registries,
        env: { ...spec.env, ...spec.seedEnv, ...(await nats.clientEnv('seedserver')) },
        ...(pieceTls === undefined ? {} : { pieceTls }),
      }),
      agents: [],
      agentEnv: { ...FAST_SWARM_ENV, ...spec.env },
      stop: stopAll,
    };
    stops.push(() => cluster.seed.stop());
    stops.push(async () => {
      for (const agent of cluster.agents) {
        await agent.stop();
      }
    });
    for (const agent of spec.agents) {
      cluster.agents.push(
        await startAgent({
          registries,
          defaultRegistry: registry.host,
          natsUrl: nats.url,
          peerId: agent.peerId,
          ...(pieceTls === undefined ? {} : { pieceTls }),
          env: {
            ...cluster.agentEnv,
            ...(await nats.clientEnv(agent.peerId)),
            ...agent.env,
          },
        }),
      );
    }
    return cluster;
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/**
 * Every blob of the image fetched through one agent, digests checked while streaming; with
 * the client's `authorization` header when given (a private registry).
 */
export async function pullBlobs(
  agent: AgentProcess,
  cluster: Pick<Cluster, 'image' | 'registry'>,
  repository: string,
  authorization?: string,
): Promise<StreamOutcome[]> {
  const init = authorization === undefined ? {} : { headers: { authorization } };
  return Promise.all(
    cluster.image.blobs.map((blob) =>
      streamDigest(
        `${agent.url}/v2/${repository}/blobs/${blob.digest}?ns=${cluster.registry.host}`,
        init,
      ),
    ),
  );
}

/** Bytes an agent received, by source. */
export async function bytesBySource(
  agent: AgentProcess,
): Promise<{ origin: number; seed: number; peer: number }> {
  const read = (source: string): Promise<number> =>
    agent.metric('shoal_agent_fetched_bytes_total', { source });
  return { origin: await read('origin'), seed: await read('seed'), peer: await read('peer') };
}

/** The members of a blob's swarm as a tracker sees them. */
export async function trackerView(
  tracker: ServiceProcess,
  blob: string,
): Promise<{ peer: string; complete: boolean; seed: boolean; pieces: [number, number][] }[]> {
  const [algorithm, hex] = blob.split(':');
  const response = await fetch(`${tracker.url}/swarm/${algorithm ?? ''}/${hex ?? ''}`, {
    signal: AbortSignal.timeout(5000),
  });
  const body = (await response.json()) as {
    members: { peer: string; complete: boolean; seed: boolean; pieces: [number, number][] }[];
  };
  return body.members;
}

/**
 * One of each Shoal service on `natsUrl`, mirroring or seeding from `registry`: a tracker, a
 * seed server, a watcher and an agent, in that order (the order to stop them in reverse).
 */
export async function startOneOfEach(
  natsUrl: string,
  registry: Pick<Registry, 'host' | 'url'>,
): Promise<ServiceProcess[]> {
  const registries = `${registry.host}=${registry.url}`;
  return [
    await startTracker({ natsUrl }),
    await startSeedServer({ natsUrl, registries }),
    await startWatcher({ natsUrl, registries }),
    await startAgent({ registries, natsUrl }),
  ];
}
