/** Configuration of the mirror's authorization check (see the README's "Security model"). */
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

export const authzConfig = z.object({
  /**
   * `on` (default): content is served only to clients the registry authorizes for the
   * repository. `off` serves anything held to anyone who can reach the mirror: insecure for
   * private registries.
   */
  SHOAL_AGENT_AUTHZ: z.enum(['on', 'off'], { message: 'must be on or off' }).default('on'),
  /** How long a registry's "yes" is reused for the same repository and credential, in ms. */
  SHOAL_AGENT_AUTHZ_TTL_MS: envInt(60_000),
  /** How long a registry's 401/403 is reused for the same repository and credential, in ms. */
  SHOAL_AGENT_AUTHZ_DENY_TTL_MS: envInt(5_000),
  /**
   * How long past its expiry a "yes" still counts when the registry cannot be asked, in ms
   * (for a public repository always; for any under `allow-cached`).
   */
  SHOAL_AGENT_AUTHZ_STALE_MS: envInt(15 * 60_000),
  /** Most decisions held (and, apart, most repository-content facts), least recently used out. */
  SHOAL_AGENT_AUTHZ_CACHE_ENTRIES: envInt(20_000),
  /** Time for the registry to answer the check (and the `/v2/` check relayed for a client), in ms. */
  SHOAL_AGENT_AUTHZ_TIMEOUT_MS: envInt(5_000),
  /**
   * When the registry cannot be asked (refused, timed out, 5xx, 429): `deny` (default) serves
   * only repositories recently known to be public; `allow-cached` also clients the registry
   * recently allowed; `allow` serves anyone (insecure).
   */
  SHOAL_AGENT_AUTHZ_UNREACHABLE: z
    .enum(['deny', 'allow-cached', 'allow'], { message: 'must be deny, allow-cached or allow' })
    .default('deny'),
});

export type AuthzConfig = z.infer<typeof authzConfig>;
