/**
 * The tracker's real wiring against a real nats-server: hand-outs, bad input, restarts, two
 * replicas sharing the wants, and seed requests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  handout,
  handoutSubject,
  peerGone,
  peerGoneSubject,
  pieceHave,
  pieceHaveSubject,
  pieceWant,
  pieceWantSubject,
  seedRequest,
  seedRequestSubject,
  STREAMS,
  verifyHandoutToken,
  type Handout,
  type PieceHave,
  type PieceRanges,
  type PieceWant,
} from '@shoal/proto';
import { ensureStreams } from '@shoal/runtime/nats';
import {
  makeTempDir,
  startNats,
  testHandoutKeys,
  waitFor,
  writeHandoutPrivateKey,
  type NatsServer,
} from '@shoal/testkit';

import { buildApp, loadTrackerConfig, type TrackerApp } from '../src/app.js';
import { WANTS_CONSUMER } from '../src/consumers/piece-want.js';
import { seedRequestId } from '../src/seed/requests.js';
import { blob, have, peer } from './fixtures.js';

/** How long a test waits for a hand-out or a view change, in ms. */
const WAIT_MS = 10_000;

/** Where the test trackers' hand-out key is written; removed when the tests end. */
let keyDir: { path: string; remove(): Promise<void> } | undefined;
after(async () => {
  await keyDir?.remove();
});

async function startTracker(
  natsUrl: string,
  env: Record<string, string> = {},
): Promise<TrackerApp> {
  keyDir ??= await makeTempDir('tracker-key');
  const config = loadTrackerConfig({
    SHOAL_TRACKER_HANDOUT_KEY_FILE: await writeHandoutPrivateKey(keyDir.path),
    SHOAL_NATS_URL: natsUrl,
    SHOAL_TRACKER_LISTEN: '127.0.0.1:0',
    SHOAL_LOG_LEVEL: 'silent',
    // These tests follow each blob to the replica that owns it.
    SHOAL_TRACKER_SHARD_BY_BLOB: 'true',
    ...env,
  });
  const app = await buildApp(config);
  try {
    await app.start();
  } catch (error) {
    await app.close();
    throw error;
  }
  return app;
}

/** Hand-outs received on core NATS, by asker. */
class HandoutInbox {
  readonly received = new Map<string, Handout[]>();
  readonly invalid: string[] = [];
  readonly #sub: Subscription;

  constructor(nc: NatsConnection) {
    this.#sub = nc.subscribe(handoutSubject('*'), {
      callback: (error, msg) => {
        if (error !== null) {
          this.invalid.push(error.message);
          return;
        }
        const asker = msg.subject.split('.').at(-1) ?? '';
        const decoded = decodeMessage(handout, msg.data);
        if (!decoded.ok) {
          this.invalid.push(decoded.error);
          return;
        }
        this.received.set(asker, [...(this.received.get(asker) ?? []), decoded.value]);
      },
    });
  }

  get total(): number {
    let total = 0;
    for (const list of this.received.values()) {
      total += list.length;
    }
    return total;
  }

  /** The `n`th hand-out (from 1) received by `asker`. */
  async nth(asker: string, n = 1): Promise<Handout> {
    await waitFor(
      `hand-out ${n} for ${asker}`,
      () => Promise.resolve((this.received.get(asker)?.length ?? 0) >= n),
      { timeoutMs: WAIT_MS, intervalMs: 10 },
    );
    const answer = this.received.get(asker)?.[n - 1];
    assert.ok(answer !== undefined);
    return answer;
  }

  stop(): void {
    this.#sub.unsubscribe();
  }
}

async function announce(js: JetStreamClient, message: PieceHave): Promise<void> {
  await js.publish(
    pieceHaveSubject(message.blob, message.peer.id),
    encodeMessage(pieceHave, message),
  );
}

type WantOptions = { have?: PieceRanges; zone?: string; limit?: number };

function wantOf(digest: string, asker: string, options: WantOptions = {}): PieceWant {
  return {
    type: 'piece-want',
    blob: digest,
    peer: peer(asker, options.zone),
    have: options.have ?? [],
    registry: 'registry.test',
    repository: 'library/app',
    limit: options.limit ?? 8,
  };
}

async function want(
  js: JetStreamClient,
  digest: string,
  asker: string,
  options: WantOptions = {},
): Promise<void> {
  await js.publish(
    pieceWantSubject(digest, asker),
    encodeMessage(pieceWant, wantOf(digest, asker, options)),
  );
}

/** What a snapshot or hand-out says about a member, in the shape of a piece-have. */
function asAnnounced(entry: {
  peer: PieceHave['peer'];
  pieces: PieceRanges;
  complete: boolean;
  seed: boolean;
}): Omit<PieceHave, 'type' | 'blob'> {
  return { peer: entry.peer, pieces: entry.pieces, complete: entry.complete, seed: entry.seed };
}

/** The value of one sample of `/metrics`, matched by name and labels; 0 when absent. */
async function metric(
  app: TrackerApp,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const response = await fetch(`${app.url()}/metrics`, { signal: AbortSignal.timeout(5_000) });
  const text = await response.text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) {
      continue;
    }
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return total;
}

async function waitForMembers(app: TrackerApp, digest: string, count: number): Promise<void> {
  await waitFor(
    `${count} members of ${digest} in the view`,
    () => Promise.resolve(app.view.swarm(digest).length === count),
    { timeoutMs: WAIT_MS, intervalMs: 10 },
  );
}

describe('tracker', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let js: JetStreamClient;
  let jsm: JetStreamManager;
  let inbox: HandoutInbox;
  const running = new Set<TrackerApp>();

  const a = blob('a');
  const b = blob('b');
  // The swarm of blob a: the asker `me` holds pieces 0-4 in zone z1.
  const announced: PieceHave[] = [
    have(a, 'me', { pieces: [[0, 5]], zone: 'z1' }),
    have(a, 'near', { pieces: [[0, 20]], zone: 'z1' }),
    have(a, 'far', { pieces: [[0, 20]], zone: 'z2' }),
    have(a, 'useless', { pieces: [[0, 5]], zone: 'z1' }),
    have(a, 'seed', { pieces: [[0, 20]], complete: true, seed: true, zone: 'z1' }),
    have(b, 'near', { pieces: [[0, 3]], complete: true, zone: 'z1' }),
  ];

  async function tracker(): Promise<TrackerApp> {
    const app = await startTracker(nats.url);
    running.add(app);
    return app;
  }

  /**
   * Waits until the replica that owns `digest` (blobs are split between the replicas) holds
   * `count` members of it, and no other replica holds any.
   */
  async function waitForOwnerMembers(digest: string, count: number): Promise<void> {
    await waitFor(
      `${count} members of ${digest} in its owner's view`,
      () => {
        const sizes = [...running].map((app) => app.view.swarm(digest).length);
        return Promise.resolve(
          sizes.filter((n) => n === count).length === 1 &&
            sizes.every((n) => n === count || n === 0),
        );
      },
      { timeoutMs: WAIT_MS, intervalMs: 10 },
    );
  }

  /** Waits until every running replica hears all the others. */
  async function waitForReplicas(): Promise<void> {
    for (const app of running) {
      await waitFor(
        'the replicas hear each other',
        async () => (await metric(app, 'shoal_tracker_shard_replicas')) === running.size,
        { timeoutMs: WAIT_MS, intervalMs: 20 },
      );
    }
  }

  async function stopTracker(app: TrackerApp): Promise<void> {
    running.delete(app);
    await app.close();
  }

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url, timeout: 5_000 });
    js = jetstream(nc, { timeout: 5_000 });
    jsm = await jetstreamManager(nc, { timeout: 5_000 });
    inbox = new HandoutInbox(nc);
  });

  after(async () => {
    for (const app of running) {
      await app.close();
    }
    inbox.stop();
    await nc.drain();
    await nats.stop();
  });

  it('answers a want with the right peers: asker excluded, zone first, seed last', async () => {
    const app = await tracker();
    assert.equal(app.notReadyReason(), undefined);
    const ready = await fetch(`${app.url()}/readyz`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(ready.status, 200);

    for (const message of announced) {
      await announce(js, message);
    }
    await waitForMembers(app, a, 5);

    await want(js, a, 'me', { have: [[0, 5]], zone: 'z1' });
    const answer = await inbox.nth('me');
    assert.equal(answer.blob, a);
    assert.deepEqual(
      answer.peers.map((p) => p.peer.id),
      ['near', 'far', 'seed'],
      'me is the asker, useless holds nothing me lacks, the seed goes last',
    );
    // As announced, but for a partial holder only the pieces the asker lacks ([0, 5) it has).
    const byId = new Map(announced.filter((h) => h.blob === a).map((h) => [h.peer.id, h]));
    for (const entry of answer.peers) {
      const source = byId.get(entry.peer.id);
      assert.ok(source !== undefined);
      const offered: PieceRanges = source.complete ? source.pieces : [[5, 20]];
      assert.deepEqual(asAnnounced(entry), asAnnounced({ ...source, pieces: offered }));
    }
    // The asker's token: signed by the tracker's key, for this blob and this asker, for 10 min.
    assert.ok(answer.token !== undefined, 'a hand-out carries a token');
    const verified = verifyHandoutToken(answer.token, [testHandoutKeys().publicKey]);
    assert.ok(verified.ok, 'the token verifies with the public key');
    assert.equal(verified.claims.blob, a);
    assert.equal(verified.claims.peer, 'me');
    const ttl = verified.claims.exp - Date.now();
    assert.ok(ttl > 9 * 60_000 && ttl <= 10 * 60_000, `token lives ${ttl} ms`);
    assert.equal(await metric(app, 'shoal_tracker_handouts_total'), 1);
    assert.equal(
      await metric(app, 'shoal_tracker_events_consumed_total', { type: 'piece-have' }),
      6,
    );
    assert.equal(await metric(app, 'shoal_tracker_seed_requests_total'), 0);
    assert.equal(await metric(app, 'shoal_tracker_handout_latency_seconds_count'), 1);
  });

  it('terminates and counts invalid events, and keeps answering', async () => {
    const [app] = running;
    assert.ok(app !== undefined);
    const wantSubject = pieceWantSubject(a, 'sneaky');
    await js.publish(wantSubject, Buffer.from('{not json'));
    await js.publish(wantSubject, Buffer.from(JSON.stringify({ type: 'piece-want', blob: a })));
    // Names the mirror's HTTP path would refuse: they would reach the seed server's fetch.
    const valid = {
      type: 'piece-want',
      blob: a,
      peer: peer('sneaky'),
      have: [],
      registry: 'registry.test',
      repository: 'library/app',
    };
    await js.publish(
      wantSubject,
      Buffer.from(JSON.stringify({ ...valid, repository: '../../v2/_catalog' })),
    );
    await js.publish(
      wantSubject,
      Buffer.from(JSON.stringify({ ...valid, registry: 'evil.test/x?y=' })),
    );
    // A valid want, but for another blob than its subject says.
    await js.publish(
      wantSubject,
      encodeMessage(pieceWant, {
        type: 'piece-want',
        blob: b,
        peer: peer('liar'),
        have: [],
        registry: 'registry.test',
        repository: 'library/app',
      }),
    );
    // A have for another peer than its subject names, and one that is not a have at all.
    await js.publish(
      pieceHaveSubject(a, 'mallory'),
      encodeMessage(pieceHave, have(a, 'near', { pieces: [] })),
    );
    await js.publish(pieceHaveSubject(a, 'junk'), Buffer.from('[]'));

    await want(js, a, 'after-junk');
    const answer = await inbox.nth('after-junk');
    // No zone and nothing held: everyone can help. The peers handed out by the first test
    // carry that load (far before near by id), the seed still goes last.
    assert.deepEqual(
      answer.peers.map((p) => p.peer.id),
      ['me', 'useless', 'far', 'near', 'seed'],
    );
    assert.equal(inbox.received.has('liar'), false);
    assert.deepEqual(inbox.invalid, []);

    await waitFor(
      'rejections counted',
      async () => (await metric(app, 'shoal_tracker_events_rejected_total')) === 7,
      { timeoutMs: WAIT_MS },
    );
    const rejected = (type: string, reason: string): Promise<number> =>
      metric(app, 'shoal_tracker_events_rejected_total', { type, reason });
    assert.equal(await rejected('piece-want', 'invalid'), 4);
    assert.equal(inbox.received.has('sneaky'), false);
    assert.equal(await rejected('piece-want', 'subject-mismatch'), 1);
    assert.equal(await rejected('piece-have', 'invalid'), 1);
    assert.equal(await rejected('piece-have', 'subject-mismatch'), 1);
    // The near peer's entry was not overwritten by the have filed under mallory's subject.
    assert.deepEqual(app.view.swarm(a).find((e) => e.peer.id === 'near')?.pieces, [[0, 20]]);

    // Terminated, not redelivered: the work queue empties and nothing waits for an ack. Acks
    // are fire-and-forget, so the server may see them a moment after the hand-out.
    await waitFor(
      'the work queue to empty',
      async () =>
        (await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER)).num_ack_pending === 0 &&
        (await jsm.streams.info(STREAMS.wants.name)).state.messages === 0,
      { timeoutMs: WAIT_MS },
    );
    const consumer = await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER);
    assert.equal(consumer.num_redelivered, 0);
  });

  it('rebuilds its view from the stream after a restart', async () => {
    for (const app of [...running]) {
      await stopTracker(app);
    }
    // While no tracker runs: a peer leaves, and another announces a new blob.
    await js.publish(
      peerGoneSubject('far'),
      encodeMessage(peerGone, { type: 'peer-gone', peer: 'far' }),
    );
    const c = blob('c');
    const late = have(c, 'late', { pieces: [[0, 7]] });
    await announce(js, late);

    const app = await tracker();
    const expected = (digest: string): Omit<PieceHave, 'type' | 'blob'>[] =>
      [...announced, late]
        .filter((h) => h.blob === digest && h.peer.id !== 'far')
        .map(asAnnounced)
        .sort((x, y) => x.peer.id.localeCompare(y.peer.id));
    for (const digest of [a, b, c]) {
      assert.deepEqual(app.view.swarm(digest).map(asAnnounced), expected(digest), digest);
    }
    assert.deepEqual(app.view.blobs(), [a, b, c].sort());

    await want(js, a, 'me', { have: [[0, 5]], zone: 'z1' });
    const answer = await inbox.nth('me', 2);
    assert.deepEqual(
      answer.peers.map((p) => p.peer.id),
      ['near', 'seed'],
    );

    // A have after the peer-gone brings the peer back.
    await announce(js, have(a, 'far', { pieces: [[0, 20]], zone: 'z2' }));
    await waitForMembers(app, a, 5);
  });

  it('answers each want exactly once with two replicas', async () => {
    await tracker();
    assert.equal(running.size, 2);
    // The blobs are split: one replica holds blob a's swarm, the other none of it.
    await waitForReplicas();
    await waitForOwnerMembers(a, 5);

    const wants = 40;
    const before = inbox.total;
    await Promise.all(
      Array.from({ length: wants }, (_, i) => want(js, a, `asker-${i}`, { limit: 2 })),
    );
    await waitFor('every want answered', () => Promise.resolve(inbox.total - before >= wants), {
      timeoutMs: WAIT_MS,
      intervalMs: 10,
    });
    // Time for a duplicate to show up, if there were one.
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(inbox.total - before, wants);
    for (let i = 0; i < wants; i += 1) {
      assert.equal(inbox.received.get(`asker-${i}`)?.length, 1, `asker-${i}`);
    }
    let answered = 0;
    for (const app of running) {
      answered += await metric(app, 'shoal_tracker_events_consumed_total', { type: 'piece-want' });
    }
    // The first replica also answered the restart test's want.
    assert.equal(answered, wants + 1);
  });

  it('asks the seed server once for a blob nobody can finish', async () => {
    // No seed server yet: the want is still answered, and the missing stream only counted.
    const nobody = blob('nobody');
    await want(js, nobody, 'lonely');
    assert.deepEqual((await inbox.nth('lonely')).peers, []);
    let noStream = 0;
    for (const app of running) {
      noStream += await metric(app, 'shoal_tracker_seed_requests_total', { outcome: 'no-stream' });
    }
    assert.equal(noStream, 1);

    await ensureStreams(jsm, [STREAMS.seed], 1);
    const fresh = blob('fresh');
    // A partial peer holds some of it: still nobody who can finish it.
    await announce(js, have(fresh, 'partial', { pieces: [[0, 2]] }));
    await waitForOwnerMembers(fresh, 1);
    const askers = Array.from({ length: 6 }, (_, i) => `eager-${i}`);
    await Promise.all(askers.map((asker) => want(js, fresh, asker)));
    for (const asker of askers) {
      const answer = await inbox.nth(asker);
      assert.deepEqual(
        answer.peers.map((p) => p.peer.id),
        ['partial'],
      );
    }

    const stream = await jsm.streams.info(STREAMS.seed.name);
    assert.equal(stream.state.messages, 1);
    const stored = await jsm.streams.getMessage(STREAMS.seed.name, {
      last_by_subj: seedRequestSubject(fresh),
    });
    assert.ok(stored !== null);
    assert.equal(stored.header.get('Nats-Msg-Id'), seedRequestId(fresh));
    assert.equal(seedRequestId(fresh), `seed-sha256-${fresh.slice('sha256:'.length)}`);
    assert.equal(
      seedRequestId(fresh, 42),
      `seed-sha256-${fresh.slice('sha256:'.length)}-w42`,
      'after a seed withdrew the blob, a new request',
    );
    const decoded = decodeMessage(seedRequest, stored.data);
    assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
    assert.deepEqual(decoded.value, {
      type: 'seed-request',
      blob: fresh,
      registry: 'registry.test',
      repository: 'library/app',
      reason: { kind: 'want' },
    });

    let outcomes = 0;
    let published = 0;
    for (const app of running) {
      outcomes += await metric(app, 'shoal_tracker_seed_requests_total');
      published += await metric(app, 'shoal_tracker_seed_requests_total', { outcome: 'published' });
    }
    assert.equal(published, 1);
    assert.equal(outcomes, 1 + askers.length, 'one no-stream, then one request per want');

    // A blob with a seed needs no request.
    await want(js, a, 'calm');
    await inbox.nth('calm');
    assert.equal((await jsm.streams.info(STREAMS.seed.name)).state.messages, 1);
  });

  it('tells an asker of the first holder when its have arrives, without another want', async () => {
    const pushed = async (): Promise<number> => {
      let total = 0;
      for (const app of running) {
        total += await metric(app, 'shoal_tracker_handouts_pushed_total');
      }
      return total;
    };
    const before = await pushed();
    const cold = blob('cold');
    await want(js, cold, 'waiter');
    assert.deepEqual((await inbox.nth('waiter')).peers, [], 'nobody holds it yet');
    // A member holding nothing is no holder: no hand-out for it, and no entry in the view.
    const withdrawn = (app: TrackerApp): Promise<number> =>
      metric(app, 'shoal_tracker_swarm_haves_total', { outcome: 'withdrawn' });
    const withdrawnBefore = new Map<TrackerApp, number>();
    for (const app of running) {
      withdrawnBefore.set(app, await withdrawn(app));
    }
    await announce(js, have(cold, 'empty', { pieces: [] }));
    // Applied by the blob's owner only.
    await waitFor(
      'the empty have applied',
      async () => {
        let grew = 0;
        for (const app of running) {
          grew += (await withdrawn(app)) - (withdrawnBefore.get(app) ?? 0);
        }
        return grew === 1;
      },
      { timeoutMs: WAIT_MS, intervalMs: 10 },
    );
    for (const app of running) {
      assert.equal(app.view.swarm(cold).length, 0);
    }
    // The seed's first pieces: the asker hears of them at once, from the replica it asked.
    await announce(js, have(cold, 'seed', { pieces: [[0, 1]], seed: true }));
    const second = await inbox.nth('waiter', 2);
    assert.deepEqual(
      second.peers.map((p) => [p.peer.id, p.pieces]),
      [['seed', [[0, 1]]]],
    );
    assert.ok(second.token !== undefined, 'the pushed hand-out carries a token');
    assert.equal((await pushed()) - before, 1);
    // Told once: more pieces later come with the answers to its wants, not pushed.
    await announce(js, have(cold, 'seed', { pieces: [[0, 4]], seed: true }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(inbox.received.get('waiter')?.length, 2);
    assert.equal((await pushed()) - before, 1);
  });

  it("answers a followed asker's own haves with fresh peers until its download completes", async () => {
    const pushed = async (): Promise<number> => {
      let total = 0;
      for (const app of running) {
        total += await metric(app, 'shoal_tracker_handouts_pushed_total', { reason: 'progress' });
      }
      return total;
    };
    const before = await pushed();
    const grow = blob('grow');
    await announce(js, have(grow, 'first', { pieces: [[0, 4]] }));
    await waitForOwnerMembers(grow, 1);
    await want(js, grow, 'grower');
    assert.deepEqual(
      (await inbox.nth('grower')).peers.map((p) => p.peer.id),
      ['first'],
    );
    // Another holder comes: the grower hears of it with the answer to its own next have,
    // not to a want, from the replica that answered it (one push, not one per replica).
    await announce(js, have(grow, 'second', { pieces: [[4, 8]] }));
    await waitForOwnerMembers(grow, 2);
    await announce(js, have(grow, 'grower', { pieces: [[0, 4]] }));
    const pushedOut = await inbox.nth('grower', 2);
    assert.deepEqual(
      pushedOut.peers.map((p) => p.peer.id),
      ['second'],
      'only the holder of pieces it lacks',
    );
    assert.ok(pushedOut.token !== undefined, 'the pushed hand-out carries a token');
    assert.equal((await pushed()) - before, 1);
    // A have that shows no progress since that hand-out gets none.
    await announce(js, have(grow, 'grower', { pieces: [[0, 4]] }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(inbox.received.get('grower')?.length, 2);
    // Complete: no longer followed, so no hand-out answers its last have.
    await announce(js, have(grow, 'grower', { pieces: [[0, 8]], complete: true }));
    await announce(js, have(grow, 'grower', { pieces: [[0, 8]], complete: true }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(inbox.received.get('grower')?.length, 2);
    assert.equal((await pushed()) - before, 1);
  });

  it('answers or coalesces every want of a backlog, none twice', async () => {
    for (const app of [...running]) {
      await stopTracker(app);
    }
    // A backlog from one download that kept asking while no tracker ran: each want holds a
    // piece more than the one before.
    const wants = 30;
    for (let i = 0; i < wants; i += 1) {
      await want(js, a, 'repeater', { have: [[0, i + 1]] });
    }
    const app = await tracker();
    await waitFor(
      'the backlog to be answered or coalesced',
      async () =>
        (await jsm.streams.info(STREAMS.wants.name)).state.messages === 0 &&
        (await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER)).num_ack_pending === 0,
      { timeoutMs: WAIT_MS },
    );
    // Time for a late hand-out to show up, if there were one.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const answered = inbox.received.get('repeater')?.length ?? 0;
    const coalesced = await metric(app, 'shoal_tracker_wants_coalesced_total');
    assert.ok(answered >= 1, 'the latest want is answered');
    assert.ok(coalesced > 0, 'wants received together coalesce');
    assert.equal(answered + coalesced, wants, `${answered} answered, ${coalesced} coalesced`);
    assert.equal(await metric(app, 'shoal_tracker_handouts_total'), answered);
    assert.equal(await metric(app, 'shoal_tracker_want_queue_wants'), 0);
  });

  it('answers wants while a burst of haves is being applied, not after the burst', async () => {
    const [app] = running;
    assert.ok(app !== undefined);
    const burst = blob('burst');
    const haves = 8_000;
    const askers = 200;
    const answered = new Set<string>();
    let appliedWhenAllAnswered: number | undefined;
    // Read as the hand-outs arrive: this process runs the tracker too, so the callback runs
    // only between the tracker's own turns of the event loop.
    const sub = nc.subscribe(handoutSubject('*'), {
      callback: (_error, msg) => {
        const asker = msg.subject.split('.').at(-1) ?? '';
        if (!asker.startsWith('quick-')) {
          return;
        }
        answered.add(asker);
        if (answered.size === askers) {
          appliedWhenAllAnswered ??= app.view.swarm(burst).length;
        }
      },
    });
    try {
      // Published without waiting for each acknowledgement, so that they reach the tracker
      // as backlogs: the haves first, then the wants.
      for (let i = 0; i < haves; i += 1) {
        nc.publish(
          pieceHaveSubject(burst, `p${i}`),
          encodeMessage(pieceHave, have(burst, `p${i}`)),
        );
      }
      for (let i = 0; i < askers; i += 1) {
        nc.publish(
          pieceWantSubject(a, `quick-${i}`),
          encodeMessage(pieceWant, wantOf(a, `quick-${i}`)),
        );
      }
      await nc.flush();
      await waitFor('every want answered', () => Promise.resolve(answered.size === askers), {
        timeoutMs: WAIT_MS,
        intervalMs: 10,
      });
      await waitForMembers(app, burst, haves);
    } finally {
      sub.unsubscribe();
    }
    assert.ok(appliedWhenAllAnswered !== undefined);
    // One want per turn of the event loop answered the last of them after the whole burst;
    // slices answer them all within the first part of it (about a fifth here). The margin is
    // for a slow nats-server, which lets the tracker apply more haves before the wants come.
    assert.ok(
      appliedWhenAllAnswered < (3 * haves) / 4,
      `the last of ${askers} wants was answered after ${appliedWhenAllAnswered} of the ${haves} haves`,
    );
  });

  it('reports not ready once closing', async () => {
    const [app] = running;
    assert.ok(app !== undefined);
    const closing = stopTracker(app);
    assert.equal(app.notReadyReason(), 'shutting down');
    await closing;
  });
});

describe('tracker seed claims', () => {
  it('hands out only the configured seed peers as seeds', async () => {
    const nats = await startNats();
    const nc = await connect({ servers: nats.url, timeout: 5_000 });
    const inbox = new HandoutInbox(nc);
    const app = await startTracker(nats.url, { SHOAL_TRACKER_SEED_PEERS: 'seed-*, other' });
    try {
      const js = jetstream(nc, { timeout: 5_000 });
      const c = blob('c');
      // A node that claims, under its own id, to be a seed holding nothing: were it believed,
      // it would be handed out to everyone and no seed request would be made for the blob.
      await announce(js, have(c, 'forger', { pieces: [], seed: true }));
      await announce(js, have(c, 'seed-1', { pieces: [[0, 8]], complete: true, seed: true }));
      await announce(js, have(c, 'node', { pieces: [[0, 4]] }));
      await waitForMembers(app, c, 2);
      await want(js, c, 'asker');
      const answer = await inbox.nth('asker');
      assert.deepEqual(
        answer.peers.map((p) => [p.peer.id, p.seed]),
        [
          ['node', false],
          ['seed-1', true],
        ],
      );
      assert.equal(
        await metric(app, 'shoal_tracker_events_rejected_total', { reason: 'not-a-seed' }),
        1,
      );
    } finally {
      await app.close();
      inbox.stop();
      await nc.drain();
      await nats.stop();
    }
  });
});

describe('tracker readiness', () => {
  it('is not ready while NATS is unreachable, and still closes', async () => {
    const nats = await startNats();
    try {
      const app = await startTracker(nats.url);
      try {
        const readyz = async (): Promise<number> =>
          (await fetch(`${app.url()}/readyz`, { signal: AbortSignal.timeout(5_000) })).status;
        assert.equal(await readyz(), 200);
        await nats.process.stop();
        await waitFor('readiness to fail', async () => (await readyz()) === 503, {
          timeoutMs: WAIT_MS,
        });
        assert.equal(app.notReadyReason(), 'NATS disconnected');
        assert.equal((await fetch(`${app.url()}/healthz`)).status, 200);
      } finally {
        await app.close();
      }
    } finally {
      await nats.stop();
    }
  });
});
