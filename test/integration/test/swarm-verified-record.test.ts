/**
 * The seed server's `pieces-verified` record (issue 9: the agent hashed each byte twice).
 * Once a blob it read from the origin matched its digest, the seed server publishes, after
 * the blob's piece hashes, a record binding them; an agent whose every piece verified against
 * exactly that list releases the blob without hashing it whole. Here: a cold pull through one
 * agent is checked by the record for every blob (and the bytes still match their digests);
 * a record that binds another list (published by the test, which NATS lets write anything)
 * makes a second agent hash the blob itself, and the bytes are right either way.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  pieceHashes,
  pieceHashesSubject,
  pieceListDigest,
  piecesVerified,
  pieceSizeFor,
  STREAMS,
} from '@shoal/proto';
import { startAgent } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

describe("the seed server's verified record", () => {
  let cluster: Cluster;
  let nc: NatsConnection;
  const repository = 'shoal/verified-record';

  before(async () => {
    cluster = await startCluster({
      layerSizes: [6 * MiB, 1 * MiB],
      seed: 'verified-record',
      repository,
      trackers: 1,
      agents: [{ peerId: 'node-1' }],
    });
    nc = await connect({ servers: cluster.nats.url });
  });

  after(async () => {
    await nc.close();
    await cluster.stop();
  });

  const checks = async (agent: Cluster['agents'][number]): Promise<Record<string, number>> => ({
    record: await agent.metric('shoal_agent_swarm_blob_checks_total', { by: 'seed-record' }),
    digest: await agent.metric('shoal_agent_swarm_blob_checks_total', { by: 'digest' }),
  });

  it('spares the agent its whole-blob hash when every piece verified against the list it binds', async () => {
    const { image, agents } = cluster;
    const agent = agents[0];
    assert.ok(agent !== undefined);
    const outcomes = await pullBlobs(agent, cluster, repository);
    assert.equal(outcomes.length, image.blobs.length);
    for (const [i, outcome] of outcomes.entries()) {
      assert.equal(outcome.status, 200);
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, image.blobs[i]?.digest);
    }
    assert.deepEqual(await checks(agent), { record: image.blobs.length, digest: 0 });

    // What the seed published: its record binds the very hashes on the subject.
    const jsm = await jetstreamManager(nc);
    for (const blob of image.blobs) {
      const hashes: string[] = [];
      let record: string | undefined;
      let seq = 0;
      for (;;) {
        const stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
          seq: seq + 1,
          next_by_subj: pieceHashesSubject(blob.digest),
        });
        if (stored === null) {
          break;
        }
        seq = stored.seq;
        const batch = decodeMessage(pieceHashes, stored.data);
        if (batch.ok) {
          batch.value.hashes.forEach((h, i) => (hashes[batch.value.first + i] = h));
        }
        const verified = decodeMessage(piecesVerified, stored.data);
        if (verified.ok) {
          assert.equal(verified.value.size, blob.size);
          record = verified.value.hashes;
        }
      }
      assert.ok(hashes.length > 0);
      assert.equal(record, pieceListDigest(hashes), `${blob.digest}: the record binds its hashes`);
    }
  });

  it('has the agent hash the blob itself when the record binds another list', async () => {
    const { image, registry } = cluster;
    const big = image.layers[0];
    assert.ok(big !== undefined);
    // A record for a list nobody used, published last on the big layer's subject.
    const js = jetstream(nc);
    await js.publish(
      pieceHashesSubject(big.digest),
      encodeMessage(piecesVerified, {
        type: 'pieces-verified',
        blob: big.digest,
        size: big.size,
        pieceSize: pieceSizeFor(big.size),
        hashes: pieceListDigest(['0'.repeat(64)]),
      }),
    );
    const second = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'node-2',
      env: { ...cluster.agentEnv, ...(await cluster.nats.clientEnv('node-2')) },
    });
    cluster.agents.push(second);
    const outcomes = await pullBlobs(second, cluster, repository);
    assert.equal(outcomes.length, image.blobs.length);
    for (const [i, outcome] of outcomes.entries()) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, image.blobs[i]?.digest);
    }
    assert.deepEqual(await checks(second), { record: image.blobs.length - 1, digest: 1 });
    assert.equal(
      await second.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      0,
      'from the swarm, not the origin',
    );
  });
});
