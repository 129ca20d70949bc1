/** Starts the agent's part in preheat: its presence entry and its node-task consumer. */
import { KV_BUCKETS } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { ensureKv } from '@shoal/runtime/nats';

import type { FsContentStore } from '../cache/content-store.js';
import type { DownloadTable } from '../cache/download-table.js';
import type { AgentConfig } from '../config.js';
import type { AgentMetrics } from '../metrics.js';
import type { StartedSwarm } from '../swarm/start.js';
import type { RegistryTable } from '../upstream/registries.js';
import { NodePreheat } from './node-preheat.js';
import { PresenceBeacon } from './presence.js';

export interface StartedPreheat {
  stop(): Promise<void>;
}

export async function startNodePreheat(
  config: AgentConfig,
  deps: {
    swarm: StartedSwarm;
    store: FsContentStore;
    downloads: DownloadTable;
    registries: RegistryTable;
    metrics: AgentMetrics;
    logger: Logger;
  },
): Promise<StartedPreheat> {
  const { swarm, logger } = deps;
  const peer = config.SHOAL_AGENT_PEER_ID;
  const declareBucket = (): Promise<unknown> =>
    ensureKv(swarm.js, KV_BUCKETS.agents, config.SHOAL_NATS_STREAM_REPLICAS);
  const presence = new PresenceBeacon(
    await ensureKv(swarm.js, KV_BUCKETS.agents, config.SHOAL_NATS_STREAM_REPLICAS),
    {
      type: 'agent-presence',
      peer,
      labels: config.SHOAL_AGENT_LABELS,
      mode: config.SHOAL_AGENT_MODE,
      ...(config.SHOAL_AGENT_ZONE === undefined ? {} : { zone: config.SHOAL_AGENT_ZONE }),
    },
    logger,
    declareBucket,
  );
  const nodes = new NodePreheat({
    js: swarm.js,
    jsm: swarm.jsm,
    peer,
    labels: config.SHOAL_AGENT_LABELS,
    store: deps.store,
    downloads: deps.downloads,
    fetcher: swarm.service,
    registries: deps.registries,
    concurrency: config.SHOAL_AGENT_PREHEAT_CONCURRENCY,
    rateBytes: config.SHOAL_AGENT_PREHEAT_RATE_BYTES,
    recoverySpreadMs: config.SHOAL_AGENT_NATS_RECOVERY_SPREAD_MS,
    metrics: deps.metrics,
    logger,
  });
  // Tasks first, then presence: a watcher that sees this agent finds its consumer ready.
  nodes.start();
  // Nothing is declared again on a reconnect (thousands of agents would flood a recovering
  // cluster with API calls): the presence bucket when a put finds it gone, the task consumer
  // when its iterator finds it gone, each after a spread wait.
  await presence.start(config.SHOAL_AGENT_PRESENCE_INTERVAL_MS);
  return {
    stop: async () => {
      // Tasks stop at once (their downloads no longer awaited, the task handed back), not
      // after the presence entry's delete, which waits its timeout when NATS is away.
      const tasks = nodes.stop();
      await presence.stop();
      await tasks;
    },
  };
}
