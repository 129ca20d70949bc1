/**
 * A swarm fetch's late origin read with sources that changed since the download started: a
 * real nats-server (piece hashes, a hand-out), a real piece server holding every other piece,
 * and a real registry behind a fault proxy that records which credentials reached it. The
 * swarm stalls with pieces 1 and 3 missing, so the origin is read in two ranges; the credential
 * the download started with has been revoked since, another reader's works. The refused one is
 * tried once, not once per range, and the download verifies.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import { encodeMessage, handout, handoutSubject, parseDigest, STREAMS } from '@shoal/proto';
import { UpstreamClient, type UpstreamRegistry } from '@shoal/registry';
import { RateLimiter } from '@shoal/runtime';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  Teardown,
  waitFor,
  type FaultProxy,
  type Registry,
} from '@shoal/testkit';

import { FsContentStore } from '../src/cache/content-store.js';
import type { AgentMetrics } from '../src/metrics.js';
import { BlobDownload } from '../src/cache/download.js';
import { PieceClient } from '../src/swarm/piece-client.js';
import { SwarmFetch } from '../src/swarm/swarm-fetch.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';
import { blobDigest, publishHashes, servePieces } from './blob-pieces.js';
import { startJetStream, startSwarmClient, type JetStreamFixture } from './jetstream-fixture.js';

const SELF = { id: 'agent-origin-sources', url: 'http://127.0.0.1:65002' };
const TIMEOUTS = { connectMs: 2_000, headersMs: 5_000, idleMs: 5_000 };
const repository = 'team/app';
/** The same blob in another repository: another source with the same credential. */
const otherRepository = 'team/other';
const username = 'puller';

function basic(password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

describe('SwarmFetch late origin reads', () => {
  const teardown = new Teardown();
  let fixture: JetStreamFixture;
  let registry: Registry;
  let proxy: FaultProxy;
  let peerUrl: string;
  let blob: Buffer;
  let root: string;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    teardown.add('nats', () => fixture.close());
    const dir = await makeTempDir('fetch-origin');
    teardown.add('dir', () => dir.remove());
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-origin-'));
    teardown.add('root', () => rm(root, { recursive: true, force: true }));
    registry = await startRegistry({ auth: { username, password: 'first-password' } });
    teardown.add('registry', () => registry.stop());
    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());
    // Four pieces of 256 KiB and a few bytes more (the layer is a tarball of 1 MiB).
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [1024 * 1024],
      seed: 'fetch-origin',
    });
    for (const name of [repository, otherRepository]) {
      await pushImage(image, registry.host, name, { destCreds: `${username}:first-password` });
    }
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    blob = await readFile(join(image.layoutDir, 'blobs', 'sha256', parseDigest(layer.digest).hex));
    // A peer holding the whole blob (it is advertised as holding pieces 0 and 2 only).
    const peer = await servePieces(blob);
    teardown.add('peer', () => peer.server.close());
    peerUrl = peer.url;
  });

  after(() => teardown.run());

  /**
   * Runs a swarm fetch of the blob started with `password`, whose swarm stalls with pieces 1
   * and 3 onwards missing (a peer advertises 0 and 2), so the origin is read in two ranges.
   * `prepare` offers the readers' sources before it runs.
   */
  const stalledFetch = async (
    password: string,
    prepare: (download: BlobDownload, upstream: UpstreamRegistry) => Promise<void>,
  ): Promise<{ download: BlobDownload; metrics: AgentMetrics; count: number }> => {
    const { js, nc } = fixture;
    const { client, logger, metrics } = startSwarmClient(fixture, SELF, false);
    teardown.add('swarm client', () => client.close());
    const store = new FsContentStore(join(root, `store-${password}`), 64 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(4 * 1024 * 1024);
    const digest = parseDigest(blobDigest(blob));
    const upstream = { host: registry.host, url: new URL(proxy.url) };
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const upstreamClient = new UpstreamClient(TIMEOUTS);
    teardown.add('upstream client', () => upstreamClient.close());
    const fetch = new SwarmFetch(
      download,
      { registry: upstream, name: repository, digest, authorization: basic(password) },
      {
        client,
        pieces: new PieceClient({ idleTimeoutMs: 5_000, minRateBytes: 0 }),
        store,
        pool,
        requests: new RegistryRequests(upstreamClient, metrics, TIMEOUTS),
        downloadLimit: new RateLimiter(0),
        metrics,
        logger,
        settings: { concurrency: 4, stallTimeoutMs: 1_500, wantIntervalMs: 60_000 },
      },
    );
    await prepare(download, upstream);

    // The seed server's piece hashes, and a hand-out naming a peer with pieces 0 and 2.
    const count = await publishHashes(js, blob);
    const running = fetch.run(new AbortController().signal);
    const advertise = (): void =>
      nc.publish(
        handoutSubject(SELF.id),
        encodeMessage(handout, {
          type: 'handout',
          blob: digest.toString(),
          peers: [
            {
              peer: { id: 'half-peer', url: peerUrl },
              pieces: [
                [0, 1],
                [2, 3],
              ],
              complete: false,
              seed: false,
            },
          ],
        }),
      );
    advertise();
    const again = setInterval(advertise, 200);
    try {
      await running;
    } finally {
      clearInterval(again);
    }
    return { download, metrics, count };
  };

  /** The blob GETs the registry received from `since` on: repository and credential. */
  const blobGets = (since: number): { name: string; authorization: string | undefined }[] => {
    const hex = createHash('sha256').update(blob).digest('hex');
    return proxy
      .received()
      .slice(since)
      .filter((r) => r.method === 'GET' && r.url.includes(hex))
      .map((r) => ({ name: r.url.split('/blobs/')[0] ?? '', authorization: r.authorization }));
  };

  it('tries a refused credential once, then starts each range with the one that worked', async () => {
    const since = proxy.received().length;
    const { download, metrics, count } = await stalledFetch(
      'first-password',
      async (download, upstream) => {
        // The credential the download started with is revoked; a later reader's is the new one.
        await registry.changePassword('second-password');
        download.offerSource({
          registry: upstream,
          name: repository,
          authorization: basic('first-password'),
        });
        download.offerSource({
          registry: upstream,
          name: repository,
          authorization: basic('second-password'),
        });
      },
    );

    assert.equal(download.state, 'verified', String(download.error));
    const pieces = await metrics.pieces.get();
    const ok = (source: string): number =>
      pieces.values.find((v) => v.labels.source === source && v.labels.result === 'ok')?.value ?? 0;
    assert.equal(ok('peer'), 2, 'pieces 0 and 2 from the peer');
    assert.ok(count >= 4, `${count} pieces`);
    assert.equal(ok('origin'), count - 2, 'the rest from the origin, in two ranges (1, 3...)');
    assert.deepEqual(
      blobGets(since).map((r) => r.authorization),
      [basic('first-password'), basic('second-password'), basic('second-password')],
      'the revoked credential once, then the one that worked for each range',
    );
  });

  it('does not ask again for a credential refused once, when the reader that served leaves', async () => {
    const since = proxy.received().length;
    const owner = basic('second-password');
    const newer = basic('third-password');
    const { download, count } = await stalledFetch(
      'second-password',
      async (download, upstream) => {
        // The owner's credential is revoked; two readers have the new one, through two
        // repositories; the newest serves the first range, then leaves.
        await registry.changePassword('third-password');
        download.offerSource({ registry: upstream, name: otherRepository, authorization: newer });
        const leaving = download.offerSource({
          registry: upstream,
          name: repository,
          authorization: newer,
        });
        // Slow enough to see the first range's read start before it ends.
        proxy.set({ kind: 'slow', delayMs: 0, rateBytes: 256 * 1024 });
        void waitFor(
          "the first range read with the newest reader's credential",
          () =>
            Promise.resolve(
              blobGets(since).some((r) => r.authorization === newer && r.name.endsWith(repository)),
            ),
          { timeoutMs: 20_000, intervalMs: 10 },
        ).then(
          () => leaving.withdraw(),
          () => undefined,
        );
      },
    );
    proxy.set(undefined);
    assert.equal(download.state, 'verified', String(download.error));
    assert.ok(count >= 4, `${count} pieces`);
    assert.deepEqual(
      blobGets(since),
      [
        { name: `/v2/${repository}`, authorization: owner },
        { name: `/v2/${repository}`, authorization: newer },
        { name: `/v2/${otherRepository}`, authorization: newer },
      ],
      "the owner's refused credential once, not again when the next range starts without a lead",
    );
  });
});
