/**
 * Bounds on every Shoal HTTP listener, so that clients that are slow, stalled or too many
 * cannot hold a service's connections, memory or upload slots: how long request headers and
 * a whole request may take, how long a connection may sit with nothing moving either way
 * (a stalled reader of a response included), and how many connections may be open at once.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';

import { envInt } from './config.js';

export const httpLimitsConfig = z.object({
  /** Time for a client to send its request headers, in ms (default 10 000). */
  SHOAL_HTTP_HEADERS_TIMEOUT_MS: envInt(10_000),
  /** Time for a client to send its whole request, body included, in ms (default 60 000). */
  SHOAL_HTTP_REQUEST_TIMEOUT_MS: envInt(60_000),
  /**
   * A connection with nothing moving either way for this long is closed, in ms (default
   * 120 000): a client that stops reading a response frees what the response held.
   */
  SHOAL_HTTP_IDLE_TIMEOUT_MS: envInt(120_000),
  /** How long a keep-alive connection waits for its next request, in ms (default 30 000). */
  SHOAL_HTTP_KEEPALIVE_TIMEOUT_MS: envInt(30_000),
  /** Connections open at once per listener; more are refused (default 2048). */
  SHOAL_HTTP_MAX_CONNECTIONS: envInt(2048),
});
export type HttpLimitsConfig = z.infer<typeof httpLimitsConfig>;

/**
 * How often the server looks for requests past their headers or request timeout, in ms: a
 * quarter of the shorter one (2.5 s by default), between 250 ms and Node's own 30 s. At Node's
 * default a client trickling its headers held its connection up to 40 s, not 10.
 */
export function timeoutCheckMs(limits: HttpLimitsConfig): number {
  const shorter = Math.min(
    limits.SHOAL_HTTP_HEADERS_TIMEOUT_MS,
    limits.SHOAL_HTTP_REQUEST_TIMEOUT_MS,
  );
  return Math.min(30_000, Math.max(250, Math.floor(shorter / 4)));
}

/**
 * The fastify options that carry the limits (spread into `Fastify({...})`); `http` also
 * reaches a `serverFactory`, which must pass it to the server it makes.
 */
export function httpServerOptions(limits: HttpLimitsConfig): {
  connectionTimeout: number;
  keepAliveTimeout: number;
  requestTimeout: number;
  http: { connectionsCheckingInterval: number };
} {
  return {
    connectionTimeout: limits.SHOAL_HTTP_IDLE_TIMEOUT_MS,
    keepAliveTimeout: limits.SHOAL_HTTP_KEEPALIVE_TIMEOUT_MS,
    requestTimeout: limits.SHOAL_HTTP_REQUEST_TIMEOUT_MS,
    http: { connectionsCheckingInterval: timeoutCheckMs(limits) },
  };
}

/** The limits fastify has no option for, set on its server (before it listens). */
export function limitConnections(app: FastifyInstance, limits: HttpLimitsConfig): void {
  app.server.headersTimeout = limits.SHOAL_HTTP_HEADERS_TIMEOUT_MS;
  app.server.maxConnections = limits.SHOAL_HTTP_MAX_CONNECTIONS;
}
