/** The tracker's configuration: the components' pieces, checked together. */
import { envInt, envListen, envLogLevel, httpLimitsConfig, loadConfig } from '@shoal/runtime';
import { natsConfig } from '@shoal/runtime/nats';
import { z } from 'zod';

import { handoutConfig, handoutConfigProblems } from './handout/config.js';
import { shardConfig } from './shard/config.js';
import { swarmConfig } from './swarm/config.js';
import { wantsConfig } from './wants/config.js';

export const trackerFields = z.object({
  ...natsConfig.shape,
  ...httpLimitsConfig.shape,
  /** Where /healthz, /readyz and /metrics listen (default `0.0.0.0:65020`). */
  SHOAL_TRACKER_LISTEN: envListen('0.0.0.0:65020'),
  SHOAL_LOG_LEVEL: envLogLevel,
  /** How long a graceful shutdown may take, in ms (default 30 000). */
  SHOAL_SHUTDOWN_TIMEOUT_MS: envInt(30_000),
  ...swarmConfig.shape,
  ...handoutConfig.shape,
  ...wantsConfig.shape,
  ...shardConfig.shape,
});

export type TrackerConfig = z.infer<typeof trackerFields>;

/** Reads the tracker's configuration; throws a ConfigError naming every problem. */
export function loadTrackerConfig(env: Record<string, string | undefined>): TrackerConfig {
  return loadConfig(trackerFields, env, handoutConfigProblems(env));
}
