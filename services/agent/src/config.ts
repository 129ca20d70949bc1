/** The agent's configuration: the components' pieces, checked together. */
import { envInt, envListen, envLogLevel, loadConfig } from '@shoal/runtime';
import { z } from 'zod';

import { cacheConfig } from './cache/config.js';
import { upstreamConfig } from './upstream/config.js';

const agentEnv = z
  .object({
    /** Where the mirror listens; containerd's hosts.toml points here. */
    SHOAL_AGENT_LISTEN: envListen('127.0.0.1:65001'),
    SHOAL_LOG_LEVEL: envLogLevel,
    /** How long a graceful shutdown may take, in ms. */
    SHOAL_SHUTDOWN_TIMEOUT_MS: envInt(30_000),
    ...upstreamConfig.shape,
    ...cacheConfig.shape,
  })
  .superRefine((env, ctx) => {
    const fallback = env.SHOAL_AGENT_DEFAULT_REGISTRY;
    if (fallback !== undefined && !env.SHOAL_AGENT_REGISTRIES.some((r) => r.host === fallback)) {
      ctx.addIssue({
        code: 'custom',
        path: ['SHOAL_AGENT_DEFAULT_REGISTRY'],
        message: `"${fallback}" is not in SHOAL_AGENT_REGISTRIES`,
      });
    }
  });

export type AgentConfig = z.infer<typeof agentEnv>;

/** Reads the agent's configuration; throws a ConfigError naming every problem. */
export function loadAgentConfig(env: Record<string, string | undefined>): AgentConfig {
  return loadConfig(agentEnv, env);
}
