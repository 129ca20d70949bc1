/**
 * The agent's composition root: every dependency built in order, every server paired with
 * its shutdown. Tests call `buildApp` to run the real wiring in-process.
 */
import { PieceBuffers } from '@shoal/pieces';
import type { Digest } from '@shoal/proto';
import { UpstreamClient } from '@shoal/registry';
import {
  createLogger,
  createMetrics,
  drainOrCut,
  listenOn,
  registerOpsRoutes,
  type Logger,
  type Service,
  httpServerOptions,
  limitConnections,
  readHandoutPublicKeys,
} from '@shoal/runtime';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';

import { startAuthorizer } from './authz/start.js';
import { FsContentStore } from './cache/content-store.js';
import { DiskHeadroom } from './cache/disk-headroom.js';
import { BlobLedger, reportBlob } from './provenance/ledger.js';
import { DownloadTable } from './cache/download-table.js';
import { ContentMismatchError } from './cache/download.js';
import type { AgentConfig } from './config.js';
import { hostsMirrorUrl } from './hosts/config.js';
import { createHostsFiles } from './hosts/hosts-files.js';
import { createAgentMetrics } from './metrics.js';
import { Mirror } from './mirror/mirror.js';
import { registerMirrorRoutes } from './mirror/routes.js';
import { startNodePreheat, type StartedPreheat } from './preheat/start.js';
import { createTransferLimits } from './swarm/limits.js';
import { registerPeerRoutes } from './swarm/peer-server.js';
import { pieceVerifier } from './swarm/piece-auth.js';
import { peerHttps, pieceClientTls } from './swarm/piece-tls.js';
import { joinSwarm, startSwarm, type StartedSwarm, type SwarmJoin } from './swarm/start.js';
import { OriginFetcher, type BlobFetcher } from './upstream/origin-fetcher.js';
import { RegistryRequests } from './upstream/registry-requests.js';
import { RegistryTable } from './upstream/registries.js';

export { loadAgentConfig, type AgentConfig } from './config.js';

/**
 * Free piece buffers kept for reuse, in bytes: enough for the pieces of a few downloads at once
 * (in flight and held). A buffer the pool cannot keep is left to the collector, and allocating
 * its replacement is external memory that makes V8 mark the whole heap: with 8 MiB, an agent
 * taking a 256 MiB image from a peer (three downloads, pieces arriving fast and out of order)
 * spent about a quarter of its CPU on that marking.
 */
const POOLED_PIECE_BYTES = 48 * 1024 * 1024;
/** Free piece buffers kept once the pool has been idle for `POOL_TRIM_MS`, in bytes. */
const IDLE_POOLED_PIECE_BYTES = 0;
/** How often an idle pool lets go of its free buffers, in ms. */
const POOL_TRIM_MS = 10_000;

/**
 * How long responses in flight may finish after SIGTERM, in ms: two thirds of the shutdown
 * timeout, leaving the last third for leaving the swarm and closing the rest. Waiting for a
 * long blob instead would spend the whole timeout and exit 1 without having left the swarm.
 */
function drainMs(shutdownTimeoutMs: number): number {
  return Math.floor((shutdownTimeoutMs * 2) / 3);
}

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

  // Cache: verified content on disk, with a quota. Evictions are told to the swarm, once there is one.
  let onEvicted: (digest: Digest) => void = () => undefined;
  const store = new FsContentStore(
    config.SHOAL_AGENT_CACHE_DIR,
    config.SHOAL_AGENT_CACHE_MAX_BYTES,
    {
      onEvict: (digest) => {
        metrics.cacheEvictions.inc();
        onEvicted(digest);
      },
      onCorrupt: (digest, kind, reason) => {
        metrics.verificationFailures.inc({ kind: `cached-${kind}` });
        metrics.cacheBytes.set(store.totalBytes);
        logger.warn(
          { digest: digest.toString(), kind, reason },
          `a cached ${kind} no longer matches its digest: dropped, fetched again when asked for`,
        );
        // Peers must stop asking for pieces this agent no longer holds.
        onEvicted(digest);
      },
    },
  );
  await store.init();
  metrics.cacheBytes.set(store.totalBytes);
  metrics.cacheMaxBytes.set(config.SHOAL_AGENT_CACHE_MAX_BYTES);

  // Upstreams: only the configured registries, through one connection pool.
  const registries = new RegistryTable(
    config.SHOAL_AGENT_REGISTRIES,
    config.SHOAL_AGENT_DEFAULT_REGISTRY,
  );
  const upstreamTimeouts = {
    connectMs: config.SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS,
    headersMs: config.SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS,
    idleMs: config.SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS,
  };
  // The upstream client's idle timeout covers the wait for a head too (manifests, tokens,
  // HEADs, which a pull-through registry may fetch before it answers): the headers timeout's
  // length, not a blob body's.
  const upstream = new UpstreamClient({
    ...upstreamTimeouts,
    idleMs: Math.max(upstreamTimeouts.idleMs, upstreamTimeouts.headersMs),
  });

  // Downloads: one per blob, shared by every request for it, filled from the origin (whole
  // blobs through the block reader, see RegistryRequests).
  const requests = new RegistryRequests(upstream, metrics, upstreamTimeouts, logger);
  const downloads = new DownloadTable({
    onStarted: (download) => {
      metrics.downloadsInFlight.set(downloads.active);
      // The bytes it will write count against the quota as soon as their number is known.
      download.sized
        .then(
          (size) => {
            if (download.state === 'running') {
              return store.reserve(download.digest, size);
            }
            return undefined;
          },
          () => undefined,
        )
        .catch((error: unknown) => {
          logger.warn({ err: error }, 'cache eviction for a download in progress failed');
        });
    },
    onSettled: (download, state) => {
      store.release(download.digest);
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
  // Where each blob's bytes came from: a log line per blob per pull, and `shoal-why`.
  const ledger = new BlobLedger();
  const originFetcher = new OriginFetcher({
    store,
    downloads,
    requests,
    onBytes: (bytes) => metrics.fetchedBytes.inc({ source: 'origin' }, bytes),
    onSettled: (target, tally, state) =>
      reportBlob(ledger, logger, {
        digest: target.digest.toString(),
        image: `${target.registry.host}/${target.name}`,
        tally,
        outcome: state === 'verified' ? 'verified' : 'failed',
      }),
    onResume: (target, at, cause) => {
      metrics.originResumes.inc();
      logger.warn(
        { digest: target.digest.toString(), at, err: cause },
        "the origin's blob transfer broke off: asked again from where it stopped",
      );
    },
    onSourceMoved: (reason) => metrics.originSourceMoves.inc({ reason }),
    logger,
  });

  // Swarm: with NATS configured, misses join the blob's swarm; otherwise (and until NATS
  // answers) they go to the origin. The swarm is joined in the background at start.
  const natsUrl = config.SHOAL_NATS_URL;
  const limits = createTransferLimits(
    {
      uploadRateBytes: config.SHOAL_AGENT_UPLOAD_RATE_BYTES,
      downloadRateBytes: config.SHOAL_AGENT_DOWNLOAD_RATE_BYTES,
    },
    metrics,
  );
  // Piece buffers, used again by the swarm's downloads and the peer server's uploads; given
  // back to the collector once idle, so that a burst of pulls does not stay resident.
  const piecePool = new PieceBuffers(POOLED_PIECE_BYTES);
  const poolTrim = setInterval(() => piecePool.trimIdle(IDLE_POOLED_PIECE_BYTES), POOL_TRIM_MS);
  poolTrim.unref();
  let join: SwarmJoin | undefined;
  const swarmNow = (): StartedSwarm | undefined => join?.current;
  onEvicted = (digest) => swarmNow()?.service.forget(digest);
  const fetcher: BlobFetcher = {
    start: (target, signal) => (swarmNow()?.service ?? originFetcher).start(target, signal),
  };

  // Authorization: content by digest only for clients the registry authorizes (unless off).
  const authz = startAuthorizer(config, { requests, metrics, logger });

  // Mirror: the OCI pull API on the configured address.
  const mirror = new Mirror({
    store,
    downloads,
    fetcher,
    requests,
    authz,
    metrics,
    logger,
    maxManifestBytes: config.SHOAL_AGENT_MAX_MANIFEST_BYTES,
    pingTimeoutMs: config.SHOAL_AGENT_AUTHZ_TIMEOUT_MS,
    ledger,
    disk: new DiskHeadroom(config.SHOAL_AGENT_CACHE_DIR, {
      minFreeBytes: config.SHOAL_AGENT_CACHE_MIN_FREE_BYTES,
    }),
  });
  // Typed as fastify's logger so the instance keeps fastify's default generics.
  const fastifyLogger: FastifyBaseLogger = logger;
  const server = Fastify({
    ...httpServerOptions(config),
    loggerInstance: fastifyLogger,
    // Requests are logged by the mirror's own hook (debug, with status and timing).
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  limitConnections(server, config);
  let closing = false;
  // Ready once start() has finished: the mirror, the swarm, preheat and the hosts files.
  let started = false;
  const notReadyReason = (): string | undefined =>
    closing ? 'shutting down' : started ? undefined : 'starting';
  // Ready means the mirror serves, with or without the swarm; the body says which, and what
  // became of containerd's hosts.toml files.
  const readyDetail = (): Record<string, string> => ({
    ...(natsUrl === undefined ? {} : { swarm: swarmNow() === undefined ? 'joining' : 'joined' }),
    ...(hostsFiles === undefined ? {} : { hostsFiles: hostsFiles.summary }),
  });
  registerOpsRoutes(server, {
    registry: serviceMetrics.registry,
    notReadyReason,
    readyDetail,
  });
  registerMirrorRoutes(server, { mirror, registries, metrics, logger, ledger });

  // Peers: pieces for other agents (not on a leecher), and ops for the kubelet's probes and
  // Prometheus off the node (on a leecher too).
  const uploads = config.SHOAL_AGENT_MODE !== 'leecher';
  // TLS on the data path: HTTPS on the peer port with a certificate, and the piece client's
  // trust for https:// peers and seed servers.
  const peerTls = natsUrl === undefined ? undefined : await peerHttps(config, logger);
  const pieceTls = natsUrl === undefined ? undefined : await pieceClientTls(config, logger);
  // The seed servers' record keys, read at start: a bad file stops the agent now.
  const recordKeys =
    natsUrl === undefined || config.SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE === undefined
      ? undefined
      : await readHandoutPublicKeys(config.SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE, 'record');
  const peerServer =
    natsUrl === undefined
      ? undefined
      : Fastify({
          ...httpServerOptions(config),
          ...(peerTls === undefined ? {} : { serverFactory: peerTls.serverFactory }),
          loggerInstance: fastifyLogger,
          logController: new LogController({ disableRequestLogging: true }),
          forceCloseConnections: 'idle',
        });
  if (peerServer !== undefined) {
    limitConnections(peerServer, config);
    if (uploads) {
      // Members only: pieces for requests with a tracker-signed hand-out token.
      const verifier = await pieceVerifier(config, logger);
      registerPeerRoutes(peerServer, {
        store,
        active: (digest) => swarmNow()?.service.activeFetch(digest),
        uploadLimit: limits.upload,
        uploads: {
          max: config.SHOAL_AGENT_MAX_UPLOADS,
          perPeer: config.SHOAL_AGENT_MAX_UPLOADS_PER_PEER,
          timeoutMs: config.SHOAL_AGENT_UPLOAD_TIMEOUT_MS,
        },
        pool: piecePool,
        metrics,
        verifier,
        requireClientCert: peerTls?.verifiesClients === true,
        logger,
        corruptPieces: config.SHOAL_AGENT_FAULT_CORRUPT_PIECES,
      });
    }
    registerOpsRoutes(peerServer, {
      registry: serviceMetrics.registry,
      notReadyReason,
      readyDetail,
    });
  }

  // containerd hosts.toml, when configured: pointing at the mirror only while it listens.
  const hostsFiles = createHostsFiles(config, {
    registries: registries.registries,
    metrics,
    logger,
  });

  let address = '';
  let preheat: StartedPreheat | undefined;
  return {
    url: () => address,
    start: async () => {
      address = await listenOn(server, config.SHOAL_AGENT_LISTEN);
      if (peerServer !== undefined) {
        await peerServer.listen({
          host: config.SHOAL_AGENT_PEER_LISTEN.host,
          port: config.SHOAL_AGENT_PEER_LISTEN.port,
        });
      }
      if (natsUrl !== undefined) {
        join = joinSwarm(
          () =>
            startSwarm(
              { ...config, SHOAL_NATS_URL: natsUrl },
              {
                store,
                requests,
                metrics,
                logger,
                limits,
                pool: piecePool,
                ledger,
                ...(pieceTls === undefined ? {} : { pieceTls }),
                ...(recordKeys === undefined ? {} : { recordKeys }),
              },
            ),
          {
            logger,
            metrics,
            onJoined: async (swarm) => {
              swarm.service.open();
              // Preheat: this node's presence for the watcher, and the node tasks it hands out.
              preheat = await startNodePreheat(config, {
                swarm,
                store,
                downloads,
                registries,
                metrics,
                logger,
              }).catch((error: unknown) => {
                logger.error({ err: error }, 'preheat could not start; pulls are not affected');
                return undefined;
              });
            },
          },
        );
        // A first attempt before declaring the agent started, so a healthy cluster starts
        // with its swarm; an unreachable one costs at most that attempt's timeout.
        await join.settledOnce;
      }
      logger.info(
        {
          url: address,
          registries: registries.registries.map((r) => r.host),
          cacheBytes: store.totalBytes,
        },
        'mirror listening',
      );
      await hostsFiles?.write(
        hostsMirrorUrl(
          config.SHOAL_AGENT_HOSTS_MIRROR_URL,
          config.SHOAL_AGENT_LISTEN,
          Number(new URL(address).port),
        ),
      );
      started = true;
    },
    close: async () => {
      if (closing) {
        return;
      }
      // Readiness fails first, then the listener drains, then downloads and upstreams stop.
      closing = true;
      clearInterval(poolTrim);
      // Preheat stops before the drain: no preheat download starts while clients finish, and
      // a task under way is handed back (nak) for the next agent instead of having its blobs
      // reported failed when the cut aborts their downloads. Its consumer closes meanwhile.
      const preheatStopped = preheat?.stop();
      // containerd stops asking the mirror before it goes away.
      await hostsFiles?.remove();
      await drainOrCut([server, ...(peerServer === undefined ? [] : [peerServer])], {
        drainMs: drainMs(config.SHOAL_SHUTDOWN_TIMEOUT_MS),
        // Aborting the downloads ends the responses they feed as failed, never as complete.
        cut: () => downloads.close(),
        logger,
        inFlight: () => ({ downloads: downloads.active }),
      });
      await preheatStopped;
      await downloads.close();
      authz?.close();
      await join?.close();
      peerTls?.stop();
      pieceTls?.stop();
      requests.close();
      await upstream.close();
    },
  };
}
