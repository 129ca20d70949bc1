/**
 * An origin that breaks every blob transfer off a MiB into it (a proxy in front of the real
 * registry, as a load balancer with a short time limit): the seed server resumes its read from
 * where it stopped, so the agents get every blob from the swarm, none from the origin, and the
 * registry sends each blob about once for the cluster. The same when every transfer stops a
 * MiB in with its connection left open (a stuck load balancer or CDN node): with the default
 * timeouts (the agents' stall timeout 10 s, the seed's origin idle timeout 5 s) the seed asks
 * again on a new connection before the agents give up on it; before, it waited 60 s, and every
 * agent read the blob from the registry. Real nats-server, tracker, seed server, agents and
 * registry.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';

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
  let stalled: GeneratedImage;
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
    stalled = await generateImage(`${layout.path}-stalled`, {
      layerSizes: [2 * MiB + 1, MiB / 2],
      seed: 'swarm-origin-stalled',
    });
    teardown.add('stalled image', () =>
      rm(`${layout.path}-stalled`, { recursive: true, force: true }),
    );
    await pushImage(stalled, registry.host, `${repository}-stalled`);
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
      // The agents' stall timeout at its default, as the seed's origin idle timeout is.
      env: { SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: '10000' },
    });
    teardown.add('cluster', () => cluster.stop());
  });

  after(async () => {
    await teardown.run();
  });

  /**
   * Both agents pull `img` (pushed as `repo`) while every blob transfer from the origin meets
   * `how` a MiB in: every blob verifies, and none of it comes from the origin to the agents.
   * Returns the seed's resumes during the pull, and the origin's bytes over the blobs' bytes.
   */
  const pullWhileOriginFails = async (
    t: TestContext,
    img: GeneratedImage,
    repo: string,
    how: 'cut' | 'stall',
  ): Promise<{ resumes: number; sentRatio: number }> => {
    const total = img.blobs.reduce((sum, blob) => sum + blob.size, 0);
    const resumesBefore = await cluster.seed.metric('shoal_seedserver_origin_resumes_total');
    const sentBefore = proxy.counts().bytes;
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    const before = await Promise.all([a, b].map((agent) => bytesBySource(agent)));
    proxy.set({ kind: 'damage', how, atByte: MiB + 3 });
    const source = { registry: cluster.registry, image: img };
    const pulls = await Promise.all([pullBlobs(a, source, repo), pullBlobs(b, source, repo)]);
    proxy.set(undefined);
    for (const outcomes of pulls) {
      assert.deepEqual(
        outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
        img.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
      );
    }
    for (const [i, agent] of [a, b].entries()) {
      const sources = await bytesBySource(agent);
      assert.equal(
        sources.origin,
        before[i]?.origin,
        `${agent.peerId ?? ''}: nothing from the origin`,
      );
    }
    const sent = proxy.counts().bytes - sentBefore;
    t.diagnostic(
      `origin bytes sent / blob bytes: ${(sent / total).toFixed(2)} (${proxy.counts().forwarded} requests in all)`,
    );
    assert.ok(sent < 1.5 * total, `the origin sent ${sent} bytes for ${total} bytes of blobs`);
    const resumes = await cluster.seed.metric('shoal_seedserver_origin_resumes_total');
    return { resumes: resumes - resumesBefore, sentRatio: sent / total };
  };

  it('is read by the seed server once, resumed where it broke, and reaches every agent from the swarm', async (t) => {
    const { resumes } = await pullWhileOriginFails(t, image, repository, 'cut');
    assert.ok(resumes >= 5, 'the 6 MiB layer alone breaks off five times');
  });

  it('is asked again on a new connection when a transfer stops with its connection open, and reaches every agent from the swarm', async (t) => {
    const { resumes } = await pullWhileOriginFails(t, stalled, `${repository}-stalled`, 'stall');
    assert.ok(resumes >= 1, 'the 2 MiB layer stalls once');
  });
});
