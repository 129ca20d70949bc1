/**
 * The watcher's composition root: every dependency built in order, every consumer and server
 * paired with its shutdown. Tests call `buildApp` to run the real wiring in-process.
 */
import { KV_BUCKETS, STREAMS } from '@shoal/proto';
import { loadDockerConfig, RegistryAuth, RegistryReader, UpstreamClient } from '@shoal/registry';
import {
  createLogger,
  createMetrics,
  httpsFactory,
  listenOn,
  registerOpsRoutes,
  type Logger,
  type Service,
  httpServerOptions,
  limitConnections,
} from '@shoal/runtime';
import {
  connectNats,
  drainWithin,
  ensureKv,
  ensureStreams,
  jetStreamFor,
  redeclareOnReconnect,
  watchStreamUsage,
  type NatsConnection,
} from '@shoal/runtime/nats';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';

import type { WatcherConfig } from './config.js';
import { registerApiRoutes } from './http/api.js';
import { registerWebhookRoutes } from './http/webhooks.js';
import { createWatcherMetrics } from './metrics.js';
import { JobStore } from './preheat/jobs.js';
import { AgentPresenceView } from './preheat/presence.js';
import { PreheatRequests } from './preheat/requests.js';
import { ImageResolver } from './preheat/resolve.js';
import { PreheatRunner } from './preheat/runner.js';
import { LeaderLock } from './schedule/leader.js';
import { Scheduler } from './schedule/schedule.js';

export { loadWatcherConfig, type WatcherConfig } from './config.js';
export type { JobStatus } from './preheat/jobs.js';

/** How long draining the NATS connection may take before it is closed outright, in ms. */
const DRAIN_TIMEOUT_MS = 10_000;
/** Wait before declaring the agents' presence bucket again after a failure, in ms. */
const AGENTS_BUCKET_RETRY_MS = 5000;
/** How often the schedule lock is refreshed, in ms: a third of its TTL. */
const LOCK_REFRESH_MS = KV_BUCKETS.watcherLeader.ttlMs / 3;

export interface WatcherOverrides {
  readonly logger?: Logger;
}

export interface WatcherApp extends Service {
  /** The listener's address once started, e.g. `http://127.0.0.1:65030`. */
  readonly url: () => string;
}

export async function buildApp(
  config: WatcherConfig,
  overrides: WatcherOverrides = {},
): Promise<WatcherApp> {
  // Telemetry: logs and metrics first, so everything after can report.
  const logger =
    overrides.logger ?? createLogger({ service: 'watcher', level: config.SHOAL_LOG_LEVEL });
  const serviceMetrics = createMetrics('watcher');
  const metrics = createWatcherMetrics(serviceMetrics);

  // Registries: manifests are read with the watcher's own credentials.
  const upstream = new UpstreamClient(
    {
      connectMs: 10_000,
      headersMs: config.SHOAL_WATCHER_UPSTREAM_TIMEOUT_MS,
      idleMs: config.SHOAL_WATCHER_UPSTREAM_TIMEOUT_MS,
    },
    'shoal-watcher/0.1',
  );
  const resolver = new ImageResolver(
    new RegistryReader(
      upstream,
      new RegistryAuth(await loadDockerConfig(config.SHOAL_WATCHER_DOCKER_CONFIG), upstream, {
        trustedRealms: config.SHOAL_WATCHER_TRUSTED_REALMS,
      }),
    ),
    {
      registries: config.SHOAL_WATCHER_REGISTRIES,
      maxManifestBytes: config.SHOAL_WATCHER_MAX_MANIFEST_BYTES,
      timeoutMs: config.SHOAL_WATCHER_UPSTREAM_TIMEOUT_MS,
      onRefused: (registry, status, advice) => {
        metrics.registryRefusals.inc({ registry, status: String(status) });
        logger.warn({ registry, status }, `the registry refused the watcher: ${advice}`);
      },
    },
  );

  // NATS: the preheat streams and buckets the watcher owns, the agents' presence bucket too.
  const nc: NatsConnection = await connectNats(
    config,
    `shoal-watcher-${config.SHOAL_WATCHER_ID}`,
    logger,
  );
  const { js, jsm } = await jetStreamFor(nc);
  const ownedStreams = [STREAMS.preheat, STREAMS.preheatEvents, STREAMS.preheatNodes];
  await ensureStreams(jsm, ownedStreams, config.SHOAL_NATS_STREAM_REPLICAS);
  const usage = watchStreamUsage(jsm, ownedStreams, serviceMetrics, logger);
  const jobs = new JobStore(
    await ensureKv(js, KV_BUCKETS.preheatJobs, config.SHOAL_NATS_STREAM_REPLICAS),
  );
  const leaderKv = await ensureKv(js, KV_BUCKETS.watcherLeader, config.SHOAL_NATS_STREAM_REPLICAS);
  // The agents' presence bucket is declared here, by a trusted service: agents only bind to
  // it (whoever creates a stream picks its subjects and republish rules).
  // With the logger it also replaces a bucket someone else made with a republish rule (or
  // sources, a mirror, other subjects): agents of older releases could create it.
  // Declared last and off the start path: a watcher without the rights to it (NATS users of an
  // older release) or a failed stream lookup still runs its preheats, seeing no agents
  // (`nodes` jobs wait for their grace) until a background retry declares the bucket.
  const agents = new AgentPresenceView(config.SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS);
  let agentsRetry: NodeJS.Timeout | undefined;
  const declareAgentsKv = async (): Promise<void> => {
    clearTimeout(agentsRetry);
    try {
      const kv = await ensureKv(js, KV_BUCKETS.agents, config.SHOAL_NATS_STREAM_REPLICAS, logger);
      // Its age tells whether agents that found it missing have put their entries since.
      agents.bind(kv, Date.parse((await kv.status()).streamInfo.created));
    } catch (error) {
      metrics.agentsBucketFailures.inc();
      logger.warn(
        { err: error, retryMs: AGENTS_BUCKET_RETRY_MS },
        "could not declare the agents presence bucket shoal_agents (check the watcher's NATS permissions); preheats of scope nodes see no agents until it is declared",
      );
      if (!closing) {
        agentsRetry = setTimeout(() => void declareAgentsKv(), AGENTS_BUCKET_RETRY_MS);
        agentsRetry.unref();
      }
    }
  };

  // Preheat: requests turn into jobs; the runner works through the queue.
  const requests = new PreheatRequests(js, jobs, metrics, logger);
  const runner = new PreheatRunner({
    js,
    jsm,
    jobs,
    resolver,
    agents,
    concurrency: config.SHOAL_WATCHER_PREHEAT_CONCURRENCY,
    timeoutMs: config.SHOAL_WATCHER_PREHEAT_TIMEOUT_MS,
    ackWaitMs: config.SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS,
    metrics,
    logger,
  });

  // Schedule: only with a file, and only on the replica holding the lock.
  const scheduleFile = config.SHOAL_WATCHER_SCHEDULE_FILE;
  const scheduler =
    scheduleFile === undefined
      ? undefined
      : new Scheduler({
          file: scheduleFile,
          intervalMs: config.SHOAL_WATCHER_SCHEDULE_INTERVAL_MS,
          lockRefreshMs: LOCK_REFRESH_MS,
          defaultPlatforms: config.SHOAL_WATCHER_PLATFORMS,
          lock: new LeaderLock(leaderKv, config.SHOAL_WATCHER_ID, logger),
          resolver,
          requests,
          metrics,
          logger,
        });

  // HTTP: webhooks, the preheat API, and ops; HTTPS with a certificate.
  let closing = false;
  const fastifyLogger: FastifyBaseLogger = logger;
  const https = await httpsFactory(
    {
      certFile: config.SHOAL_WATCHER_TLS_CERT_FILE,
      keyFile: config.SHOAL_WATCHER_TLS_KEY_FILE,
    },
    { cert: 'SHOAL_WATCHER_TLS_CERT_FILE', key: 'SHOAL_WATCHER_TLS_KEY_FILE' },
    logger,
  );
  const server = Fastify({
    ...httpServerOptions(config),
    ...(https === undefined ? {} : { serverFactory: https.serverFactory }),
    loggerInstance: fastifyLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.SHOAL_WATCHER_WEBHOOK_MAX_BYTES,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  limitConnections(server, config);
  server.setErrorHandler((error: { statusCode?: number; message: string }, _request, reply) => {
    const status = error.statusCode ?? 500;
    if (status === 413) {
      metrics.webhooksRejected.inc({ reason: 'too-large' });
      logger.warn({ status }, 'request body too large');
      return reply
        .code(413)
        .send({ error: `the body is larger than ${config.SHOAL_WATCHER_WEBHOOK_MAX_BYTES} bytes` });
    }
    if (status >= 500) {
      logger.error({ err: error }, 'request failed');
      return reply.code(503).send({ error: 'the preheat could not be queued; retry' });
    }
    return reply.code(status).send({ error: error.message });
  });
  registerOpsRoutes(server, {
    registry: serviceMetrics.registry,
    notReadyReason: () =>
      closing ? 'shutting down' : nc.isClosed() ? 'NATS connection closed' : undefined,
  });
  registerWebhookRoutes(server, {
    secrets: {
      token: config.SHOAL_WATCHER_WEBHOOK_TOKEN,
      hmacSecret: config.SHOAL_WATCHER_WEBHOOK_HMAC_SECRET,
    },
    maxBytes: config.SHOAL_WATCHER_WEBHOOK_MAX_BYTES,
    scope: config.SHOAL_WATCHER_WEBHOOK_SCOPE,
    platforms: config.SHOAL_WATCHER_PLATFORMS,
    resolver,
    requests,
    metrics,
    logger,
  });
  registerApiRoutes(server, {
    token: config.SHOAL_WATCHER_API_TOKEN ?? config.SHOAL_WATCHER_WEBHOOK_TOKEN,
    platforms: config.SHOAL_WATCHER_PLATFORMS,
    resolver,
    requests,
    jobs,
  });

  let address = '';
  return {
    url: () => address,
    start: async () => {
      await runner.start();
      // Never throws: a failure is logged, counted and retried in the background.
      await declareAgentsKv();
      // The declarations again after each reconnect: a server back with an empty store has
      // none of them.
      redeclareOnReconnect(nc, logger, async () => {
        await ensureStreams(jsm, ownedStreams, config.SHOAL_NATS_STREAM_REPLICAS);
        await ensureKv(js, KV_BUCKETS.preheatJobs, config.SHOAL_NATS_STREAM_REPLICAS);
        await ensureKv(js, KV_BUCKETS.watcherLeader, config.SHOAL_NATS_STREAM_REPLICAS);
        await runner.redeclare();
        await declareAgentsKv();
      });
      scheduler?.start();
      address = await listenOn(server, config.SHOAL_WATCHER_LISTEN);
      logger.info(
        {
          url: address,
          registries: config.SHOAL_WATCHER_REGISTRIES.map((r) => r.host),
          schedule: scheduleFile,
        },
        'watcher listening',
      );
    },
    close: async () => {
      if (closing) {
        return;
      }
      // Readiness fails, the listener stops taking requests, the schedule and the runner stop
      // (jobs in flight go back to the queue), then NATS drains.
      closing = true;
      clearTimeout(agentsRetry);
      await server.close();
      await scheduler?.stop();
      await runner.stop();
      usage.stop();
      https?.stop();
      await drainWithin(nc, DRAIN_TIMEOUT_MS, logger);
      await upstream.close();
    },
  };
}
