/**
 * A swarm fetch whose only source is one peer behind a link the test controls: a real
 * nats-server (piece hashes, a hand-out), a real piece server holding the whole blob behind a
 * fault proxy (the link: slow, silent), and a real registry behind a recording fault proxy
 * (the origin). For tests of how a fetch treats its source's pace.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { PieceBuffers } from '@shoal/pieces';
import { encodeMessage, handout, handoutSubject, parseDigest, STREAMS } from '@shoal/proto';
import { UpstreamClient } from '@shoal/registry';
import { RateLimiter } from '@shoal/runtime';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  type FaultProxy,
  type Teardown,
} from '@shoal/testkit';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import type { AgentMetrics } from '../src/metrics.js';
import type { SwarmClient } from '../src/swarm/client.js';
import { PieceClient } from '../src/swarm/piece-client.js';
import { SwarmFetch } from '../src/swarm/swarm-fetch.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';
import { blobDigest, publishHashes, servePieces } from './blob-pieces.js';
import { startJetStream, startSwarmClient, type JetStreamFixture } from './jetstream-fixture.js';

const TIMEOUTS = { connectMs: 2_000, headersMs: 5_000, idleMs: 5_000 };
const REPOSITORY = 'team/linked';

export interface LinkedPeer {
  readonly fixture: JetStreamFixture;
  /** The registry's recording proxy: what reached the origin. */
  readonly origin: FaultProxy;
  /** The peer's link. */
  readonly link: FaultProxy;
  /** The layer's bytes, which the peer holds whole. */
  readonly blob: Buffer;
  readonly registryHost: string;
  /** A directory for the fetch's store. */
  readonly root: string;
}

/** Starts the cluster around one pushed layer of `layerBytes`; stopped by `teardown`. */
export async function startLinkedPeer(
  teardown: Teardown,
  name: string,
  layerBytes: number,
): Promise<LinkedPeer> {
  const fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces, STREAMS.wants]);
  teardown.add('nats', () => fixture.close());
  const dir = await makeTempDir(name);
  teardown.add('dir', () => dir.remove());
  const root = await mkdtemp(join(tmpdir(), `shoal-${name}-`));
  teardown.add('root', () => rm(root, { recursive: true, force: true }));
  const registry = await startRegistry();
  teardown.add('registry', () => registry.stop());
  const origin = await startFaultProxy({ upstream: registry.url });
  teardown.add('origin proxy', () => origin.stop());
  const image = await generateImage(join(dir.path, 'image'), {
    layerSizes: [layerBytes],
    seed: name,
  });
  await pushImage(image, registry.host, REPOSITORY);
  const layer = image.layers[0];
  assert.ok(layer !== undefined);
  const blob = await readFile(
    join(image.layoutDir, 'blobs', 'sha256', parseDigest(layer.digest).hex),
  );
  const peer = await servePieces(blob);
  teardown.add('peer', () => peer.server.close());
  const link = await startFaultProxy({ upstream: peer.url });
  teardown.add('link', () => link.stop());
  return { fixture, origin, link, blob, registryHost: registry.host, root };
}

export interface LinkedFetch {
  readonly download: BlobDownload;
  readonly metrics: AgentMetrics;
  /** The blob's pieces. */
  readonly count: number;
  /** The fetch, run to its end. */
  readonly running: Promise<void>;
  /** The fetch's swarm client. */
  readonly client: SwarmClient;
}

/**
 * Runs a swarm fetch of the peer's blob, the peer handed out as its only source. The piece
 * client has the agent's defaults (silent for 15 s, or below 16 KiB/s after that, is given
 * up; a new connection after 3 s) with the silence floor given.
 */
export async function fetchFromLinkedPeer(
  teardown: Teardown,
  peer: LinkedPeer,
  settings: { readonly id: string; readonly silenceMinMs: number; readonly stallTimeoutMs: number },
): Promise<LinkedFetch> {
  const self = { id: settings.id, url: 'http://127.0.0.1:65002' };
  const { js, nc } = peer.fixture;
  const { client, logger, metrics } = startSwarmClient(peer.fixture, self, false);
  teardown.add('swarm client', () => client.close());
  const store = new FsContentStore(join(peer.root, 'store'), 64 * 1024 * 1024);
  await store.init();
  const pool = new PieceBuffers(4 * 1024 * 1024);
  const digest = parseDigest(blobDigest(peer.blob));
  const download = new BlobDownload(digest, await store.createTemp(), pool);
  const upstreamClient = new UpstreamClient(TIMEOUTS);
  teardown.add('upstream client', () => upstreamClient.close());
  const fetch = new SwarmFetch(
    download,
    {
      registry: { host: peer.registryHost, url: new URL(peer.origin.url) },
      name: REPOSITORY,
      digest,
      authorization: undefined,
    },
    {
      client,
      pieces: new PieceClient({
        idleTimeoutMs: 15_000,
        minRateBytes: 16 * 1024,
        connectTimeoutMs: 3_000,
        silenceMinMs: settings.silenceMinMs,
      }),
      store,
      pool,
      requests: new RegistryRequests(upstreamClient, metrics, TIMEOUTS),
      downloadLimit: new RateLimiter(0),
      metrics,
      logger,
      settings: {
        concurrency: 4,
        stallTimeoutMs: settings.stallTimeoutMs,
        wantIntervalMs: 60_000,
      },
    },
  );
  const count = await publishHashes(js, peer.blob);
  const running = fetch.run(new AbortController().signal);
  nc.publish(
    handoutSubject(self.id),
    encodeMessage(handout, {
      type: 'handout',
      blob: digest.toString(),
      peers: [
        {
          peer: { id: 'linked-peer', url: peer.link.url },
          pieces: [[0, count]],
          complete: true,
          seed: false,
        },
      ],
    }),
  );
  return { download, metrics, count, running, client };
}

/** Asserts the fetch ended verified with no fallback and no blob read at the origin. */
export async function assertNothingFromOrigin(peer: LinkedPeer, fetch: LinkedFetch): Promise<void> {
  assert.equal(fetch.download.state, 'verified', String(fetch.download.error));
  const fallbacks = await fetch.metrics.swarmFallbacks.get();
  assert.deepEqual(
    fallbacks.values.filter((v) => v.value > 0),
    [],
    'no fallback to the origin',
  );
  assert.equal(
    peer.origin.received().filter((r) => r.url.includes('/blobs/')).length,
    0,
    'the registry was asked for none of the blob',
  );
}
