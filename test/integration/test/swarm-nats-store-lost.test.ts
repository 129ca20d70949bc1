/**
 * NATS replaced by a server with an empty JetStream store (its volume lost) while the cluster
 * runs: the services declare their streams, consumers and buckets again after the reconnect
 * (the agents theirs when they find them gone),
 * the tracker follows the new swarm stream from its first message, and the swarm works again
 * without a restart: a new image's blobs reach the agents from the seed server and each other,
 * the registry serving each blob once. Real nats-server, tracker, seed server, agents.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { KV_BUCKETS, STREAMS } from '@shoal/proto';
import { jetStreamFor } from '@shoal/runtime/nats';
import {
  generateImage,
  makeTempDir,
  pushImage,
  waitFor,
  type AgentProcess,
  type GeneratedImage,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/store-lost';
const AGENT_ENV = {
  SHOAL_AGENT_PRESENCE_INTERVAL_MS: '1000',
  SHOAL_AGENT_NATS_RECOVERY_SPREAD_MS: '2000',
};

describe('NATS back with its JetStream store lost', () => {
  let cluster: Cluster;
  let second: GeneratedImage;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [4 * MiB, MiB],
      seed: 'swarm-nats-store-lost',
      repository,
      trackers: 1,
      agents: [
        { peerId: 'agent-a', env: AGENT_ENV },
        { peerId: 'agent-b', env: AGENT_ENV },
      ],
    });
    const layout = await makeTempDir('store-lost-second');
    try {
      second = await generateImage(layout.path, {
        layerSizes: [5 * MiB, 2 * MiB],
        seed: 'swarm-nats-store-lost-second',
      });
      await pushImage(second, cluster.registry.host, `${repository}-second`);
    } finally {
      await layout.remove();
    }
  });

  after(async () => {
    await cluster.stop();
  });

  it('heals without a restart: streams, consumers and buckets are back and the swarm serves a new image', async () => {
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    for (const outcome of await pullBlobs(a, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
    await cluster.nats.crashAndRestart(1000, { loseStore: process.env.KEEP_STORE === undefined });

    // Every stream and bucket the tracker and the seed server own is declared again (agents own
    // none: their presence bucket is the watcher's, not in this cluster).
    const nc = await connect({ servers: cluster.nats.url });
    try {
      const { jsm } = await jetStreamFor(nc);
      const owned = [
        STREAMS.swarm.name,
        STREAMS.wants.name,
        STREAMS.pieces.name,
        STREAMS.seed.name,
        `KV_${KV_BUCKETS.seedLocks.bucket}`,
      ];
      await waitFor(
        'the streams and buckets declared again',
        async () => {
          const names = new Set<string>();
          for await (const info of jsm.streams.list()) {
            names.add(info.config.name);
          }
          return owned.every((name) => names.has(name));
        },
        { timeoutMs: 15_000 },
      );
    } finally {
      await nc.close();
    }

    const before = { a: await bytesBySource(a), b: await bytesBySource(b) };
    const images = { image: second, registry: cluster.registry };
    const pull = async (agent: AgentProcess): Promise<void> => {
      const outcomes = await pullBlobs(agent, images, `${repository}-second`);
      assert.deepEqual(
        outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
        second.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
      );
    };
    await pull(a);
    // The tracker hears the new stream: agent-a's haves of the new image reach its view.
    const tracker = cluster.trackers[0];
    assert.ok(tracker !== undefined);
    await waitFor(
      "agent-a in the tracker's view of every new blob",
      async () => {
        for (const blob of second.blobs) {
          const members = await trackerView(tracker, blob.digest);
          if (!members.some((m) => m.peer === 'agent-a' && m.complete)) {
            return false;
          }
        }
        return true;
      },
      { timeoutMs: 15_000 },
    );
    await pull(b);
    const after = { a: await bytesBySource(a), b: await bytesBySource(b) };
    assert.equal(after.a.origin - before.a.origin, 0, 'agent-a read nothing from the origin');
    assert.equal(after.b.origin - before.b.origin, 0, 'agent-b read nothing from the origin');
    assert.ok(after.b.peer > before.b.peer, 'agent-b read from its peer');
    for (const blob of second.blobs) {
      assert.equal(
        (await cluster.registry.blobGets(blob.digest)).length,
        1,
        `${blob.digest}: read from the registry once, by the seed server`,
      );
    }
  });
});
