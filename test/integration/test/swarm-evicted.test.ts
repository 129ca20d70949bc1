/**
 * A blob the whole cluster evicted (issue 11, the soak's rollouts going round a fixed set of
 * images): every agent's cache and the seed server's dropped it, so when it is pulled again
 * the seed server must bring it back from the object gateway. Its withdrawal must not leave
 * the tracker believing a seed still fetches it, and the new seed request must not be dropped
 * as a duplicate of the first one (JetStream's duplicate window is two minutes): either way
 * no seed request reached the seed server, the agents waited out their stall timeout and each
 * read the blob from the origin.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { generateImage, makeTempDir, pushImage, waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'shoal/evicted';
const other = 'shoal/evicted-next';

describe('a blob evicted everywhere, pulled again', () => {
  let cluster: Cluster;
  let layout: { path: string; remove(): Promise<void> };

  before(async () => {
    cluster = await startCluster({
      layerSizes: [3 * MiB],
      seed: 'evicted-a',
      repository,
      trackers: 1,
      // Each cache holds one of the two images, not both.
      seedEnv: {
        SHOAL_SEED_CACHE_MAX_BYTES: String(4 * MiB),
        SHOAL_SEED_CACHE_MIN_FREE_BYTES: '0',
      },
      agents: ['node-1', 'node-2'].map((peerId) => ({
        peerId,
        env: { SHOAL_AGENT_CACHE_MAX_BYTES: String(4 * MiB) },
      })),
    });
    layout = await makeTempDir('evicted-next');
  });

  after(async () => {
    await cluster.stop();
    await layout.remove();
  });

  it('comes back from the object gateway through the seed server, not from the origin', async () => {
    const verified = (outcomes: Awaited<ReturnType<typeof pullBlobs>>, digests: string[]): void => {
      assert.deepEqual(
        outcomes.map((o) => [o.status, o.error, o.digest]),
        digests.map((digest) => [200, undefined, digest]),
      );
    };
    const first = cluster.image.blobs.map((b) => b.digest);
    for (const agent of cluster.agents) {
      verified(await pullBlobs(agent, cluster, repository), first);
    }
    // The next image takes the caches' room: the first one's layer is evicted everywhere.
    const next = await generateImage(join(layout.path, 'next'), {
      layerSizes: [3 * MiB],
      seed: 'evicted-b',
    });
    await pushImage(next, cluster.registry.host, other);
    for (const agent of cluster.agents) {
      verified(
        await pullBlobs(agent, { image: next, registry: cluster.registry }, other),
        next.blobs.map((b) => b.digest),
      );
    }
    const layer = cluster.image.blobs.at(-1)?.digest ?? '';
    await waitFor(
      'the first layer evicted by the seed server and both agents',
      async () =>
        (await cluster.seed.metric('shoal_seedserver_cache_evicted_bytes_total')) >= 3 * MiB &&
        (
          await Promise.all(
            cluster.agents.map((a) => a.metric('shoal_agent_cache_evictions_total')),
          )
        ).every((n) => n >= 1),
    );
    const originReads = (await cluster.registry.blobGets(layer)).length;
    const [agent] = cluster.agents;
    assert.ok(agent !== undefined);
    const before = await bytesBySource(agent);
    const rationed = (): Promise<number> =>
      cluster.seed.metric('shoal_seedserver_piece_requests_total', { result: 'rationed' });
    const rationedBefore = await rationed();

    const started = Date.now();
    verified(await pullBlobs(agent, cluster, repository), first);
    const took = Date.now() - started;

    // The seed server was asked again and read the layer from the gateway: the origin served
    // it no more, the agent did not stall (4 s here) and fell back on nothing.
    assert.equal((await cluster.registry.blobGets(layer)).length, originReads);
    assert.equal(await agent.metric('shoal_agent_swarm_fallbacks_total'), 0);
    const now = await bytesBySource(agent);
    assert.equal(now.origin - before.origin, 0);
    assert.ok(now.seed - before.seed >= 3 * MiB, `${now.seed - before.seed} bytes from the seed`);
    assert.ok(
      (await cluster.seed.metric('shoal_seedserver_seeds_total', { source: 'store' })) >= 1,
      'the seed server read the layer from the object gateway',
    );
    // Not one piece turned away: the seed's fan-out counts copies per local copy of the blob,
    // so the copies its evicted one sent (to agents that evicted them too) hold nothing back.
    // They did: every piece turned away for the 5 s fan-out window, about 4 s in all, or a
    // stall past 4 s.
    assert.equal(await rationed(), rationedBefore, 'pieces the seed turned away');
    assert.ok(took < 3_000, `pulled again in ${took} ms`);
  });
});
