/**
 * The swarm stream deleted and declared again while the tracker's NATS connection stays up
 * (what another replica or a cluster member sees when a multi-server NATS loses an R1
 * stream's volume, or an operator re-creates the stream): the tracker gets no reconnect to
 * tell it, so its consumer must notice by itself. It does, rebases its view and follows the
 * new stream from its first message: a known peer leaving is dropped from the view, and a
 * peer announcing for the first time is listed. Before, nats.js re-created the ordered
 * consumer after the last sequence it had delivered, past the new stream's end, and the
 * tracker heard neither. Real nats-server, tracker, seed server, agents.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import { startAgent, waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/stream-recreated';

describe('the swarm stream made anew under a connected tracker', () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [MiB, MiB],
      seed: 'swarm-stream-recreated',
      repository,
      trackers: 1,
      agents: [{ peerId: 'agent-a' }, { peerId: 'agent-b' }],
    });
  });

  after(async () => {
    await cluster.stop();
  });

  it('the tracker follows the new stream: a departure and a newcomer are heard', async () => {
    const [a, b] = cluster.agents;
    const tracker = cluster.trackers[0];
    assert.ok(a !== undefined && b !== undefined && tracker !== undefined);
    const blobs = cluster.image.blobs.map((blob) => blob.digest);
    const listedEverywhere = async (peer: string): Promise<boolean> => {
      for (const blob of blobs) {
        if (!(await trackerView(tracker, blob)).some((member) => member.peer === peer)) {
          return false;
        }
      }
      return true;
    };
    const listedNowhere = async (peer: string): Promise<boolean> => {
      for (const blob of blobs) {
        if ((await trackerView(tracker, blob)).some((member) => member.peer === peer)) {
          return false;
        }
      }
      return true;
    };
    for (const agent of [a, b]) {
      for (const outcome of await pullBlobs(agent, cluster, repository)) {
        assert.equal(outcome.error, undefined);
      }
    }
    await waitFor('agent-b listed for every blob', () => listedEverywhere('agent-b'), {
      timeoutMs: 15_000,
    });

    // The stream deleted and declared again, NATS itself staying up: no service reconnects.
    const nc = await connect({ servers: cluster.nats.url });
    try {
      const { jsm } = await jetStreamFor(nc);
      const old = await jsm.streams.info(STREAMS.swarm.name);
      assert.ok(old.state.last_seq > 4, 'the old stream held every have so far');
      await jsm.streams.delete(STREAMS.swarm.name);
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.deepEqual(await ensureStreams(jsm, [STREAMS.swarm], 1), [STREAMS.swarm.name]);
    } finally {
      await nc.close();
    }

    // agent-b leaves: its peer-gone is the new stream's first message.
    await b.stop();
    await waitFor('agent-b gone from the view', () => listedNowhere('agent-b'), {
      timeoutMs: 20_000,
    });
    assert.ok(await listedEverywhere('agent-a'), 'agent-a, which stayed, still listed');

    // A newcomer's haves, low sequences of the new stream, reach the view.
    const c = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      defaultRegistry: cluster.registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'agent-c',
      env: { ...cluster.agentEnv, ...(await cluster.nats.clientEnv('agent-c')) },
    });
    cluster.agents.push(c);
    for (const outcome of await pullBlobs(c, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
    await waitFor('agent-c listed for every blob', () => listedEverywhere('agent-c'), {
      timeoutMs: 15_000,
    });
  });
});
