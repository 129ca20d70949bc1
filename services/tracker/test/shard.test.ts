/**
 * Two tracker replicas split the blobs: each applies the haves and answers the wants of its
 * own blobs only (counted from their metrics and read from their views), a want pulled by
 * the replica that does not own its blob is forwarded to the one that does, and when one
 * replica is killed the other takes over its blobs from the haves it kept and answers every
 * want, naming the holders it never applied before. Both replicas run as real processes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  encodeMessage,
  pieceHave,
  pieceHaveSubject,
  pieceWantSubject,
  type Handout,
} from '@shoal/proto';
import {
  startNats,
  startTracker,
  waitFor,
  type NatsServer,
  type ServiceProcess,
} from '@shoal/testkit';

import { blob, collectHandouts, firstWant, have } from './fixtures.js';

const BLOBS = 16;
const WAIT_MS = 15_000;
/** Faster than the default so that a killed replica is missed within a few seconds. */
const HEARTBEAT_MS = 200;

/** The blobs a replica's view holds (its admin route). */
async function viewBlobs(replica: ServiceProcess): Promise<string[]> {
  const response = await fetch(`${replica.url}/swarm`, { signal: AbortSignal.timeout(5_000) });
  const body = (await response.json()) as { blobs: string[] };
  return body.blobs;
}

describe('tracker replicas split the blobs', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let js: JetStreamClient;
  const replicas: ServiceProcess[] = [];
  /** Hand-outs received, by asker. */
  let answers = new Map<string, Handout[]>();
  const digests = Array.from({ length: BLOBS }, (_, i) => blob(`shard-${i}`));
  const holderOf = (i: number): string => `holder-${i}`;

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url, timeout: 5_000 });
    js = jetstream(nc, { timeout: 5_000 });
    answers = collectHandouts(nc);
  });

  after(async () => {
    for (const replica of replicas) {
      await replica.stop();
    }
    await nc.drain();
    await nats.stop();
  });

  async function wantAll(round: string): Promise<void> {
    await Promise.all(
      digests.map((digest, i) =>
        js.publish(pieceWantSubject(digest, `${round}-${i}`), firstWant(digest, `${round}-${i}`)),
      ),
    );
    await waitFor(
      `every ${round} want answered`,
      () => Promise.resolve(digests.every((_, i) => answers.has(`${round}-${i}`))),
      { timeoutMs: WAIT_MS, intervalMs: 20 },
    );
    for (let i = 0; i < BLOBS; i += 1) {
      // The holder is named: whoever answered held the blob's swarm.
      assert.deepEqual(
        answers.get(`${round}-${i}`)?.[0]?.peers.map((p) => p.peer.id),
        [holderOf(i)],
        `${round}-${i}`,
      );
    }
  }

  it('gives each replica a disjoint share, and the survivor all of them', async () => {
    const env = {
      SHOAL_LOG_LEVEL: 'warn',
      SHOAL_TRACKER_SHARD_BY_BLOB: 'true',
      SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
    };
    replicas.push(await startTracker({ natsUrl: nats.url, env }));
    replicas.push(await startTracker({ natsUrl: nats.url, env }));
    const [victim, survivor] = replicas;
    assert.ok(victim !== undefined && survivor !== undefined);
    for (const replica of replicas) {
      await waitFor(
        'the replicas hear each other',
        async () => (await replica.metric('shoal_tracker_shard_replicas')) === 2,
        { timeoutMs: WAIT_MS, intervalMs: 50 },
      );
    }

    // One complete holder per blob.
    for (const [i, digest] of digests.entries()) {
      await js.publish(
        pieceHaveSubject(digest, holderOf(i)),
        encodeMessage(pieceHave, have(digest, holderOf(i), { pieces: [[0, 8]], complete: true })),
      );
    }
    const applied = (replica: ServiceProcess): Promise<number> =>
      replica.metric('shoal_tracker_swarm_haves_total', { outcome: 'applied' });
    const skipped = (replica: ServiceProcess): Promise<number> =>
      replica.metric('shoal_tracker_haves_skipped_total');
    await waitFor(
      'every have applied by one replica and skipped by the other',
      async () =>
        (await applied(victim)) + (await applied(survivor)) === BLOBS &&
        (await skipped(victim)) + (await skipped(survivor)) === BLOBS,
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );
    const victimShare = await viewBlobs(victim);
    const survivorShare = await viewBlobs(survivor);
    for (const [replica, share] of [
      [victim, victimShare],
      [survivor, survivorShare],
    ] as const) {
      assert.ok(share.length > 0, 'each replica owns some blobs');
      assert.equal(await applied(replica), share.length);
      assert.equal(await replica.metric('shoal_tracker_swarm_blobs'), share.length);
    }
    assert.equal(victimShare.filter((b) => survivorShare.includes(b)).length, 0, 'disjoint');
    assert.deepEqual([...victimShare, ...survivorShare].sort(), [...digests].sort());

    // Every want answered once, by the owner: the replica that pulled another's want forwarded it.
    await wantAll('before');
    const handouts = [
      await victim.metric('shoal_tracker_handouts_total'),
      await survivor.metric('shoal_tracker_handouts_total'),
    ];
    assert.deepEqual(handouts, [victimShare.length, survivorShare.length], 'each its own');
    const forwarded =
      (await victim.metric('shoal_tracker_wants_forwarded_total', { outcome: 'answered' })) +
      (await survivor.metric('shoal_tracker_wants_forwarded_total', { outcome: 'answered' }));
    const pulled =
      (await victim.metric('shoal_tracker_events_consumed_total', { type: 'piece-want' })) +
      (await survivor.metric('shoal_tracker_events_consumed_total', { type: 'piece-want' }));
    assert.equal(pulled, BLOBS, 'each want pulled once');
    // Both replicas pulled wants, so some came to the replica that does not own their blob.
    assert.ok(forwarded > 0 && forwarded <= BLOBS, `forwarded ${forwarded}`);
    for (let i = 0; i < BLOBS; i += 1) {
      assert.equal(answers.get(`before-${i}`)?.length, 1, `before-${i} answered once`);
    }

    // Killed: the survivor takes the victim's blobs from the haves it kept, and answers every
    // want for them with their holder.
    victim.process.child.kill('SIGKILL');
    await victim.process.kill();
    replicas.shift();
    await wantAll('after');
    assert.deepEqual((await viewBlobs(survivor)).sort(), [...digests].sort());
    assert.equal(await survivor.metric('shoal_tracker_shard_replicas'), 1);
    assert.ok((await survivor.metric('shoal_tracker_shard_blobs_adopted_total')) > 0);
    assert.equal(
      await survivor.metric('shoal_tracker_handouts_total'),
      BLOBS + survivorShare.length,
    );
  });
});
