/**
 * Connects the agent to the swarm. The NATS client is loaded only here, so an agent without
 * a swarm does not carry it.
 */
import { hostname } from 'node:os';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { PeerInfo } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';

import type { FsContentStore } from '../cache/content-store.js';
import type { AgentMetrics } from '../metrics.js';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { SwarmConfig } from './config.js';
import { SwarmService } from './service.js';

export interface StartedSwarm {
  readonly service: SwarmService;
  /** The swarm's NATS connection, for the agent's other consumers (preheat). */
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

export async function startSwarm(
  config: SwarmConfig & { SHOAL_NATS_URL: string },
  deps: {
    store: FsContentStore;
    requests: RegistryRequests;
    metrics: AgentMetrics;
    logger: Logger;
  },
): Promise<StartedSwarm> {
  const { connectNats, jetStreamFor } = await import('@shoal/runtime/nats');
  const nc = await connectNats(
    {
      SHOAL_NATS_URL: config.SHOAL_NATS_URL,
      SHOAL_NATS_STREAM_REPLICAS: 1,
      ...(config.SHOAL_NATS_CREDS_FILE === undefined
        ? {}
        : { SHOAL_NATS_CREDS_FILE: config.SHOAL_NATS_CREDS_FILE }),
    },
    `shoal-agent-${config.SHOAL_AGENT_PEER_ID}`,
    deps.logger,
  );
  const { js, jsm } = await jetStreamFor(nc);
  const self: PeerInfo = {
    id: config.SHOAL_AGENT_PEER_ID,
    url:
      config.SHOAL_AGENT_PEER_URL ?? `http://${hostname()}:${config.SHOAL_AGENT_PEER_LISTEN.port}`,
    ...(config.SHOAL_AGENT_ZONE === undefined ? {} : { zone: config.SHOAL_AGENT_ZONE }),
  };
  const service = new SwarmService({ nc, js, self, config, ...deps });
  return {
    service,
    js,
    jsm,
    close: async () => {
      await service.close();
      await nc.drain().catch(() => undefined);
    },
  };
}
