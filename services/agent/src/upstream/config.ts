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
  /**
   * Longest pause inside a blob's body read from the registry, in ms (default 10 000; until the
   * body's first bytes the headers timeout applies, and time the agent itself holds the
   * transfer paused does not count): a whole blob read without a swarm (no NATS configured, or
   * not joined yet), and the swarm's reads of what it did not deliver after a stall. A transfer
   * that stops part-way with its connection left open (a stuck load balancer or CDN node) is
   * then asked again from where it stopped, on another connection, as one that broke off is; a
   * body sent straight to a client uncached is cut instead, for the client to ask again. As
   * long as the swarm's stall timeout (SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS): a stuck registry
   * costs the same wait as a stuck swarm. For a registry whose bodies pause longer (a proxy
   * streaming from a slow upstream, a very lossy link) raise it. The agent's other requests
   * (manifests, tokens, HEADs) allow the larger of this and the headers timeout. Before, it was
   * 60 000.
   */
  SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: envInt(10_000),
  /** Largest manifest accepted from an upstream, in bytes (the distribution default: 4 MiB). */
  SHOAL_AGENT_MAX_MANIFEST_BYTES: envInt(4 * 1024 * 1024),
});
