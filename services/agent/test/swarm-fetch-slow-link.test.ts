/**
 * A swarm fetch from a peer on a slow but healthy link is not sent to the origin (issue 14:
 * no piece request is abandoned by a fixed time on a healthy but slow link). A real
 * nats-server (piece hashes, a hand-out), a real piece server holding the whole blob behind a
 * proxy that shares 256 KiB/s among its answers (a slow link), and a real registry behind a
 * proxy that records what reached it. The download's requests share the link, so its 256 KiB
 * pieces arrive together after about four seconds, longer than the 1.5 s stall timeout: the
 * bytes keep moving, so the fetch waits for them, and the registry serves none of the blob.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

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
  Teardown,
  type FaultProxy,
} from '@shoal/testkit';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import { PieceClient } from '../src/swarm/piece-client.js';
import { SwarmFetch } from '../src/swarm/swarm-fetch.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';
import { blobDigest, publishHashes, servePieces } from './blob-pieces.js';
import { startJetStream, startSwarmClient, type JetStreamFixture } from './jetstream-fixture.js';

const SELF = { id: 'agent-slow-link', url: 'http://127.0.0.1:65002' };
const TIMEOUTS = { connectMs: 2_000, headersMs: 5_000, idleMs: 5_000 };
const repository = 'team/slow';
const STALL_TIMEOUT_MS = 1_500;
/** The slow link's rate, shared by every answer in flight. */
const LINK_BYTES = 256 * 1024;

describe('SwarmFetch on a slow link', () => {
  const teardown = new Teardown();
  let fixture: JetStreamFixture;
  let origin: FaultProxy;
  let link: FaultProxy;
  let blob: Buffer;
  let registryHost: string;
  let root: string;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    teardown.add('nats', () => fixture.close());
    const dir = await makeTempDir('fetch-slow-link');
    teardown.add('dir', () => dir.remove());
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-slow-link-'));
    teardown.add('root', () => rm(root, { recursive: true, force: true }));
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    registryHost = registry.host;
    origin = await startFaultProxy({ upstream: registry.url });
    teardown.add('origin proxy', () => origin.stop());
    // A 1 MiB layer: four pieces of 256 KiB and a few bytes more (the tarball's).
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [1024 * 1024],
      seed: 'fetch-slow-link',
    });
    await pushImage(image, registry.host, repository);
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    blob = await readFile(join(image.layoutDir, 'blobs', 'sha256', parseDigest(layer.digest).hex));
    const peer = await servePieces(blob);
    teardown.add('peer', () => peer.server.close());
    // The peer is reached through its slow link only.
    link = await startFaultProxy({ upstream: peer.url });
    teardown.add('link', () => link.stop());
    link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
  });

  after(() => teardown.run());

  it('waits for pieces that keep moving past the stall timeout, and reads nothing from the origin', async () => {
    const { js, nc } = fixture;
    const { client, logger, metrics } = startSwarmClient(fixture, SELF, false);
    teardown.add('swarm client', () => client.close());
    const store = new FsContentStore(join(root, 'store'), 64 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(4 * 1024 * 1024);
    const digest = parseDigest(blobDigest(blob));
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const upstreamClient = new UpstreamClient(TIMEOUTS);
    teardown.add('upstream client', () => upstreamClient.close());
    const fetch = new SwarmFetch(
      download,
      {
        registry: { host: registryHost, url: new URL(origin.url) },
        name: repository,
        digest,
        authorization: undefined,
      },
      {
        client,
        // The agent's defaults: silent for 15 s, or below 16 KiB/s after that, is given up; a
        // source silent for 3 s while answering (or 10 of its gaps between reads) is too.
        pieces: new PieceClient({
          idleTimeoutMs: 15_000,
          minRateBytes: 16 * 1024,
          connectTimeoutMs: 3_000,
          silenceMinMs: 3_000,
        }),
        store,
        pool,
        requests: new RegistryRequests(upstreamClient, metrics, TIMEOUTS),
        downloadLimit: new RateLimiter(0),
        metrics,
        logger,
        settings: { concurrency: 4, stallTimeoutMs: STALL_TIMEOUT_MS, wantIntervalMs: 60_000 },
      },
    );
    const count = await publishHashes(js, blob);
    const started = Date.now();
    const running = fetch.run(new AbortController().signal);
    nc.publish(
      handoutSubject(SELF.id),
      encodeMessage(handout, {
        type: 'handout',
        blob: digest.toString(),
        peers: [
          {
            peer: { id: 'slow-peer', url: link.url },
            pieces: [[0, count]],
            complete: true,
            seed: false,
          },
        ],
      }),
    );
    await running;
    const took = Date.now() - started;

    assert.equal(download.state, 'verified', String(download.error));
    // The link, not the swarm, set the time: the whole pieces came well after the timeout.
    assert.ok(took > 2 * STALL_TIMEOUT_MS, `done in ${took} ms`);
    const pieces = await metrics.pieces.get();
    const ok = (source: string): number =>
      pieces.values.find((v) => v.labels.source === source && v.labels.result === 'ok')?.value ?? 0;
    assert.equal(ok('peer'), count, 'every piece from the slow peer');
    assert.equal(ok('origin'), 0, 'no piece from the origin');
    const fallbacks = await metrics.swarmFallbacks.get();
    assert.deepEqual(
      fallbacks.values.filter((v) => v.value > 0),
      [],
      'no fallback to the origin',
    );
    assert.equal(
      origin.received().filter((r) => r.url.includes('/blobs/')).length,
      0,
      'the registry was asked for none of the blob',
    );
    assert.equal(link.counts().bytes, blob.length, 'the link carried each byte once');
  });
});
