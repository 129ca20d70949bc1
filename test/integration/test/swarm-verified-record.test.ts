/**
 * The seed server's signed `pieces-verified` record (issue 9: the agent hashed each byte twice,
 * once for its piece and once for the whole blob). Once a blob it read from the origin matched
 * its digest, the seed server signs a record binding the blob's piece hashes with its record
 * key and keeps one per blob on a subject of its own; an agent holding the public key, whose
 * every piece verified against exactly that list, releases the blob without hashing it whole.
 *
 * Here, on real servers: the seed keeps one signed record per blob, binding the hashes it
 * published; an agent pulling blobs the seed holds is vouched for by the record for every
 * blob, with the right bytes; a record signed by another key (even binding the right list),
 * or signed by the seed's key but binding another list, leaves the agent hashing that blob
 * itself; an agent that trusts another key hashes every blob; an agent that trusted the
 * record still refuses a lying peer's pieces, and vouches for the origin's instead. The bytes
 * are right every time.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
  piecesVerifiedSubject,
  signPiecesVerified,
  STREAMS,
  verifyPiecesVerified,
  type PiecesVerified,
} from '@shoal/proto';
import { startAgent, testRecordKeys, type AgentProcess } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

describe("the seed server's signed record", () => {
  let cluster: Cluster;
  let nc: NatsConnection;
  let keyDir: string;
  const repository = 'shoal/verified-record';
  /** The seed's records as it stored them, by blob (before the test forges others). */
  const real = new Map<string, PiecesVerified>();

  before(async () => {
    cluster = await startCluster({
      layerSizes: [6 * MiB, 1 * MiB],
      seed: 'verified-record',
      repository,
      trackers: 1,
      agents: [{ peerId: 'node-1' }],
    });
    nc = await connect({ servers: cluster.nats.url });
    keyDir = await mkdtemp(join(tmpdir(), 'shoal-record-keys-'));
  });

  after(async () => {
    await nc.close();
    await cluster.stop();
    await rm(keyDir, { recursive: true, force: true });
  });

  const checks = async (agent: AgentProcess): Promise<{ record: number; digest: number }> => ({
    record: await agent.metric('shoal_agent_swarm_blob_checks_total', { by: 'seed-record' }),
    digest: await agent.metric('shoal_agent_swarm_blob_checks_total', { by: 'digest' }),
  });

  /** Pulls every blob through `agent`: each with the right bytes, none from the origin. */
  const pullAll = async (agent: AgentProcess): Promise<void> => {
    const { image } = cluster;
    const outcomes = await pullBlobs(agent, cluster, repository);
    assert.equal(outcomes.length, image.blobs.length);
    for (const [i, outcome] of outcomes.entries()) {
      assert.equal(outcome.status, 200);
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, image.blobs[i]?.digest);
    }
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      0,
      'from the swarm, not the origin',
    );
  };

  const startNode = async (peerId: string, env: Record<string, string> = {}) => {
    const agent = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      defaultRegistry: cluster.registry.host,
      natsUrl: cluster.nats.url,
      peerId,
      env: { ...cluster.agentEnv, ...(await cluster.nats.clientEnv(peerId)), ...env },
    });
    cluster.agents.push(agent);
    return agent;
  };

  /** The record stored last on `blob`'s record subject, decoded. */
  const storedRecord = async (blob: string): Promise<PiecesVerified | undefined> => {
    const jsm = await jetstreamManager(nc);
    const stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
      last_by_subj: piecesVerifiedSubject(blob),
    });
    if (stored === null) {
      return undefined;
    }
    const decoded = decodeMessage(piecesVerified, stored.data);
    assert.ok(decoded.ok, 'a valid record');
    return decoded.value;
  };

  it('is kept once per blob, signed by the seed, binding the hashes it published', async () => {
    const { image, agents } = cluster;
    const first = agents[0];
    assert.ok(first !== undefined);
    // A cold pull: the seed reads each blob from the origin while the agent fetches it. The
    // record comes once the seed has the whole blob, which a small blob's agent may not wait
    // for: every blob is checked one way or the other, and its bytes are right.
    await pullAll(first);
    const cold = await checks(first);
    assert.equal(cold.record + cold.digest, image.blobs.length);

    const jsm = await jetstreamManager(nc);
    for (const blob of image.blobs) {
      const hashes: string[] = [];
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
        assert.ok(batch.ok, 'only piece hashes on the hash subject');
        batch.value.hashes.forEach((h, i) => (hashes[batch.value.first + i] = h));
      }
      const record = await storedRecord(blob.digest);
      assert.ok(record !== undefined, `${blob.digest}: a record`);
      assert.equal(record.size, blob.size);
      assert.equal(record.hashes, pieceListDigest(hashes), `${blob.digest}: binds its hashes`);
      assert.equal(verifyPiecesVerified(record, [testRecordKeys().publicKey]), true);
      const info = await jsm.streams.info(STREAMS.pieces.name, {
        subjects_filter: piecesVerifiedSubject(blob.digest),
      });
      assert.deepEqual(
        Object.values(info.state.subjects ?? {}),
        [1],
        `${blob.digest}: one record kept`,
      );
    }
  });

  it('spares an agent its whole-blob hash for blobs the seed verified', async () => {
    const second = await startNode('node-2');
    await pullAll(second);
    assert.deepEqual(await checks(second), { record: cluster.image.blobs.length, digest: 0 });
    assert.equal(await second.metric('shoal_agent_events_rejected_total'), 0);
  });

  it('ignores a record another key signed, or one binding another list', async () => {
    const { image } = cluster;
    const [big, small] = image.layers;
    assert.ok(big !== undefined && small !== undefined);
    for (const blob of image.blobs) {
      const record = await storedRecord(blob.digest);
      assert.ok(record !== undefined);
      real.set(blob.digest, record);
    }
    const bigRecord = real.get(big.digest);
    const realSmall = real.get(small.digest);
    assert.ok(bigRecord !== undefined && realSmall !== undefined);
    const js = jetstream(nc);
    // NATS lets this test publish anything: what the agent trusts is the signature.
    // The big layer: the right list, signed by a key nobody trusts.
    const intruder = generateKeyPairSync('ed25519');
    await js.publish(
      piecesVerifiedSubject(big.digest),
      encodeMessage(piecesVerified, signPiecesVerified(intruder.privateKey, bigRecord)),
    );
    // The small layer: signed by the seed's key, but for a list nobody used.
    await js.publish(
      piecesVerifiedSubject(small.digest),
      encodeMessage(
        piecesVerified,
        signPiecesVerified(testRecordKeys().privateKey, {
          ...realSmall,
          hashes: pieceListDigest(['0'.repeat(64)]),
        }),
      ),
    );
    const third = await startNode('node-3');
    await pullAll(third);
    assert.deepEqual(await checks(third), { record: image.blobs.length - 2, digest: 2 });
    assert.ok(
      (await third.metric('shoal_agent_events_rejected_total', { type: 'pieces-verified' })) >= 1,
      'the record no trusted key signed is counted',
    );
  });

  it('has an agent that trusts another key hash every blob itself', async () => {
    const other = generateKeyPairSync('ed25519');
    const file = join(keyDir, 'other.pub');
    await writeFile(file, other.publicKey.export({ type: 'spki', format: 'pem' }).toString());
    const fourth = await startNode('node-4', { SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE: file });
    await pullAll(fourth);
    assert.deepEqual(await checks(fourth), { record: 0, digest: cluster.image.blobs.length });
  });

  it('still refuses every bad piece once the record is trusted: a lying peer, then the origin', async () => {
    const { image } = cluster;
    const js = jetstream(nc);
    // The seed's own records back on top of the forged ones (they are its signed bytes).
    for (const blob of image.blobs) {
      const record = real.get(blob.digest);
      assert.ok(record !== undefined);
      await js.publish(piecesVerifiedSubject(blob.digest), encodeMessage(piecesVerified, record));
    }
    // A peer that serves corrupt pieces takes the image honestly first...
    const liar = await startNode('liar', { SHOAL_AGENT_FAULT_CORRUPT_PIECES: 'true' });
    await pullAll(liar);
    // ...then every honest holder and the seed server go: the liar is the only source left.
    for (const agent of cluster.agents.filter((a) => a !== liar)) {
      await agent.stop();
    }
    await cluster.seed.stop();
    const last = await startNode('node-6');
    const outcomes = await pullBlobs(last, cluster, repository);
    for (const [i, outcome] of outcomes.entries()) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, image.blobs[i]?.digest, 'the right bytes, whatever was sent');
    }
    assert.ok(
      (await last.metric('shoal_agent_pieces_total', { source: 'peer', result: 'bad' })) >= 1,
      "the liar's pieces were checked against the frozen list, and refused",
    );
    // Each blob was trusted by its record from its first hashes: the pieces that came from the
    // origin instead were checked against the same list, and vouched for by it.
    assert.deepEqual(await checks(last), { record: image.blobs.length, digest: 0 });
    assert.equal(await last.metric('shoal_agent_verification_failures_total', { kind: 'blob' }), 0);
  });
});
