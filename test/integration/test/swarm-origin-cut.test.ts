/**
 * An origin that breaks every blob transfer off a MiB into it (a proxy in front of the real
 * registry, as a load balancer with a short time limit): the seed server resumes its read from
 * where it stopped, so the agents get every blob from the swarm, none from the origin, and the
 * registry sends each blob about once for the cluster. Real nats-server, tracker, seed server,
 * agents and registry.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  Teardown,
  type FaultProxy,
  type GeneratedImage,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'shoal/origin-cut';

describe('an origin that breaks every blob transfer off', () => {
  const teardown = new Teardown();
  let proxy: FaultProxy;
  let image: GeneratedImage;
  let cluster: Cluster;

  before(async () => {
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('origin-cut');
    teardown.add('image', () => layout.remove());
    image = await generateImage(layout.path, {
      layerSizes: [6 * MiB + 1, 3 * MiB],
      seed: 'swarm-origin-cut',
    });
    await pushImage(image, registry.host, repository);
    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());
    // Everyone reaches the registry through the proxy only.
    cluster = await startCluster({
      layerSizes: [],
      seed: 'swarm-origin-cut',
      repository,
      trackers: 1,
      agents: [{ peerId: 'agent-a' }, { peerId: 'agent-b' }],
      registry: { registry: { ...registry, url: proxy.url }, image },
    });
    teardown.add('cluster', () => cluster.stop());
  });

  after(async () => {
    await teardown.run();
  });

  it('is read by the seed server once, resumed where it broke, and reaches every agent from the swarm', async (t) => {
    const total = image.blobs.reduce((sum, blob) => sum + blob.size, 0);
    proxy.set({ kind: 'damage', how: 'cut', atByte: MiB + 3 });
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    const pulls = await Promise.all([
      pullBlobs(a, cluster, repository),
      pullBlobs(b, cluster, repository),
    ]);
    proxy.set(undefined);
    for (const outcomes of pulls) {
      assert.deepEqual(
        outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
        image.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
      );
    }
    assert.ok(
      (await cluster.seed.metric('shoal_seedserver_origin_resumes_total')) >= 5,
      'the 6 MiB layer alone breaks off five times',
    );
    for (const agent of [a, b]) {
      const sources = await bytesBySource(agent);
      assert.equal(sources.origin, 0, `${agent.peerId ?? ''}: nothing from the origin`);
    }
    const sent = proxy.counts().bytes;
    t.diagnostic(
      `origin bytes sent / blob bytes: ${(sent / total).toFixed(2)} (${proxy.counts().forwarded} requests)`,
    );
    assert.ok(sent < 1.5 * total, `the origin sent ${sent} bytes for ${total} bytes of blobs`);
  });
});
