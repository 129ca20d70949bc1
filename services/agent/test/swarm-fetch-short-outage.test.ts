/**
 * A blob's only source goes silent for a few seconds mid-fetch (a short outage: packets
 * dropped, then back), shorter than the stall timeout: the fetch gives it up for its silence
 * within a second or so, probes it again soon (the refused source's short, doubling penalty),
 * and finishes from it once it is back; the registry serves none of the blob. A penalty
 * longer than the stall timeout (the first version of the silence rule: 10 s) sent the whole
 * rest to the origin. A real nats-server (piece hashes, a hand-out), a real piece server
 * behind a proxy that goes silent on cue, and a real registry behind a recording proxy.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

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

const SELF = { id: 'agent-short-outage', url: 'http://127.0.0.1:65002' };
const TIMEOUTS = { connectMs: 2_000, headersMs: 5_000, idleMs: 5_000 };
const repository = 'team/outage';
const STALL_TIMEOUT_MS = 8_000;
/** The link's rate before and after the outage, shared by every answer in flight. */
const LINK_BYTES = 512 * 1024;
/** How long the only source says nothing: well within the stall timeout. */
const OUTAGE_MS = 3_000;
/** A source silent this long while answering is given up (the floor). */
const SILENCE_MIN_MS = 1_000;

describe('SwarmFetch when its only source goes silent for a few seconds', () => {
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
    const dir = await makeTempDir('fetch-short-outage');
    teardown.add('dir', () => dir.remove());
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-short-outage-'));
    teardown.add('root', () => rm(root, { recursive: true, force: true }));
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    registryHost = registry.host;
    origin = await startFaultProxy({ upstream: registry.url });
    teardown.add('origin proxy', () => origin.stop());
    // A 4 MiB layer: sixteen pieces of 256 KiB and a few bytes more (the tarball's).
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [4 * 1024 * 1024],
      seed: 'fetch-short-outage',
    });
    await pushImage(image, registry.host, repository);
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    blob = await readFile(join(image.layoutDir, 'blobs', 'sha256', parseDigest(layer.digest).hex));
    const peer = await servePieces(blob);
    teardown.add('peer', () => peer.server.close());
    link = await startFaultProxy({ upstream: peer.url });
    teardown.add('link', () => link.stop());
    link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
  });

  after(() => teardown.run());

  it('gives the source up for its silence, asks it again once it is back, and reads nothing from the origin', async () => {
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
        pieces: new PieceClient({
          idleTimeoutMs: 15_000,
          minRateBytes: 16 * 1024,
          connectTimeoutMs: 3_000,
          silenceMinMs: SILENCE_MIN_MS,
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
    const running = fetch.run(new AbortController().signal);
    nc.publish(
      handoutSubject(SELF.id),
      encodeMessage(handout, {
        type: 'handout',
        blob: digest.toString(),
        peers: [
          {
            peer: { id: 'only-peer', url: link.url },
            pieces: [[0, count]],
            complete: true,
            seed: false,
          },
        ],
      }),
    );
    // A second or so into the fetch (a quarter of the blob across), the source goes silent.
    const quarter = blob.length / 4;
    while (link.counts().bytes < quarter) {
      await sleep(20);
    }
    link.set({ kind: 'silent' });
    await sleep(OUTAGE_MS);
    link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
    await running;

    assert.equal(download.state, 'verified', String(download.error));
    const silent = await metrics.silentSources.get();
    assert.ok(
      (silent.values.find((v) => v.labels.source === 'peer')?.value ?? 0) >= 1,
      'the source was given up for its silence',
    );
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
  });
});
