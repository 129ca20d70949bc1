/** Starts the agent's part in preheat: its presence entry and its node-task consumer. */
import { KV_BUCKETS } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { bindKv } from '@shoal/runtime/nats';

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
  // Bound, never declared: the watcher declares the bucket (agents may not create streams).
  const presence = new PresenceBeacon(
    await bindKv(swarm.js, KV_BUCKETS.agents),
    {
      type: 'agent-presence',
      peer,
      labels: config.SHOAL_AGENT_LABELS,
      mode: config.SHOAL_AGENT_MODE,
      ...(config.SHOAL_AGENT_ZONE === undefined ? {} : { zone: config.SHOAL_AGENT_ZONE }),
    },
    logger,
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
  // cluster with API calls): the task consumer when its iterator finds it gone, after a spread
  // wait; the presence bucket never (the watcher declares it; puts back off while it is gone).
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
