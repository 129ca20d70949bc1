/** The agent's configuration: the components' pieces, checked together. */
import { envInt, envListen, envLogLevel, httpLimitsConfig, loadConfig } from '@shoal/runtime';
import { z } from 'zod';

import { authzConfig } from './authz/config.js';
import { cacheConfig } from './cache/config.js';
import { hostsConfig } from './hosts/config.js';
import { preheatConfig } from './preheat/config.js';
import { swarmConfig, swarmConfigProblems } from './swarm/config.js';
import { canonicalRegistryHost, registriesList } from '@shoal/registry';

import { upstreamConfig } from './upstream/config.js';

export const agentFields = z.object({
  /** Where the mirror listens; containerd's hosts.toml points here. */
  SHOAL_AGENT_LISTEN: envListen('127.0.0.1:65001'),
  SHOAL_LOG_LEVEL: envLogLevel,
  /**
   * How long a graceful shutdown may take, in ms. Its first two thirds let responses in
   * flight (blobs to containerd, pieces to peers) finish; past that they are cut (containerd
   * resumes the blob from the registry with a range request), and the rest is for leaving
   * the swarm, so that a busy agent still exits 0 in time.
   */
  SHOAL_SHUTDOWN_TIMEOUT_MS: envInt(30_000),
  ...httpLimitsConfig.shape,
  ...upstreamConfig.shape,
  ...authzConfig.shape,
  ...cacheConfig.shape,
  ...swarmConfig.shape,
  ...preheatConfig.shape,
  ...hostsConfig.shape,
});

export type AgentConfig = z.infer<typeof agentFields>;

/** Reads the agent's configuration; throws a ConfigError naming every problem. */
export function loadAgentConfig(env: Record<string, string | undefined>): AgentConfig {
  // The default registry must be a mirrored one. Checked on its own so that it is reported
  // together with any other problem, not only once everything else is right.
  const problems: string[] = [];
  const fallback = env.SHOAL_AGENT_DEFAULT_REGISTRY;
  const registries = registriesList.safeParse(env.SHOAL_AGENT_REGISTRIES ?? '');
  if (
    fallback !== undefined &&
    registries.success &&
    !registries.data.some((r) => r.host === canonicalRegistryHost(fallback))
  ) {
    problems.push(
      `SHOAL_AGENT_DEFAULT_REGISTRY: "${fallback}" is not one of SHOAL_AGENT_REGISTRIES`,
    );
  }
  problems.push(...swarmConfigProblems(env));
  return loadConfig(agentFields, env, problems);
}
