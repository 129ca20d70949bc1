/** Configuration of the upstream registries the agent mirrors, and how it talks to them. */
import { registriesList } from '@shoal/registry';
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

export const upstreamConfig = z.object({
  /** Registries to mirror; anything else is refused. */
  SHOAL_AGENT_REGISTRIES: registriesList,
  /** Registry for requests without `ns=` (docker's `registry-mirrors`); must be listed. */
  SHOAL_AGENT_DEFAULT_REGISTRY: z.string().optional(),
  /** Time to establish a connection to an upstream, in ms. */
  SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS: envInt(10_000),
  /** Time from request to response headers, in ms. */
  SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS: envInt(30_000),
  /** Longest pause between two body chunks before the transfer is abandoned, in ms. */
  SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: envInt(60_000),
  /** Largest manifest accepted from an upstream, in bytes (the distribution default: 4 MiB). */
  SHOAL_AGENT_MAX_MANIFEST_BYTES: envInt(4 * 1024 * 1024),
});
