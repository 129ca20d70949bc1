/**
 * Connects the agent to the swarm. The NATS client is loaded only here, so an agent without
 * a swarm does not carry it.
 *
 * The agent never waits for the swarm to start serving: `joinSwarm` keeps trying in the
 * background (NATS may start after the agents, or be down for a while) and hands the swarm
 * over once it is there. Until then the agent is a plain verifying mirror of the origin.
 */
import type { KeyObject } from 'node:crypto';
import { hostname } from 'node:os';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { PieceBuffers } from '@shoal/pieces';
import type { PeerInfo } from '@shoal/proto';
import { ConfigError, type Logger } from '@shoal/runtime';

import type { FsContentStore } from '../cache/content-store.js';
import type { AgentMetrics } from '../metrics.js';
import type { BlobLedger } from '../provenance/ledger.js';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { SwarmConfig } from './config.js';
import type { TransferLimits } from './limits.js';
import type { RawTlsOptions } from '@shoal/runtime/raw-http';
import { SwarmService } from './service.js';

/** How long the NATS connection may drain at close, in ms. */
const DRAIN_TIMEOUT_MS = 2_000;

export interface StartedSwarm {
  readonly service: SwarmService;
  /** The swarm's NATS connection, for the agent's other consumers (preheat). */
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

export async function startSwarm(
  config: SwarmConfig & { SHOAL_NATS_URL: string },
  deps: {
    store: FsContentStore;
    requests: RegistryRequests;
    metrics: AgentMetrics;
    logger: Logger;
    limits: TransferLimits;
    pool: PieceBuffers;
    ledger: BlobLedger;
    /** How the piece client reaches https:// sources (default: the system's CAs). */
    pieceTls?: RawTlsOptions;
    /** The seed servers' record public keys (none: every blob is hashed here). */
    recordKeys?: readonly KeyObject[];
  },
): Promise<StartedSwarm> {
  const { connectNats, jetStreamFor } = await import('@shoal/runtime/nats');
  const nc = await connectNats(
    {
      SHOAL_NATS_URL: config.SHOAL_NATS_URL,
      SHOAL_NATS_STREAM_REPLICAS: 1,
      SHOAL_NATS_PING_INTERVAL_MS: config.SHOAL_NATS_PING_INTERVAL_MS,
      SHOAL_NATS_RECONNECT_JITTER_MS: config.SHOAL_NATS_RECONNECT_JITTER_MS,
      ...definedOnly({
        SHOAL_NATS_CREDS_FILE: config.SHOAL_NATS_CREDS_FILE,
        SHOAL_NATS_TLS_CA_FILE: config.SHOAL_NATS_TLS_CA_FILE,
        SHOAL_NATS_TLS_CERT_FILE: config.SHOAL_NATS_TLS_CERT_FILE,
        SHOAL_NATS_TLS_KEY_FILE: config.SHOAL_NATS_TLS_KEY_FILE,
      }),
    },
    `shoal-agent-${config.SHOAL_AGENT_PEER_ID}`,
    deps.logger,
    config.SHOAL_AGENT_PEER_ID,
  );
  let jet: Awaited<ReturnType<typeof jetStreamFor>>;
  try {
    jet = await jetStreamFor(nc);
  } catch (error) {
    // Connected, but JetStream does not answer (yet): the next attempt starts afresh.
    await nc.close().catch(() => undefined);
    throw error;
  }
  const { js, jsm } = jet;
  const self: PeerInfo = {
    id: config.SHOAL_AGENT_PEER_ID,
    url:
      config.SHOAL_AGENT_PEER_URL ??
      `${config.SHOAL_AGENT_PEER_TLS_CERT_FILE === undefined ? 'http' : 'https'}://${hostname()}:${config.SHOAL_AGENT_PEER_LISTEN.port}`,
    ...(config.SHOAL_AGENT_ZONE === undefined ? {} : { zone: config.SHOAL_AGENT_ZONE }),
  };
  const service = new SwarmService({ nc, js, jsm, self, config, ...deps });
  return {
    service,
    nc,
    js,
    jsm,
    close: async () => {
      await service.close();
      // Bounded as the publishes are: draining a connection to a server that is away would
      // wait for a reconnect that may not come before the shutdown's deadline.
      await Promise.race([
        nc.drain().catch(() => undefined),
        new Promise<void>((resolve) => setTimeout(resolve, DRAIN_TIMEOUT_MS).unref()),
      ]);
      if (!nc.isClosed()) {
        await nc.close().catch(() => undefined);
      }
    },
  };
}

/** `record` without its undefined entries (for settings under exactOptionalPropertyTypes). */
function definedOnly<T extends Record<string, string | undefined>>(
  record: T,
): { [K in keyof T]?: string } {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]?: string;
  };
}

/** First wait between two attempts to join the swarm, in ms; it doubles up to the maximum. */
const JOIN_RETRY_FIRST_MS = 500;
/** Longest wait between two attempts to join the swarm, in ms. */
const JOIN_RETRY_MAX_MS = 15_000;

/** A swarm being joined in the background. */
export interface SwarmJoin {
  /** The swarm, once joined. */
  readonly current: StartedSwarm | undefined;
  /** Resolves once the first attempt has ended, joined (and `onJoined` done) or not. */
  readonly settledOnce: Promise<void>;
  /** Stops trying, and closes the swarm if it was joined. */
  close(): Promise<void>;
}

/**
 * Tries `start` until it succeeds, waiting longer after each failure, and calls `onJoined`
 * with the swarm. Failures are logged and counted, never thrown: the agent keeps serving.
 */
export function joinSwarm(
  start: () => Promise<StartedSwarm>,
  deps: {
    logger: Logger;
    metrics: AgentMetrics;
    onJoined: (swarm: StartedSwarm) => Promise<void>;
  },
): SwarmJoin {
  const { logger, metrics } = deps;
  const stop = new AbortController();
  let current: StartedSwarm | undefined;
  let firstSettled: () => void = () => undefined;
  const settledOnce = new Promise<void>((resolve) => {
    firstSettled = resolve;
  });
  // A function, not the property, because it changes while an attempt is awaited.
  const stopped = (): boolean => stop.signal.aborted;
  const attempts = (async () => {
    for (let waitMs = JOIN_RETRY_FIRST_MS; !stopped();) {
      let swarm: StartedSwarm;
      try {
        swarm = await start();
      } catch (error) {
        metrics.swarmJoinFailures.inc();
        if (error instanceof ConfigError) {
          // Trying again cannot help: say so once, and stay a plain mirror.
          logger.error({ err: error }, 'swarm settings are invalid; serving as a plain mirror');
          return;
        }
        logger.warn(
          { err: error, retryMs: waitMs },
          'swarm unreachable; serving as a plain mirror until it answers',
        );
        firstSettled();
        await sleep(waitMs, stop.signal);
        waitMs = Math.min(waitMs * 2, JOIN_RETRY_MAX_MS);
        continue;
      }
      if (stopped()) {
        await swarm.close();
        return;
      }
      current = swarm;
      metrics.swarmJoined.set(1);
      logger.info('joined the swarm');
      await deps.onJoined(swarm);
      return;
    }
  })().finally(() => firstSettled());
  return {
    get current() {
      return current;
    },
    settledOnce,
    close: async () => {
      stop.abort();
      await attempts;
      await current?.close();
    },
  };
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}
