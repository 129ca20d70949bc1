/**
 * Faults of the split of blobs between replicas, against a real nats-server and real tracker
 * processes: an owner paused past the forward timeout does not answer the wants its peer
 * already answered (each asker gets one hand-out), also when its clock runs behind, an owner
 * whose clock runs ahead still answers in time, and askers waiting for a blob's first
 * holder are not stranded when the blob moves to a replica that joins.
 */
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, it } from 'node:test';

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

  /**
   * Settings that run a replica with its wall clock `skewMs` off (a clock out of sync cannot
   * be had for real on one machine): a preloaded module moves `Date.now`, which is the
   * tracker's clock.
   */
  function skewedClock(skewMs: number): Record<string, string> {
    return { NODE_OPTIONS: `--require ${clockShim}`, SHOAL_TEST_CLOCK_SKEW_MS: String(skewMs) };
  }
  let clockShim = '';

  before(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-clock-'));
    clockShim = join(dir, 'skew.cjs');
    await writeFile(
      clockShim,
      'const skew = Number(process.env.SHOAL_TEST_CLOCK_SKEW_MS);\n' +
        'const real = Date.now;\n' +
        'Date.now = () => real() + skew;\n',
    );
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

  /** Starts a replica with the split on, as `id`; `env`: extra settings. */
  async function replica(
    id: string,
    heartbeatMs: number,
    env: Record<string, string> = {},
  ): Promise<ServiceProcess> {
    const started = await startTracker({
      natsUrl: nats.url,
      env: {
        SHOAL_LOG_LEVEL: 'warn',
        SHOAL_TRACKER_SHARD_BY_BLOB: 'true',
        SHOAL_TRACKER_REPLICA_ID: id,
        SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS: String(heartbeatMs),
        ...env,
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

  // Each test starts its own replicas; a failed one must not leave them to the next.
  afterEach(() => stopAll());

  async function stopAll(): Promise<void> {
    for (const r of running.splice(0)) {
      r.process.child.kill('SIGCONT');
      await r.stop();
    }
  }

  /**
   * Publishes a complete have of `${prefix}-holder-${i}` for each of `owned` (blobs `owner`
   * owns) and waits until the owner applied them all (the count from before: a new replica
   * also replays the haves of earlier tests).
   */
  async function publishHolders(
    owner: ServiceProcess,
    owned: readonly string[],
    prefix: string,
  ): Promise<void> {
    const applied = (): Promise<number> =>
      owner.metric('shoal_tracker_swarm_haves_total', { outcome: 'applied' });
    const before = await applied();
    for (const [i, digest] of owned.entries()) {
      await js.publish(
        pieceHaveSubject(digest, `${prefix}-holder-${i}`),
        encodeMessage(pieceHave, have(digest, `${prefix}-holder-${i}`, { complete: true })),
      );
    }
    await waitFor(
      'the owner applied every have',
      async () => (await applied()) === before + owned.length,
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );
  }

  /**
   * Pauses the owner of a dozen blobs past the forward timeout while the other replica pulls
   * their wants and forwards them: each asker is answered once, by the forwarder, and the
   * resumed owner drops the forwards it got too late. `ownerEnv`: the owner's extra settings.
   */
  async function pausedOwnerAnswersOnce(
    prefix: string,
    ownerEnv: Record<string, string> = {},
  ): Promise<void> {
    // The default heartbeat: the paused owner stays in the live set, so its peer forwards.
    const ra = await replica(`${prefix}-a`, 1_000);
    const rb = await replica(`${prefix}-b`, 1_000, ownerEnv);
    await hearEachOther([ra, rb]);
    const members = [`${prefix}-a`, `${prefix}-b`];
    const owned = Array.from({ length: 200 }, (_, i) => blob(`${prefix}-${i}`))
      .filter((d) => rendezvousOwner(d, members) === `${prefix}-b`)
      .slice(0, 12);
    await publishHolders(rb, owned, prefix);

    // Paused for twice the forward timeout while the other replica pulls and forwards.
    rb.process.child.kill('SIGSTOP');
    try {
      await Promise.all(owned.map((digest, i) => publishWant(digest, `${prefix}-asker-${i}`)));
      await sleep(4_000);
    } finally {
      rb.process.child.kill('SIGCONT');
    }
    await waitFor(
      'every asker answered',
      () => Promise.resolve(owned.every((_, i) => answers.has(`${prefix}-asker-${i}`))),
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
      const got = answers.get(`${prefix}-asker-${i}`) ?? [];
      assert.equal(got.length, 1, `${prefix}-asker-${i} answered once`);
      assert.deepEqual(
        got[0]?.peers.map((p) => p.peer.id),
        [`${prefix}-holder-${i}`],
      );
    }
    assert.ok(
      (await rb.metric('shoal_tracker_forwarded_wants_expired_total', { stage: 'arrival' })) > 0,
      'the resumed owner dropped the forwards it got too late',
    );
  }

  it('answers each want once when the owner answers after the forward timeout', () =>
    pausedOwnerAnswersOnce('late'));

  it("answers each want once when the paused owner's clock runs behind", () =>
    // On its own clock the forwarder's deadline would still be 3.5 s away when the owner
    // resumes; read on the forwarder's clock, it has passed.
    pausedOwnerAnswersOnce('behind', skewedClock(-5_000)));

  it("answers forwarded wants in time when the owner's clock runs ahead", async () => {
    const ra = await replica('ahead-a', 200);
    const rb = await replica('ahead-b', 200, skewedClock(5_000));
    await hearEachOther([ra, rb]);
    const offset = (r: ServiceProcess, of: string): Promise<number> =>
      r.metric('shoal_tracker_replica_clock_offset_seconds', { replica: of });
    await waitFor(
      "each replica measured the other's clock",
      async () =>
        Math.abs((await offset(rb, 'ahead-a')) - 5) < 0.5 &&
        Math.abs((await offset(ra, 'ahead-b')) + 5) < 0.5,
      { timeoutMs: WAIT_MS, intervalMs: 50 },
    );
    const owned = Array.from({ length: 400 }, (_, i) => blob(`ahead-${i}`)).filter(
      (d) => rendezvousOwner(d, ['ahead-a', 'ahead-b']) === 'ahead-b',
    );
    await publishHolders(rb, owned, 'ahead');
    // Both replicas pull from the one work queue: wants go out in rounds of a dozen until
    // the other replica has forwarded a few (ten rounds at most).
    const forwardedAnswered = (): Promise<number> =>
      ra.metric('shoal_tracker_wants_forwarded_total', { outcome: 'answered' });
    let asked = 0;
    for (let round = 0; round < 10 && (await forwardedAnswered()) < 3; round += 1) {
      const batch = owned.slice(asked, asked + 12);
      await Promise.all(batch.map((digest, i) => publishWant(digest, `ahead-asker-${asked + i}`)));
      asked += batch.length;
      await waitFor(
        'the round answered',
        () =>
          Promise.resolve(owned.slice(0, asked).every((_, i) => answers.has(`ahead-asker-${i}`))),
        // Well under the 2 s a forwarder waits before it answers itself.
        { timeoutMs: 1_500, intervalMs: 20 },
      );
    }
    assert.ok((await forwardedAnswered()) >= 3, 'the owner answered the wants forwarded to it');
    assert.equal(await ra.metric('shoal_tracker_wants_forwarded_total', { outcome: 'failed' }), 0);
    assert.equal(
      await rb.metric('shoal_tracker_forwarded_wants_expired_total', { stage: 'arrival' }),
      0,
      'no forward taken for late because the clock runs ahead',
    );
    await sleep(500);
    await nc.flush();
    for (let i = 0; i < asked; i += 1) {
      const got = answers.get(`ahead-asker-${i}`) ?? [];
      assert.equal(got.length, 1, `ahead-asker-${i} answered once`);
      assert.deepEqual(
        got[0]?.peers.map((p) => p.peer.id),
        [`ahead-holder-${i}`],
      );
    }
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
  });
});
