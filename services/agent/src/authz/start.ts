/** Builds the mirror's authorizer from the agent's configuration. */
import type { Logger } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import { Authorizer, credentialScheme } from './authorizer.js';
import type { AuthzConfig } from './config.js';
import { registryProbe } from './registry-probe.js';

export interface AuthzDeps {
  readonly requests: RegistryRequests;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

/** The authorizer, or undefined when `SHOAL_AGENT_AUTHZ=off` (logged as a warning). */
export function startAuthorizer(config: AuthzConfig, deps: AuthzDeps): Authorizer | undefined {
  const { metrics, logger } = deps;
  if (config.SHOAL_AGENT_AUTHZ === 'off') {
    logger.warn(
      'SHOAL_AGENT_AUTHZ=off: cached content is served to anyone who can reach the mirror',
    );
    return undefined;
  }
  if (config.SHOAL_AGENT_AUTHZ_UNREACHABLE === 'allow') {
    logger.warn(
      'SHOAL_AGENT_AUTHZ_UNREACHABLE=allow: content is served to anyone while the registry is unreachable',
    );
  }
  return new Authorizer({
    probe: registryProbe(deps.requests),
    ttlMs: config.SHOAL_AGENT_AUTHZ_TTL_MS,
    denyTtlMs: config.SHOAL_AGENT_AUTHZ_DENY_TTL_MS,
    staleMs: config.SHOAL_AGENT_AUTHZ_STALE_MS,
    maxEntries: config.SHOAL_AGENT_AUTHZ_CACHE_ENTRIES,
    timeoutMs: config.SHOAL_AGENT_AUTHZ_TIMEOUT_MS,
    unreachable: config.SHOAL_AGENT_AUTHZ_UNREACHABLE,
    onDecision: (subject, decision, cache) => {
      metrics.authzDecisions.inc({ result: decision.kind, cache });
      if (decision.kind === 'allow') {
        return;
      }
      // Never the credential, nor its fingerprint: the scheme says enough to debug.
      logger.info(
        {
          registry: subject.registry.host,
          repository: subject.repository,
          digest: subject.digest.toString(),
          credential: credentialScheme(subject.authorization),
          status: decision.answer?.status,
          ...(decision.kind === 'unavailable' ? { reason: decision.reason } : {}),
          cache,
        },
        decision.kind === 'deny'
          ? 'content refused: the registry does not authorize this client'
          : decision.kind === 'upstream'
            ? 'content read from the registry: it answered with a redirect, which does not prove the repository holds the digest'
            : 'content refused: authorization could not be checked at the registry',
      );
    },
  });
}
