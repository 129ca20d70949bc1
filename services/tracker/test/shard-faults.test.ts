/**
 * Faults of the split of blobs between replicas, against a real nats-server and real tracker
 * processes: an owner paused past the forward timeout does not answer the wants its peer
 * already answered (each asker gets one hand-out), and askers waiting for a blob's first
 * holder are not stranded when the blob moves to a replica that joins.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  pieceHave,
  pieceHaveSubject,
  pieceWantSubject,
  forwardedWantSubject,
  trackerReplicaSubject,
  wantForwarded,
  type Handout,
} from '@shoal/proto';
import {
  startNats,
  startTracker,
  waitFor,
  type NatsServer,
  type ServiceProcess,
} from '@shoal/testkit';

import { rendezvousOwner } from '../src/shard/replicas.js';
import { blob, collectHandouts, firstWant, have } from './fixtures.js';

const WAIT_MS = 20_000;

describe('tracker replicas split the blobs, under faults', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let js: JetStreamClient;
  const running: ServiceProcess[] = [];
  /** Hand-outs received, by asker. */
  let answers = new Map<string, Handout[]>();

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url, timeout: 5_000 });
    js = jetstream(nc, { timeout: 5_000 });
    answers = collectHandouts(nc);
  });

  after(async () => {
    for (const replica of running) {
      replica.process.child.kill('SIGCONT');
      await replica.stop();
    }
    await nc.drain();
    await nats.stop();
  });

  /** Starts a replica with the split on, as `id`. */
  async function replica(id: string, heartbeatMs: number): Promise<ServiceProcess> {
    const started = await startTracker({
      natsUrl: nats.url,
      env: {
        SHOAL_LOG_LEVEL: 'warn',
        SHOAL_TRACKER_SHARD_BY_BLOB: 'true',
        SHOAL_TRACKER_REPLICA_ID: id,
        SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS: String(heartbeatMs),
      },
    });
    running.push(started);
    return started;
  }

  async function hearEachOther(replicas: readonly ServiceProcess[]): Promise<void> {
    for (const r of replicas) {
      await waitFor(
        'the replicas hear each other',
        async () => (await r.metric('shoal_tracker_shard_replicas')) === replicas.length,
        { timeoutMs: WAIT_MS, intervalMs: 50 },
      );
    }
  }

  function publishWant(digest: string, asker: string): Promise<unknown> {
    return js.publish(pieceWantSubject(digest, asker), firstWant(digest, asker));
  }

  /** Waits for a hand-out to `asker` naming `holder` (no agent asks again: only a push). */
  async function holderPushed(asker: string, holder: string, what: string): Promise<void> {
    await waitFor(
      what,
      () =>
        Promise.resolve(
          (answers.get(asker) ?? []).some((h) => h.peers.some((p) => p.peer.id === holder)),
        ),
      { timeoutMs: 10_000, intervalMs: 20 },
    );
  }

  async function stopAll(): Promise<void> {
    for (const r of running.splice(0)) {
      r.process.child.kill('SIGCONT');
      await r.stop();
    }
  }

  it('answers each want once when the owner answers after the forward timeout', async () => {
    // The default heartbeat: the paused owner stays in the live set, so its peer forwards.
    const ra = await replica('late-a', 1_000);
    const rb = await replica('late-b', 1_000);
    await hearEachOther([ra, rb]);
    const members = ['late-a', 'late-b'];
    const owned = Array.from({ length: 200 }, (_, i) => blob(`late-${i}`))
      .filter((d) => rendezvousOwner(d, members) === 'late-b')
      .slice(0, 12);
    for (const [i, digest] of owned.entries()) {
      await js.publish(
        pieceHaveSubject(digest, `late-holder-${i}`),
        encodeMessage(pieceHave, have(digest, `late-holder-${i}`, { complete: true })),
      );
    }
    await waitFor(
      'the owner applied every have',
      async () =>
        (await rb.metric('shoal_tracker_swarm_haves_total', { outcome: 'applied' })) ===
        owned.length,
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );

    // Paused for twice the forward timeout while the other replica pulls and forwards.
    rb.process.child.kill('SIGSTOP');
    try {
      await Promise.all(owned.map((digest, i) => publishWant(digest, `late-asker-${i}`)));
      await sleep(4_000);
    } finally {
      rb.process.child.kill('SIGCONT');
    }
    await waitFor(
      'every asker answered',
      () => Promise.resolve(owned.every((_, i) => answers.has(`late-asker-${i}`))),
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );
    // Time for late answers of the resumed owner to arrive.
    await sleep(2_000);
    await nc.flush();
    assert.ok(
      (await ra.metric('shoal_tracker_wants_forwarded_total', { outcome: 'failed' })) > 0,
      'some wants were forwarded to the paused owner and answered by the forwarder',
    );
    for (let i = 0; i < owned.length; i += 1) {
      const got = answers.get(`late-asker-${i}`) ?? [];
      assert.equal(got.length, 1, `late-asker-${i} answered once`);
      assert.deepEqual(
        got[0]?.peers.map((p) => p.peer.id),
        [`late-holder-${i}`],
      );
    }
    assert.ok(
      (await rb.metric('shoal_tracker_forwarded_wants_expired_total', { stage: 'arrival' })) > 0,
      'the resumed owner dropped the forwards it got too late',
    );
    await stopAll();
  });

  it('pushes the first holder to an asker whose blob moved to a replica that joined', async () => {
    const ra = await replica('move-a', 200);
    const rb = await replica('move-b', 200);
    await hearEachOther([ra, rb]);
    // A blob the joining replica takes from whichever of the first two owned it.
    const digest = Array.from({ length: 100 }, (_, i) => blob(`move-${i}`)).find(
      (d) => rendezvousOwner(d, ['move-a', 'move-b', 'move-c']) === 'move-c',
    );
    assert.ok(digest !== undefined);
    await publishWant(digest, 'move-asker');
    await waitFor('the asker told of no holder', () => Promise.resolve(answers.has('move-asker')), {
      timeoutMs: WAIT_MS,
      intervalMs: 20,
    });
    assert.deepEqual(answers.get('move-asker')?.[0]?.peers, []);

    const rc = await replica('move-c', 200);
    await hearEachOther([ra, rb, rc]);
    await js.publish(
      pieceHaveSubject(digest, 'move-holder'),
      encodeMessage(pieceHave, have(digest, 'move-holder', { complete: true })),
    );
    // No agent asks again here: only a push names the holder.
    await holderPushed('move-asker', 'move-holder', 'the asker pushed the holder');
    assert.equal(
      await rc.metric('shoal_tracker_handouts_pushed_total', { reason: 'holder' }),
      1,
      'the new owner pushed it',
    );
    assert.equal(
      (await ra.metric('shoal_tracker_askers_handed_over_total', { outcome: 'answered' })) +
        (await rb.metric('shoal_tracker_askers_handed_over_total', { outcome: 'answered' })),
      1,
    );

    // Garbage from a replica: an invalid forward is refused (its forwarder answers it), an
    // invalid heartbeat counted; neither changes the live set.
    const refused = await nc.request(forwardedWantSubject('move-c'), new Uint8Array([1, 2, 3]), {
      timeout: 5_000,
    });
    const reply = decodeMessage(wantForwarded, refused.data);
    assert.ok(reply.ok);
    assert.equal(reply.value.outcome, 'not-owner');
    for (let i = 0; i < 3; i += 1) {
      nc.publish(trackerReplicaSubject('bogus'), new Uint8Array([i]));
    }
    await waitFor(
      'invalid heartbeats counted',
      async () =>
        (await rc.metric('shoal_tracker_events_rejected_total', {
          type: 'tracker-replica',
          reason: 'invalid',
        })) === 3,
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );
    assert.equal(await rc.metric('shoal_tracker_shard_replicas'), 3);
    await stopAll();
  });

  it('hands the askers of a replica that stops to the one taking its blobs', async () => {
    const ra = await replica('stop-a', 200);
    const rb = await replica('stop-b', 200);
    await hearEachOther([ra, rb]);
    const digest = Array.from({ length: 100 }, (_, i) => blob(`stop-${i}`)).find(
      (d) => rendezvousOwner(d, ['stop-a', 'stop-b']) === 'stop-b',
    );
    assert.ok(digest !== undefined);
    await publishWant(digest, 'stop-asker');
    await waitFor('the asker told of no holder', () => Promise.resolve(answers.has('stop-asker')), {
      timeoutMs: WAIT_MS,
      intervalMs: 20,
    });

    running.splice(running.indexOf(rb), 1);
    await rb.stop();
    await hearEachOther([ra]);
    await js.publish(
      pieceHaveSubject(digest, 'stop-holder'),
      encodeMessage(pieceHave, have(digest, 'stop-holder', { complete: true })),
    );
    await holderPushed(
      'stop-asker',
      'stop-holder',
      'the asker pushed the holder by the replica that stayed',
    );
    assert.equal(await ra.metric('shoal_tracker_handouts_pushed_total', { reason: 'holder' }), 1);
    await stopAll();
  });
});
