/**
 * The agent's composition root: every dependency built in order, every server paired with
 * its shutdown. Tests call `buildApp` to run the real wiring in-process.
 */
import { createLogger, createMetrics, type Logger, type Service } from '@shoal/runtime';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';

import { FsContentStore } from './cache/content-store.js';
import { DownloadTable } from './cache/download-table.js';
import { ContentMismatchError } from './cache/download.js';
import type { AgentConfig } from './config.js';
import { registerOpsRoutes } from './http/ops.js';
import { createAgentMetrics } from './metrics.js';
import { Mirror } from './mirror/mirror.js';
import { registerMirrorRoutes } from './mirror/routes.js';
import { UpstreamClient } from './upstream/client.js';
import { OriginFetcher } from './upstream/origin-fetcher.js';
import { RegistryRequests } from './upstream/registry-requests.js';
import { RegistryTable } from './upstream/registries.js';

export { loadAgentConfig, type AgentConfig } from './config.js';

export interface AgentOverrides {
  readonly logger?: Logger;
}

export interface AgentApp extends Service {
  /** The mirror's address once started, e.g. `http://127.0.0.1:65001`. */
  readonly url: () => string;
}

export async function buildApp(
  config: AgentConfig,
  overrides: AgentOverrides = {},
): Promise<AgentApp> {
  // Telemetry: logs and metrics first, so everything after can report.
  const logger =
    overrides.logger ?? createLogger({ service: 'agent', level: config.SHOAL_LOG_LEVEL });
  const serviceMetrics = createMetrics('agent');
  const metrics = createAgentMetrics(serviceMetrics);

  // Cache: verified content on disk, with a quota.
  const store = new FsContentStore(
    config.SHOAL_AGENT_CACHE_DIR,
    config.SHOAL_AGENT_CACHE_MAX_BYTES,
    {
      onEvict: () => metrics.cacheEvictions.inc(),
    },
  );
  await store.init();
  metrics.cacheBytes.set(store.totalBytes);

  // Upstreams: only the configured registries, through one connection pool.
  const registries = new RegistryTable(
    config.SHOAL_AGENT_REGISTRIES,
    config.SHOAL_AGENT_DEFAULT_REGISTRY,
  );
  const upstream = new UpstreamClient({
    connectMs: config.SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS,
    headersMs: config.SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS,
    idleMs: config.SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS,
  });

  // Downloads: one per blob, shared by every request for it, filled from the origin.
  const requests = new RegistryRequests(upstream, metrics);
  const downloads = new DownloadTable({
    onStarted: () => metrics.downloadsInFlight.set(downloads.active),
    onSettled: (download, state) => {
      metrics.downloadsInFlight.set(downloads.active);
      metrics.cacheBytes.set(store.totalBytes);
      if (state === 'verified') {
        logger.info(
          { digest: download.digest.toString(), bytes: download.available },
          'blob cached',
        );
        return;
      }
      if (download.error instanceof ContentMismatchError) {
        metrics.verificationFailures.inc({ kind: 'blob' });
      }
      logger.warn(
        { digest: download.digest.toString(), err: download.error },
        'blob download failed; nothing was cached',
      );
    },
  });
  const fetcher = new OriginFetcher({
    store,
    downloads,
    requests,
    onBytes: (bytes) => metrics.fetchedBytes.inc({ source: 'origin' }, bytes),
  });

  // Mirror: the OCI pull API on the configured address.
  const mirror = new Mirror({
    store,
    downloads,
    fetcher,
    requests,
    metrics,
    logger,
    maxManifestBytes: config.SHOAL_AGENT_MAX_MANIFEST_BYTES,
  });
  // Typed as fastify's logger so the instance keeps fastify's default generics.
  const fastifyLogger: FastifyBaseLogger = logger;
  const server = Fastify({
    loggerInstance: fastifyLogger,
    // Requests are logged by the mirror's own hook (debug, with status and timing).
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  let closing = false;
  registerOpsRoutes(server, {
    registry: serviceMetrics.registry,
    notReadyReason: () => (closing ? 'shutting down' : undefined),
  });
  registerMirrorRoutes(server, { mirror, registries, metrics, logger });

  let address = '';
  return {
    url: () => address,
    start: async () => {
      await server.listen({
        host: config.SHOAL_AGENT_LISTEN.host,
        port: config.SHOAL_AGENT_LISTEN.port,
      });
      const bound = server.server.address();
      const port =
        typeof bound === 'object' && bound !== null ? bound.port : config.SHOAL_AGENT_LISTEN.port;
      const host = config.SHOAL_AGENT_LISTEN.host.includes(':')
        ? `[${config.SHOAL_AGENT_LISTEN.host}]`
        : config.SHOAL_AGENT_LISTEN.host;
      address = `http://${host}:${port}`;
      logger.info(
        {
          url: address,
          registries: registries.registries.map((r) => r.host),
          cacheBytes: store.totalBytes,
        },
        'mirror listening',
      );
    },
    close: async () => {
      if (closing) {
        return;
      }
      // Readiness fails first, then the listener drains, then downloads and upstreams stop.
      closing = true;
      await server.close();
      await downloads.close();
      await upstream.close();
    },
  };
}
