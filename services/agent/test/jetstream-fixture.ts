/**
 * A real nats-server with JetStream for the agent's unit tests: the server, a connection, the
 * JetStream clients, and the streams a test names; `close` drains and stops it all.
 */
import type { KeyObject } from 'node:crypto';

import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  encodeMessage,
  handout,
  handoutSubject,
  pieceWantSubject,
  type PeerInfo,
  type StreamSpec,
} from '@shoal/proto';
import { createLogger, createMetrics, type Logger } from '@shoal/runtime';
import { ensureStreams } from '@shoal/runtime/nats';
import type { PieceBuffers } from '@shoal/pieces';
import { UpstreamClient } from '@shoal/registry';
import { RateLimiter } from '@shoal/runtime';
import { startNats, type NatsServer } from '@shoal/testkit';

import { createAgentMetrics, type AgentMetrics } from '../src/metrics.js';
import type { FsContentStore } from '../src/cache/content-store.js';
import type { BlobDownload } from '../src/cache/download.js';
import { SwarmClient } from '../src/swarm/client.js';
import { PieceClient } from '../src/swarm/piece-client.js';
import { SwarmFetch, type SwarmFetchSettings } from '../src/swarm/swarm-fetch.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';

export interface JetStreamFixture {
  readonly nats: NatsServer;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

export async function startJetStream(streams: readonly StreamSpec[]): Promise<JetStreamFixture> {
  const nats = await startNats();
  const nc = await connect({ servers: nats.url, timeout: 5_000 });
  const js = jetstream(nc, { timeout: 5_000 });
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  await ensureStreams(jsm, streams, 1);
  return {
    nats,
    nc,
    js,
    jsm,
    close: async () => {
      await nc.drain();
      await nats.stop();
    },
  };
}

/**
 * A started swarm client of the agent `self` on `fixture`, with a silent logger and metrics of
 * its own, sending its haves every `haveIntervalMs`; the caller closes it.
 */
export function startSwarmClient(
  fixture: JetStreamFixture,
  self: PeerInfo,
  uploads: boolean,
  haveIntervalMs = 200,
  /** The seed record public keys the agent trusts (none: it follows no record). */
  recordKeys: readonly KeyObject[] = [],
): { client: SwarmClient; logger: Logger; metrics: AgentMetrics } {
  const logger = createLogger({ service: 'test', level: 'silent' });
  const metrics = createAgentMetrics(createMetrics('agent'));
  const client = new SwarmClient({
    nc: fixture.nc,
    js: fixture.js,
    jsm: fixture.jsm,
    self,
    uploads,
    haveIntervalMs,
    recordKeys,
    logger,
    metrics,
  });
  client.start();
  return { client, logger, metrics };
}

/** The upstream client's timeouts in `swarmFetchNoOrigin`, the whole-blob reader's too. */
const NO_ORIGIN_TIMEOUTS = { connectMs: 1_000, headersMs: 1_000, idleMs: 1_000 };

/**
 * A swarm fetch of `download` whose origin is unreachable (nothing listens on port 1, so a
 * fallback fails the download at once): what it gets, it got from the swarm.
 */
export function swarmFetchNoOrigin(
  download: BlobDownload,
  name: string,
  deps: {
    client: SwarmClient;
    store: FsContentStore;
    pool: PieceBuffers;
    metrics: AgentMetrics;
    logger: Logger;
  },
  settings: SwarmFetchSettings,
): SwarmFetch {
  return new SwarmFetch(
    download,
    {
      registry: { host: '127.0.0.1:1', url: new URL('http://127.0.0.1:1') },
      name,
      digest: download.digest,
      authorization: undefined,
    },
    {
      ...deps,
      pieces: new PieceClient({ idleTimeoutMs: 5_000, minRateBytes: 0 }),
      requests: new RegistryRequests(
        new UpstreamClient(NO_ORIGIN_TIMEOUTS),
        deps.metrics,
        NO_ORIGIN_TIMEOUTS,
      ),
      downloadLimit: new RateLimiter(0),
      settings,
    },
  );
}

/**
 * The tracker, played: every want of agent `self` for `blob` is answered with a hand-out that
 * names `holder` alone, holding the whole blob (a seed server when `seed`). Unsubscribe when
 * done.
 */
export function answerWantsWith(
  nc: NatsConnection,
  blob: string,
  self: string,
  holder: { readonly id: string; readonly url: string; readonly seed: boolean },
): Subscription {
  return nc.subscribe(pieceWantSubject(blob, self), {
    callback: () => {
      nc.publish(
        handoutSubject(self),
        encodeMessage(handout, {
          type: 'handout',
          blob,
          peers: [
            {
              peer: { id: holder.id, url: holder.url },
              pieces: [],
              complete: true,
              seed: holder.seed,
            },
          ],
        }),
      );
    },
  });
}
