/**
 * The tracker's composition root: every dependency built in order, every consumer and server
 * paired with its shutdown. Tests call `buildApp` to run the real wiring in-process.
 */

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

import { STREAMS, type StreamSpec } from '@shoal/proto';
import {
  ConfigError,
  createLogger,
  createMetrics,
  listenOn,
  readHandoutPrivateKey,
  type Logger,
  type Service,
  httpServerOptions,
  limitConnections,
} from '@shoal/runtime';
import {
  connectNats,
  drainWithin,
  ensureStreams,
  followNatsLink,
  jetStreamFor,
  redeclareOnReconnect,
  watchStreamUsage,
  type NatsConnection,
  type NatsLink,
} from '@shoal/runtime/nats';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';

import type { TrackerConfig } from './config.js';
import { ensureWantsConsumer, WantsConsumer, type Waiter } from './consumers/piece-want.js';
import { SwarmStreamConsumer } from './consumers/swarm-stream.js';
import { LoadTracker } from './handout/load.js';
import { HandoutTokens } from './handout/tokens.js';
import { WaitingAskers } from './handout/waiting.js';
import { registerTrackerRoutes } from './http/ops.js';
import { createTrackerMetrics } from './metrics.js';
import { SeedRequester } from './seed/requests.js';
import { defaultReplicaId } from './shard/config.js';
import { HEARTBEATS_MISSED, ReplicaMembership } from './shard/membership.js';
import { ReplicaSet } from './shard/replicas.js';
import { BlobShard } from './shard/shard.js';
import { seedPeerMatcher } from './swarm/config.js';
import { SwarmView, type SwarmSnapshot } from './swarm/view.js';

export { loadTrackerConfig, type TrackerConfig } from './config.js';
export type { SwarmEntry, SwarmSnapshot } from './swarm/view.js';

/** How long a seed request may wait for JetStream's acknowledgement, in ms. */
const PUBLISH_TIMEOUT_MS = 5_000;
/**
 * Askers told of no holder that hear of the first one without asking again: at most this
 * many (blob, asker) pairs, each for this long. Agents rely on the push and ask again only
 * after up to 60 s (`@shoal/proto` `wantPacing`), so an entry outlives that.
 */
const WAITING_ASKERS_MAX = 50_000;
const WAITING_ASKER_TTL_MS = 120_000;
/**
 * Downloads in progress this replica answered, whose haves it answers with fresh peers: at
 * most this many (blob, asker) pairs (the oldest go first; their next want brings them back).
 */
const FOLLOWED_ASKERS_MAX = 100_000;
/** How long draining the NATS connection may take before it is closed outright, in ms. */
const DRAIN_TIMEOUT_MS = 10_000;

export interface TrackerOverrides {
  readonly logger?: Logger;
  /** The clock, in ms since the epoch (default `Date.now`); tests move it to expire peers. */
  readonly now?: () => number;
}

export interface TrackerApp extends Service {
  /** The ops listener's address once started, e.g. `http://127.0.0.1:65020`. */
  readonly url: () => string;
  /** Read-only access to this replica's swarm view. */
  readonly view: SwarmSnapshot;
  /** Why the tracker is not ready (what /readyz reports), or undefined when it is. */
  readonly notReadyReason: () => string | undefined;
}

export async function buildApp(
  config: TrackerConfig,
  overrides: TrackerOverrides = {},
): Promise<TrackerApp> {
  // Telemetry: logs and metrics first, so everything after can report.
  const logger =
    overrides.logger ?? createLogger({ service: 'tracker', level: config.SHOAL_LOG_LEVEL });
  const now = overrides.now ?? Date.now;

  // Hand-out tokens: every hand-out lets its asker fetch the blob's pieces for a while.
  const keyFile = config.SHOAL_TRACKER_HANDOUT_KEY_FILE;
  let tokens: HandoutTokens | undefined;
  if (config.SHOAL_TRACKER_PIECE_AUTH === 'off') {
    logger.warn(
      'SHOAL_TRACKER_PIECE_AUTH=off: hand-outs carry no tokens; peers and the seed server must also serve pieces to anyone',
    );
  } else if (keyFile === undefined) {
    throw new ConfigError([
      'SHOAL_TRACKER_HANDOUT_KEY_FILE: required unless SHOAL_TRACKER_PIECE_AUTH=off',
    ]);
  } else {
    tokens = new HandoutTokens(
      await readHandoutPrivateKey(keyFile),
      config.SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS,
    );
  }

  // State: the swarm view and the hand-out load, both rebuilt from scratch by every replica.
  const view = new SwarmView({
    maxAgeMs: config.SHOAL_TRACKER_PEER_MAX_AGE_MS,
    maxEntries: config.SHOAL_TRACKER_MAX_ENTRIES,
  });
  const load = new LoadTracker(config.SHOAL_TRACKER_LOAD_WINDOW_MS);
  const waiting = new WaitingAskers<Waiter>(WAITING_ASKERS_MAX, WAITING_ASKER_TTL_MS);
  // Downloads this replica answered, pushed fresh peers as they announce progress.
  const following = config.SHOAL_TRACKER_PUSH_ON_HAVE
    ? new WaitingAskers<Waiter>(FOLLOWED_ASKERS_MAX, WAITING_ASKER_TTL_MS)
    : undefined;
  const serviceMetrics = createMetrics('tracker');
  const metrics = createTrackerMetrics(serviceMetrics, view);
  const maySeed = seedPeerMatcher(config.SHOAL_TRACKER_SEED_PEERS);
  // This replica's share of the blobs, when they are split between the live replicas.
  const shard = config.SHOAL_TRACKER_SHARD_BY_BLOB
    ? new BlobShard({
        view,
        replicas: new ReplicaSet(
          config.SHOAL_TRACKER_REPLICA_ID ??
            defaultReplicaId(hostname(), randomBytes(4).toString('hex')),
          HEARTBEATS_MISSED * config.SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS,
        ),
        metrics,
        logger,
        now,
        maySeed,
        maxKeptHaves: config.SHOAL_TRACKER_MAX_KEPT_HAVES,
      })
    : undefined;

  // Ops listener: health, readiness and metrics.
  const stopping = new AbortController();
  // A function, not the property, so checks after an await are not narrowed away.
  const stopped = (): boolean => stopping.signal.aborted;
  let nc: NatsConnection | undefined;
  let natsLink: NatsLink | undefined;
  let swarm: SwarmStreamConsumer | undefined;
  const notReadyReason = (): string | undefined => {
    if (stopped()) {
      return 'shutting down';
    }
    if (nc === undefined) {
      return 'connecting to NATS';
    }
    if (natsLink?.up !== true || nc.isClosed()) {
      return 'NATS disconnected';
    }
    if (swarm?.caughtUp !== true) {
      return 'replaying the swarm stream';
    }
    return undefined;
  };
  // Typed as fastify's logger so the instance keeps fastify's default generics.
  const fastifyLogger: FastifyBaseLogger = logger;
  const server = Fastify({
    ...httpServerOptions(config),
    loggerInstance: fastifyLogger,
    // Probes and scrapes would drown the log.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  limitConnections(server, config);
  registerTrackerRoutes(server, {
    registry: serviceMetrics.registry,
    notReadyReason,
    view: view.snapshot(now),
  });

  let address = '';
  let wants: WantsConsumer | undefined;
  let membership: ReplicaMembership | undefined;
  let sweep: NodeJS.Timeout | undefined;
  let usage: { stop(): void } | undefined;
  let starting: Promise<void> | undefined;
  let closed: Promise<void> | undefined;

  const start = async (): Promise<void> => {
    // The ops listener first, so probes are answered (503) while NATS and the replay run.
    address = await listenOn(server, config.SHOAL_TRACKER_LISTEN);
    logger.info({ url: address }, 'ops listening');

    // NATS: one connection; readiness follows its state.
    const connection = await connectNats(config, 'shoal-tracker', logger);
    nc = connection;
    natsLink = followNatsLink(connection);
    const { js, jsm } = await jetStreamFor(connection);

    // Streams the tracker owns, created or brought to their declared configuration.
    await ensureStreams(jsm, ownedStreams(), config.SHOAL_NATS_STREAM_REPLICAS);
    usage = watchStreamUsage(jsm, ownedStreams(), serviceMetrics, logger);

    // Replicas: hear the others before the replay, so it applies only this replica's share.
    if (shard !== undefined) {
      membership = new ReplicaMembership({
        nc: connection,
        shard,
        heartbeatMs: config.SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS,
        metrics,
        logger,
        now,
        // Askers waiting on blobs that moved away follow them to their new owner.
        onRebalance: () => wants?.handOver(),
      });
      membership.listen();
    }

    // Swarm view: replay SHOAL_SWARM from the start, then keep following it.
    swarm = new SwarmStreamConsumer({
      js,
      jsm,
      view,
      metrics,
      logger,
      now,
      maySeed,
      ...(shard === undefined ? {} : { shard }),
      // Wants are answered only once the replay is done; until then nobody waits.
      onHolder: (blob, peer) => wants?.holderAppeared(blob, peer),
      onHave: (have) => wants?.haveApplied(have),
    });
    await swarm.start();
    await swarm.whenCaughtUp(stopping.signal);
    if (stopped()) {
      return;
    }

    // Wants: only once the view is whole, so no hand-out or seed request comes from half a
    // swarm; meanwhile the other replicas answer.
    await ensureWantsConsumer(jsm);
    if (stopped()) {
      return;
    }
    // The same again after each reconnect: a server back with an empty store has none of them.
    // The swarm consumer is opened again (from the first message when the stream was made
    // anew, by this replica or another: it checks for itself); the wants consumer when it
    // was made anew.
    redeclareOnReconnect(connection, logger, async () => {
      await ensureStreams(jsm, ownedStreams(), config.SHOAL_NATS_STREAM_REPLICAS);
      await swarm?.reopen();
      if (await ensureWantsConsumer(jsm)) {
        await wants?.reopen();
      }
    });
    wants = new WantsConsumer(
      js,
      {
        nc: connection,
        view,
        load,
        seeds: new SeedRequester(js, { timeoutMs: PUBLISH_TIMEOUT_MS }),
        tokens,
        metrics,
        logger,
        now,
        waiting,
        ...(following === undefined ? {} : { following }),
        ...(shard === undefined ? {} : { shard }),
        ...(membership === undefined ? {} : { dropReplica: (id: string) => membership?.drop(id) }),
      },
      config.SHOAL_TRACKER_WANT_QUEUE_MAX,
    );
    wants.start();
    // Only now, with the view whole and forwarded wants taken, do the others hand over.
    membership?.announce();

    // Housekeeping: expired peers, idle load counters, tokens no longer handed out and
    // askers no longer waiting leave memory.
    const sweepMs = Math.min(Math.max(config.SHOAL_TRACKER_PEER_MAX_AGE_MS / 10, 1_000), 60_000);
    sweep = setInterval(() => {
      const removed = view.expire(now());
      load.prune(now());
      tokens?.prune(now());
      waiting.prune(now());
      following?.prune(now());
      shard?.expire(now(), config.SHOAL_TRACKER_PEER_MAX_AGE_MS);
      if (removed > 0) {
        logger.debug({ removed }, 'expired swarm entries removed');
      }
    }, sweepMs);
    sweep.unref();
    logger.info(
      {
        entries: view.entryCount,
        blobs: view.blobCount,
        ...(shard === undefined
          ? {}
          : { replica: shard.replicas.self, replicas: shard.replicas.members }),
      },
      'tracker ready',
    );
  };

  const close = async (): Promise<void> => {
    // Readiness fails first; then consumers stop, NATS drains, and the listener closes last
    // so probes see 503 throughout.
    stopping.abort();
    await starting?.catch(() => undefined);
    clearInterval(sweep);
    usage?.stop();
    // The others take this replica's blobs first, then its queued wants go back to them.
    await membership?.leave();
    await wants?.stop();
    await swarm?.stop();
    if (nc !== undefined) {
      await drainWithin(nc, DRAIN_TIMEOUT_MS, logger);
    }
    await server.close();
  };

  return {
    url: () => address,
    view: view.snapshot(now),
    notReadyReason,
    start: () => {
      starting = start();
      return starting;
    },
    close: () => {
      closed ??= close();
      return closed;
    },
  };
}

/** The streams the tracker owns. */
function ownedStreams(): StreamSpec[] {
  return [STREAMS.swarm, STREAMS.wants];
}
