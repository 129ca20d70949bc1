/**
 * Pieces between two healthy agents (issue 9: the piece pipeline paced by its own scheduling).
 * One agent holds an image of three layers, the seed server has stopped, and a second agent
 * takes all three layers from the first at once while the holder serves at most two pieces at
 * a time to one peer: its 429s say how many requests it serves, and the asker is held to that
 * and goes on, rather than counting a failure or falling back to the origin. The stopped seed
 * server left the swarms at its close, so no request goes to it either: with one healthy peer,
 * not one piece request fails.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'team/flow';

describe('pieces between two healthy agents', () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      // 256 KiB pieces: 40, 24 and 16 of them, all three layers asked for at once.
      layerSizes: [10 * MiB, 6 * MiB, 4 * MiB],
      seed: 'peer-flow',
      repository,
      trackers: 1,
      agents: [
        { peerId: 'holder', env: { SHOAL_AGENT_MAX_UPLOADS_PER_PEER: '2' } },
        { peerId: 'taker' },
      ],
    });
  });

  after(async () => {
    await cluster.stop();
  });

  it('takes every piece from the one healthy peer, with no failed request and none from the origin', async () => {
    const [holder, taker] = cluster.agents;
    const [tracker] = cluster.trackers;
    assert.ok(holder !== undefined && taker !== undefined && tracker !== undefined);
    for (const outcome of await pullBlobs(holder, cluster, repository)) {
      assert.equal(outcome.status, 200);
      assert.equal(outcome.error, undefined);
    }
    const layer = cluster.image.layers[0];
    assert.ok(layer !== undefined);
    await cluster.seed.stop();
    // The seed server's peer-gone at its close reaches the tracker: it names the holder alone.
    await waitFor(
      'the tracker forgets the stopped seed server',
      async () => (await trackerView(tracker, layer.digest)).every((member) => !member.seed),
      { timeoutMs: 10_000 },
    );

    for (const outcome of await pullBlobs(taker, cluster, repository)) {
      assert.equal(outcome.status, 200);
      assert.equal(outcome.error, undefined, 'every digest verified');
    }
    const blobBytes = cluster.image.blobs.reduce((sum, blob) => sum + blob.size, 0);
    assert.deepEqual(await bytesBySource(taker), { origin: 0, seed: 0, peer: blobBytes });
    assert.equal(await taker.metric('shoal_agent_pieces_total', { result: 'failed' }), 0);
    assert.equal(await taker.metric('shoal_agent_swarm_fallbacks_total'), 0);
    const pieces = await taker.metric('shoal_agent_pieces_total', { source: 'peer', result: 'ok' });
    const refused = await holder.metric('shoal_agent_uploads_refused_total', {
      reason: 'peer-busy',
    });
    // Three downloads of four requests each met a cap of two: the holder said so, often.
    assert.ok(refused > 0, 'the per-peer cap was met');
    // Held to what the holder serves, the taker asks again as each piece ends: the 429s stay
    // a fraction of the pieces, rather than one per request started.
    assert.ok(refused < pieces, `${refused} refusals for ${pieces} pieces`);
  });
});
