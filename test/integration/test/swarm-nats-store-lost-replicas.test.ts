/**
 * NATS back with its JetStream store lost under two tracker replicas: the swarm stream is
 * made anew (by one replica) and starts over at sequence 1. Each replica sees that for itself
 * and rebases its view, so an event of the new stream about a peer it already knew is
 * applied: a known peer that leaves (peer-gone) is no longer handed out for the blobs it
 * held, by the replica owning each blob. Before, the replica that did not make the stream
 * resumed past its end and heard nothing, and the one that did ignored the departure (its
 * sequence below the entries' old ones) for up to the maximum have age. Real nats-server,
 * two trackers, seed server, agents.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { KV_BUCKETS, STREAMS } from '@shoal/proto';
import { ensureKv, isNotFound, jetStreamFor } from '@shoal/runtime/nats';
import { waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/store-lost-replicas';
const AGENT_ENV = {
  SHOAL_AGENT_PRESENCE_INTERVAL_MS: '1000',
  SHOAL_AGENT_NATS_RECOVERY_SPREAD_MS: '2000',
};

/** The trackers' views of `blob` together: peer ids listed by any replica. */
async function listed(cluster: Cluster, blob: string): Promise<Set<string>> {
  const peers = new Set<string>();
  for (const tracker of cluster.trackers) {
    for (const member of await trackerView(tracker, blob)) {
      peers.add(member.peer);
    }
  }
  return peers;
}

describe('NATS back with its store lost, two tracker replicas', () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [MiB, MiB, MiB],
      seed: 'swarm-nats-store-lost-replicas',
      repository,
      trackers: 2,
      agents: [
        { peerId: 'agent-a', env: AGENT_ENV },
        { peerId: 'agent-b', env: AGENT_ENV },
      ],
    });
  });

  after(async () => {
    await cluster.stop();
  });

  it('a known peer leaving after the loss leaves the view of the replica owning each blob', async () => {
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    for (const agent of [a, b]) {
      for (const outcome of await pullBlobs(agent, cluster, repository)) {
        assert.equal(outcome.error, undefined);
      }
    }
    const blobs = cluster.image.blobs.map((blob) => blob.digest);
    await waitFor(
      'agent-b known to the trackers for every blob',
      async () => {
        for (const blob of blobs) {
          if (!(await listed(cluster, blob)).has('agent-b')) {
            return false;
          }
        }
        return true;
      },
      { timeoutMs: 15_000 },
    );

    await cluster.nats.crashAndRestart(1000, { loseStore: true });
    const nc = await connect({ servers: cluster.nats.url });
    try {
      const { js, jsm } = await jetStreamFor(nc);
      // The swarm stream made anew, and both agents back on NATS: each has refreshed its
      // presence entry (else agent-b's peer-gone could be lost to its reconnect, not to the
      // trackers). The bucket is declared here, as the watcher (not in this cluster) would:
      // agents only write into it.
      await ensureKv(js, KV_BUCKETS.agents, 1);
      await waitFor(
        'the swarm stream made anew and the agents back',
        async () => {
          try {
            await jsm.streams.info(STREAMS.swarm.name);
            const presence = await jsm.streams.info(`KV_${KV_BUCKETS.agents.bucket}`);
            return presence.state.messages >= 2;
          } catch (error) {
            if (isNotFound(error)) {
              return false;
            }
            throw error;
          }
        },
        { timeoutMs: 15_000 },
      );
    } finally {
      await nc.close();
    }

    // agent-b leaves: its peer-gone is among the first messages of the new stream.
    await b.stop();
    await waitFor(
      'agent-b gone from every replica’s view',
      async () => {
        for (const blob of blobs) {
          if ((await listed(cluster, blob)).has('agent-b')) {
            return false;
          }
        }
        return true;
      },
      { timeoutMs: 20_000 },
    );
    // agent-a, which stayed, is still handed out for every blob.
    for (const blob of blobs) {
      assert.ok((await listed(cluster, blob)).has('agent-a'), `${blob}: agent-a still listed`);
    }
  });
});
