/**
 * The seed server's composition root: every dependency built in order, every server paired
 * with its shutdown. Tests call `buildApp` to run the real wiring in-process.
 */
import { hostname } from 'node:os';

import { createBlobStore } from '@shoal/blobstore';
import {
  encodeMessage,
  KV_BUCKETS,
  peerGone,
  peerGoneSubject,
  peerInfo,
  pieceSizeFor,
  STREAMS,
  type PeerInfo,
} from '@shoal/proto';
import { BlobReader, loadDockerConfig, RegistryAuth, UpstreamClient } from '@shoal/registry';
import {
  ConfigError,
  createLogger,
  httpsFactory,
  createMetrics,
  PieceTokenVerifier,
  RateLimiter,
  readHandoutPrivateKey,
  readHandoutPublicKeys,
  type Logger,
  type Service,
  httpServerOptions,
  limitConnections,
  urlHost,
} from '@shoal/runtime';
import {
  connectNats,
  drainWithin,
  ensureKv,
  settleWithin,
  ensureStreams,
  followNatsLink,
  jetStreamFor,
  redeclareOnReconnect,
  watchStreamUsage,
  type ConsumeLoop,
  type NatsConnection,
} from '@shoal/runtime/nats';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';

import type { SeedConfig } from './config.js';
import { consumeSeedRequests, ensureSeedConsumer } from './consumers/seed-requests.js';
import { registerRoutes } from './http/routes.js';
import { createSeedMetrics } from './metrics.js';

import { GatewayRetention } from './seeding/retention.js';
import { Seeder } from './seeding/seeder.js';

export { loadSeedConfig, type SeedConfig } from './config.js';

/** How long the peer-gone published at close may wait for NATS, in ms. */
const LEAVE_TIMEOUT_MS = 1_000;
/** How long draining the NATS connection at close may take, in ms. */
const DRAIN_TIMEOUT_MS = 5_000;
/** Longest one other step of the shutdown is waited for, in ms. */
const STEP_TIMEOUT_MS = 10_000;

/**
 * `setUp`'s result; when it fails, `nc` is closed first: a start that failed half-way must
 * not leave a connection reconnecting behind it.
 */
async function closedOnFailure<T>(nc: NatsConnection, setUp: () => Promise<T>): Promise<T> {
  try {
    return await setUp();
  } catch (error) {
    await nc.close().catch(() => undefined);
    throw error;
  }
}

export interface SeedOverrides {
  readonly logger?: Logger;
}

export interface SeedApp extends Service {
  /** The piece server's address once started. */
  readonly url: () => string;
}

export async function buildApp(
  config: SeedConfig,
  overrides: SeedOverrides = {},
): Promise<SeedApp> {
  // Telemetry first, so everything after can report.
  const logger =
    overrides.logger ?? createLogger({ service: 'seedserver', level: config.SHOAL_LOG_LEVEL });
  const serviceMetrics = createMetrics('seedserver');
  const metrics = createSeedMetrics(serviceMetrics);

  // Piece authentication: the tracker's public keys, read before anything connects.
  const keysFile = config.SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE;
  let verifier: PieceTokenVerifier | undefined;
  if (config.SHOAL_SEED_PIECE_AUTH === 'off') {
    logger.warn(
      'SHOAL_SEED_PIECE_AUTH=off: the seed server serves pieces to anyone who can reach it',
    );
  } else if (keysFile === undefined) {
    throw new ConfigError([
      'SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: required unless SHOAL_SEED_PIECE_AUTH=off',
    ]);
  } else {
    verifier = new PieceTokenVerifier(await readHandoutPublicKeys(keysFile));
  }
  // The record key, read before anything connects too: a bad file stops the start.
  const recordKey =
    config.SHOAL_SEED_RECORD_KEY_FILE === undefined
      ? undefined
      : await readHandoutPrivateKey(config.SHOAL_SEED_RECORD_KEY_FILE, 'record');

  // Object gateway: where seeded blobs are kept for the whole cluster.
  const store = createBlobStore(config);
  await store.init();

  // Origin: the registries, with the seed's own credentials.
  const originTimeouts = {
    connectMs: config.SHOAL_SEED_ORIGIN_CONNECT_TIMEOUT_MS,
    headersMs: config.SHOAL_SEED_ORIGIN_HEADERS_TIMEOUT_MS,
    idleMs: config.SHOAL_SEED_ORIGIN_IDLE_TIMEOUT_MS,
  };
  const userAgent = 'shoal-seedserver/0.1';
  // The upstream client's idle timeout covers the wait for a head too (token requests): the
  // headers timeout's length, not the body's.
  const upstream = new UpstreamClient(
    { ...originTimeouts, idleMs: Math.max(originTimeouts.idleMs, originTimeouts.headersMs) },
    userAgent,
  );
  // Blob bodies are read with a client of their own into reused blocks (see BlobReader);
  // the registry's token requests go through the upstream client.
  const originAuth = new RegistryAuth(
    await loadDockerConfig(config.SHOAL_SEED_DOCKER_CONFIG),
    upstream,
    { trustedRealms: config.SHOAL_SEED_TRUSTED_REALMS },
  );
  const origin = new BlobReader(
    originAuth,
    // The first block as soon as it holds the smallest piece (256 KiB): see `firstBlockBytes`.
    { timeouts: originTimeouts, userAgent, firstBlockBytes: pieceSizeFor(0) },
  );

  // HTTP: pieces for agents, and ops; HTTPS with a certificate (mutual TLS with a client CA).
  // Its files are read before NATS is connected, as the keys are: a bad one stops the start.
  const https = await httpsFactory(
    {
      certFile: config.SHOAL_SEED_TLS_CERT_FILE,
      keyFile: config.SHOAL_SEED_TLS_KEY_FILE,
      clientCaFile: config.SHOAL_SEED_TLS_CLIENT_CA_FILE,
    },
    {
      cert: 'SHOAL_SEED_TLS_CERT_FILE',
      key: 'SHOAL_SEED_TLS_KEY_FILE',
      clientCa: 'SHOAL_SEED_TLS_CLIENT_CA_FILE',
    },
    logger,
  );

  // NATS: the streams and the lock bucket the seed server owns.
  const nc = await connectNats(config, `shoal-seedserver-${config.SHOAL_SEED_ID}`, logger);
  const natsLink = followNatsLink(nc, (up) => {
    metrics.natsConnected.set(up ? 1 : 0);
    // Not at the close (a drained connection is closed on purpose).
    if (!up && !nc.isClosed()) {
      logger.warn('NATS down: every piece is served (no rationing) until it is back');
    }
  });
  metrics.natsConnected.set(natsLink.up ? 1 : 0);
  const ownedStreams = [STREAMS.pieces, STREAMS.seed];
  const { js, jsm, locks } = await closedOnFailure(nc, async () => {
    const handles = await jetStreamFor(nc);
    await ensureStreams(handles.jsm, ownedStreams, config.SHOAL_NATS_STREAM_REPLICAS);
    const bucket = await ensureKv(
      handles.js,
      KV_BUCKETS.seedLocks,
      config.SHOAL_NATS_STREAM_REPLICAS,
    );
    await ensureSeedConsumer(handles.jsm, config.SHOAL_SEED_REQUEST_ACK_WAIT_MS);
    return { ...handles, locks: bucket };
  });
  const usage = watchStreamUsage(jsm, ownedStreams, serviceMetrics, logger);
  const fastifyLogger: FastifyBaseLogger = logger;
  const server = Fastify({
    ...httpServerOptions(config),
    ...(https === undefined ? {} : { serverFactory: https.serverFactory }),
    loggerInstance: fastifyLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // No HEAD for the GET routes: a HEAD for a piece would take one of its rationed copies
    // and count it as sent, holding the piece back from everyone for the window.
    exposeHeadRoutes: false,
    forceCloseConnections: 'idle',
  });
  limitConnections(server, config);
  let closing = false;
  let address = '';
  const self = (): PeerInfo => ({
    id: config.SHOAL_SEED_ID,
    url: config.SHOAL_SEED_URL ?? address,
  });
  let seeder: Seeder | undefined;
  registerRoutes(server, {
    blob: (digest) => seeder?.blob(digest),
    uploadLimit: new RateLimiter(config.SHOAL_SEED_UPLOAD_RATE_BYTES),
    uploads: {
      max: config.SHOAL_SEED_MAX_UPLOADS,
      timeoutMs: config.SHOAL_SEED_UPLOAD_TIMEOUT_MS,
      sending: config.SHOAL_SEED_SENDS,
    },
    swarmHeard: () => natsLink.up,
    fanout: {
      copies: config.SHOAL_SEED_PIECE_FANOUT,
      windowMs: config.SHOAL_SEED_FANOUT_WINDOW_MS,
      holdMs: config.SHOAL_SEED_FANOUT_HOLD_MS,
    },
    metrics,
    verifier,
    requireClientCert: https?.verifiesClients === true,
    logger,
    registry: serviceMetrics.registry,
    notReadyReason: () =>
      closing ? 'shutting down' : nc.isClosed() ? 'NATS connection closed' : undefined,
  });
  let consumer: Pick<ConsumeLoop, 'stop' | 'reopen'> | undefined;
  let retention: GatewayRetention | undefined;
  // The declarations again after each reconnect: a server back with an empty store has none
  // of them. A request consumer made anew is taken up by the loop at once.
  redeclareOnReconnect(nc, logger, async () => {
    await ensureStreams(jsm, ownedStreams, config.SHOAL_NATS_STREAM_REPLICAS);
    await ensureKv(js, KV_BUCKETS.seedLocks, config.SHOAL_NATS_STREAM_REPLICAS);
    if (await ensureSeedConsumer(jsm, config.SHOAL_SEED_REQUEST_ACK_WAIT_MS)) {
      await consumer?.reopen();
    }
  });

  return {
    url: () => address,
    start: async () => {
      await server.listen({
        host: config.SHOAL_SEED_LISTEN.host,
        port: config.SHOAL_SEED_LISTEN.port,
      });
      const bound = server.server.address();
      const port =
        typeof bound === 'object' && bound !== null ? bound.port : config.SHOAL_SEED_LISTEN.port;
      const host = ['0.0.0.0', '::'].includes(config.SHOAL_SEED_LISTEN.host)
        ? hostname()
        : config.SHOAL_SEED_LISTEN.host;
      address = `${https === undefined ? 'http' : 'https'}://${urlHost(host)}:${port}`;
      // The seed's announcements carry this without being validated again (see `Announcer`):
      // an address no peer could use stops the start here, with the reason.
      if (!peerInfo.safeParse(self()).success) {
        throw new ConfigError([
          `SHOAL_SEED_URL: unset, and the address made from SHOAL_SEED_LISTEN and the host name (${self().url}) is not a usable URL`,
        ]);
      }
      // Seeding: the seeder announces as soon as it knows its own address.
      seeder = new Seeder({
        nc,
        intakeNoticeMs: config.SHOAL_SEED_INTAKE_NOTICE_MS,
        js,
        jsm,
        locks,
        store,
        origin,
        originAuth,
        registries: new Map(config.SHOAL_SEED_REGISTRIES.map((r) => [r.host, r])),
        self: self(),
        recordKey,
        cacheDir: config.SHOAL_SEED_CACHE_DIR,
        cacheMaxBytes: config.SHOAL_SEED_CACHE_MAX_BYTES,
        cacheMinFreeBytes: config.SHOAL_SEED_CACHE_MIN_FREE_BYTES,
        gatewayBreaker: {
          failures: config.SHOAL_SEED_GATEWAY_BREAKER_FAILURES,
          breakMs: config.SHOAL_SEED_GATEWAY_BREAK_MS,
        },
        gatewayIdleMs: config.SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS,
        // As many copies streaming as seeds may run at once: their part buffers are bounded.
        maxUploads: config.SHOAL_SEED_CONCURRENCY,
        metrics,
        logger,
      });
      await seeder.init();
      // Retention: the object gateway deletes what the policy says, one seed server at a time.
      const running = seeder;
      retention = new GatewayRetention({
        store,
        locks,
        policy: {
          maxAgeMs: config.SHOAL_SEED_GATEWAY_MAX_AGE_MS,
          maxBytes: config.SHOAL_SEED_GATEWAY_MAX_BYTES,
        },
        intervalMs: config.SHOAL_SEED_GATEWAY_SWEEP_INTERVAL_MS,
        self: config.SHOAL_SEED_ID,
        busy: (digest) => running.seeding(digest),
        metrics,
        logger,
      });
      retention.start();
      consumer = consumeSeedRequests({
        js,
        seeder,
        concurrency: config.SHOAL_SEED_CONCURRENCY,
        ackWaitMs: config.SHOAL_SEED_REQUEST_ACK_WAIT_MS,
        self: config.SHOAL_SEED_ID,
        registries: new Set(config.SHOAL_SEED_REGISTRIES.map((r) => r.host)),
        metrics,
        logger,
      });
      logger.info(
        { url: self().url, id: config.SHOAL_SEED_ID, store: config.SHOAL_STORE_KIND },
        'seed server ready',
      );
    },
    close: async () => {
      if (closing) {
        return;
      }
      // Readiness fails, consumers stop, in-flight seeds end, then NATS drains and HTTP closes.
      closing = true;
      // Each step bounded: a stuck one is logged and passed, so SIGTERM ends in its time.
      await settleWithin(
        'seed requests consumer',
        consumer?.stop() ?? Promise.resolve(),
        STEP_TIMEOUT_MS,
        logger,
      );
      await settleWithin(
        'retention',
        retention?.close() ?? Promise.resolve(),
        STEP_TIMEOUT_MS,
        logger,
      );
      await settleWithin(
        'seeds in flight',
        seeder?.close() ?? Promise.resolve(),
        STEP_TIMEOUT_MS,
        logger,
      );
      // Leaves every swarm, as an agent does at its close (and as this server does at its
      // start): the tracker stops naming a server that no longer answers, where each hand-out
      // naming it cost the agents refused piece requests until they gave it up. Best effort,
      // bounded, so that NATS away at SIGTERM does not cost the shutdown its deadline.
      await js
        .publish(
          peerGoneSubject(config.SHOAL_SEED_ID),
          encodeMessage(peerGone, { type: 'peer-gone', peer: config.SHOAL_SEED_ID }),
          { timeout: LEAVE_TIMEOUT_MS },
        )
        .catch(() => undefined);
      usage.stop();
      // Bounded, and closed whatever happens: a drain that fails (NATS away at that moment)
      // leaves the connection reconnecting for ever otherwise.
      await drainWithin(nc, DRAIN_TIMEOUT_MS, logger);
      await settleWithin('HTTP server', server.close(), STEP_TIMEOUT_MS, logger);
      https?.stop();
      origin.close();
      await settleWithin('registry client', upstream.close(), STEP_TIMEOUT_MS, logger);
      await settleWithin('object gateway', store.close(), STEP_TIMEOUT_MS, logger);
    },
  };
}
