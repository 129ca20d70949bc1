/**
 * Killing Shoal's own services mid-swarm (issue 3, items 5 and 6): pulls complete when the
 * tracker is killed and restarted, and the restarted tracker's view matches the swarm; pulls
 * complete through the origin when the seed server is killed mid-seed.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { startTracker, waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/recovery';

function assertVerified(cluster: Cluster, outcomes: Awaited<ReturnType<typeof pullBlobs>>[]): void {
  for (const perAgent of outcomes) {
    perAgent.forEach((outcome, i) => {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, cluster.image.blobs[i]?.digest);
    });
  }
}

describe('services killed in the middle of a swarm', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
  });

  it('completes pulls across a tracker kill and restart, and the new tracker sees the swarm', async () => {
    const started = await startCluster({
      layerSizes: [64 * MiB, 4 * MiB],
      seed: 'tracker-restart',
      repository,
      trackers: 1,
      // Slow downloads, so the kill lands while every agent is still fetching.
      agents: [1, 2, 3, 4].map((n) => ({
        peerId: `node-${n}`,
        env: { SHOAL_AGENT_DOWNLOAD_RATE_BYTES: String(12 * MiB) },
      })),
    });
    cluster = started;
    const pulls = Promise.all(started.agents.map((agent) => pullBlobs(agent, started, repository)));
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const [tracker] = started.trackers;
    assert.ok(tracker !== undefined);
    await tracker.process.kill();
    await tracker.stop();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const restarted = await startTracker({ natsUrl: started.nats.url });
    started.trackers.splice(0, 1, restarted);
    assertVerified(started, await pulls);

    // The restarted tracker rebuilt its view from the stream: every agent and the seed hold
    // every blob, and nobody else is in it.
    for (const blob of started.image.blobs) {
      await waitFor(`tracker view of ${blob.digest}`, async () => {
        const members = await trackerView(restarted, blob.digest);
        return members.filter((m) => m.complete).length === started.agents.length + 1;
      });
      const members = await trackerView(restarted, blob.digest);
      assert.deepEqual(
        members.map((m) => m.peer).sort(),
        [
          ...started.agents.map((a) => a.peerId ?? ''),
          members.find((m) => m.seed)?.peer ?? 'no seed',
        ].sort(),
      );
      assert.ok(members.every((m) => m.complete));
    }
  });

  it('completes pulls from the origin when the seed server is killed mid-seed', async () => {
    const started = await startCluster({
      layerSizes: [192 * MiB],
      seed: 'seed-kill',
      repository,
      trackers: 1,
      agents: [1, 2, 3].map((n) => ({ peerId: `node-${n}` })),
    });
    cluster = started;
    const layer = started.image.layers[0];
    assert.ok(layer !== undefined);
    const pulls = Promise.all(started.agents.map((agent) => pullBlobs(agent, started, repository)));
    await waitFor(
      'the seed server to be part-way through the layer',
      async () => (await started.seed.metric('shoal_seedserver_ingested_bytes_total')) > 16 * MiB,
      { intervalMs: 20, timeoutMs: 30_000 },
    );
    const ingested = await started.seed.metric('shoal_seedserver_ingested_bytes_total');
    await started.seed.process.kill();
    assert.ok(ingested < layer.size, `killed after ${ingested} of ${layer.size} bytes`);
    assertVerified(started, await pulls);
    let fromOrigin = 0;
    for (const agent of started.agents) {
      fromOrigin += (await bytesBySource(agent)).origin;
      assert.ok((await agent.metric('shoal_agent_swarm_fallbacks_total')) >= 1);
    }
    assert.ok(fromOrigin > 0, 'the rest came from the origin');
  });

  it('announces a blob read from the origin before any piece hash came, so the tracker hands it out', async () => {
    const started = await startCluster({
      layerSizes: [6 * MiB],
      seed: 'no-hashes',
      repository,
      trackers: 1,
      agents: [{ peerId: 'alone' }],
    });
    cluster = started;
    // No seed server: no piece hash is ever published, the swarm stalls, the origin serves.
    await started.seed.process.kill();
    const [agent] = started.agents;
    const [tracker] = started.trackers;
    assert.ok(agent !== undefined && tracker !== undefined);
    assertVerified(started, [await pullBlobs(agent, started, repository)]);
    assert.ok((await agent.metric('shoal_agent_swarm_fallbacks_total')) >= 1);
    for (const blob of started.image.blobs) {
      await waitFor(`the tracker to see ${blob.digest} held whole`, async () =>
        (await trackerView(tracker, blob.digest)).some((m) => m.peer === 'alone' && m.complete),
      );
    }
  });
});
