/**
 * The object gateway (issue 3, item 2): with the seed server on the S3 store, a second
 * cluster start — fresh NATS, fresh agents, fresh seed-server disk — pulls the image with
 * zero reads from the origin: every blob comes from the object gateway.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startRegistry,
  startS3,
  waitFor,
  type GeneratedImage,
  type Registry,
  type S3Server,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'shoal/s3';

describe('seed server on the S3 object gateway', () => {
  let s3: S3Server;
  let registry: Registry;
  let image: GeneratedImage;
  let storeEnv: Record<string, string>;
  const cleanup: (() => Promise<void>)[] = [];

  before(async () => {
    s3 = await startS3();
    cleanup.push(() => s3.stop());
    await s3.createBucket('shoal-blobs');
    storeEnv = {
      SHOAL_STORE_KIND: 's3',
      SHOAL_S3_ENDPOINT: s3.endpoint,
      SHOAL_S3_REGION: s3.region,
      SHOAL_S3_BUCKET: 'shoal-blobs',
      SHOAL_S3_PREFIX: 'cluster/',
      SHOAL_S3_ACCESS_KEY_ID: s3.accessKeyId,
      SHOAL_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      SHOAL_S3_PART_SIZE_BYTES: String(5 * MiB),
    };
    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    const layout = await makeTempDir('image');
    cleanup.push(() => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [24 * MiB, 3 * MiB], seed: 'swarm-s3' });
    await pushImage(image, registry.host, repository);
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step();
    }
  });

  const pullAll = async (cluster: Cluster): Promise<void> => {
    const outcomes = await Promise.all(
      cluster.agents.map((agent) => pullBlobs(agent, cluster, repository)),
    );
    for (const perAgent of outcomes) {
      perAgent.forEach((outcome, i) => {
        assert.equal(outcome.error, undefined);
        assert.equal(outcome.digest, image.blobs[i]?.digest);
      });
    }
  };

  it('stores what it seeds, and a fresh cluster pulls it with zero origin reads', async () => {
    const blobBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    const spec = {
      layerSizes: [],
      seed: 'unused',
      repository,
      trackers: 1,
      seedEnv: storeEnv,
      registry: { registry, image },
    };

    const first = await startCluster({
      ...spec,
      agents: [{ peerId: 'first-1' }, { peerId: 'first-2' }],
    });
    try {
      await pullAll(first);
      await waitFor(
        'the seed server to store every blob in S3',
        async () => (await first.seed.metric('shoal_seedserver_stored_bytes_total')) === blobBytes,
        { timeoutMs: 30_000 },
      );
    } finally {
      await first.stop();
    }
    for (const blob of image.blobs) {
      assert.equal(
        (await registry.blobGets(blob.digest)).length,
        1,
        'the first cluster read each blob once',
      );
    }

    const s3GetsBefore = s3.requests().filter((r) => r.method === 'GET').length;
    const second = await startCluster({
      ...spec,
      agents: [{ peerId: 'second-1' }, { peerId: 'second-2' }],
    });
    try {
      await pullAll(second);
      for (const blob of image.blobs) {
        assert.equal(
          (await registry.blobGets(blob.digest)).length,
          1,
          'no origin read in the second cluster',
        );
      }
      assert.equal(
        await second.seed.metric('shoal_seedserver_ingested_bytes_total', { source: 'store' }),
        blobBytes,
      );
      assert.equal(
        await second.seed.metric('shoal_seedserver_ingested_bytes_total', { source: 'origin' }),
        0,
      );
      for (const agent of second.agents) {
        assert.equal((await bytesBySource(agent)).origin, 0);
      }
      assert.ok(
        s3.requests().filter((r) => r.method === 'GET').length > s3GetsBefore,
        'blobs were read from S3',
      );
    } finally {
      await second.stop();
    }
  });
});
