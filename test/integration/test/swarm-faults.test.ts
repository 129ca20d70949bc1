/**
 * Faults in the swarm (issue 3, items 3 and 4): an agent that serves corrupted pieces is
 * detected and dropped while every other agent completes with correct bytes, and a leecher
 * completes its pull while uploading nothing.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startAgent, type AgentProcess } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/faults';

describe('a corrupting agent and a leecher in the swarm', () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [48 * MiB, 8 * MiB],
      seed: 'swarm-faults',
      repository,
      trackers: 1,
      agents: [{ peerId: 'liar', env: { SHOAL_AGENT_FAULT_CORRUPT_PIECES: 'true' } }],
    });
  });

  after(async () => {
    await cluster.stop();
  });

  const join = async (peerId: string, env: Record<string, string> = {}): Promise<AgentProcess> => {
    const agent = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      natsUrl: cluster.nats.url,
      peerId,
      env: { ...cluster.agentEnv, ...env },
    });
    cluster.agents.push(agent);
    return agent;
  };

  it('detects and drops the corrupting agent; the others still complete with correct bytes', async () => {
    const [liar] = cluster.agents;
    assert.ok(liar !== undefined);
    // The liar fetches honestly first, so it holds every piece and the tracker offers it.
    for (const outcome of await pullBlobs(liar, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
    const honest = [await join('honest-1'), await join('honest-2'), await join('honest-3')];
    const outcomes = await Promise.all(
      honest.map((agent) => pullBlobs(agent, cluster, repository)),
    );
    for (const perAgent of outcomes) {
      perAgent.forEach((outcome, i) => {
        assert.equal(outcome.error, undefined);
        assert.equal(outcome.digest, cluster.image.blobs[i]?.digest);
      });
    }
    let bad = 0;
    for (const agent of honest) {
      bad += await agent.metric('shoal_agent_pieces_total', { source: 'peer', result: 'bad' });
    }
    assert.ok(bad >= 1, 'the bad pieces were noticed');
    assert.ok(
      (await liar.metric('shoal_agent_uploaded_bytes_total')) > 0,
      'the liar was asked for pieces',
    );
    // Each honest agent dropped the liar at its first bad piece: only requests already in
    // flight then (at most the piece concurrency, 8, per blob) could bring more.
    const blobs = cluster.image.blobs.length;
    assert.ok(bad <= honest.length * blobs * 8, `${bad} bad pieces in all`);
    for (const agent of honest) {
      assert.equal(
        await agent.metric('shoal_agent_verification_failures_total', { kind: 'blob' }),
        0,
      );
    }
  });

  it('lets a leecher complete without uploading a byte', async () => {
    const leecher = await join('leecher', { SHOAL_AGENT_MODE: 'leecher' });
    const outcomes = await pullBlobs(leecher, cluster, repository);
    outcomes.forEach((outcome, i) => {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, cluster.image.blobs[i]?.digest);
    });
    assert.equal(await leecher.metric('shoal_agent_uploaded_bytes_total'), 0);
    const received = await bytesBySource(leecher);
    assert.equal(
      received.origin + received.seed + received.peer,
      cluster.image.blobs.reduce((s, b) => s + b.size, 0),
    );
    // It never announced anything, so no tracker hands it out.
    for (const blob of cluster.image.blobs) {
      const members = await trackerView(cluster.trackers[0] ?? cluster.seed, blob.digest);
      assert.ok(!members.some((m) => m.peer === 'leecher'));
    }
  });
});
