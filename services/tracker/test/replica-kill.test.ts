/**
 * Two tracker replicas share the wants of one work queue; a replica killed while it holds
 * wants it has pulled but not answered loses none of them: JetStream hands them to the
 * survivor once their ack wait is over. The victim runs as a real process (frozen with
 * SIGSTOP so that wants are delivered to it and sit unanswered, then SIGKILLed); the survivor
 * runs in-process.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  encodeMessage,
  handoutSubject,
  pieceHave,
  pieceHaveSubject,
  pieceWant,
  pieceWantSubject,
  STREAMS,
} from '@shoal/proto';
import {
  makeTempDir,
  startNats,
  startTracker as startTrackerProcess,
  waitFor,
  writeHandoutPrivateKey,
  type NatsServer,
  type ServiceProcess,
} from '@shoal/testkit';

import { buildApp, loadTrackerConfig, type TrackerApp } from '../src/app.js';
import { WANTS_CONSUMER } from '../src/consumers/piece-want.js';
import { blob, have, peer } from './fixtures.js';

/** Wants published while the victim is frozen. */
const WANTS = 60;
/** The want consumer's ack wait (10 s) and some margin, in ms. */
const REDELIVERY_WAIT_MS = 25_000;

describe('two tracker replicas, one killed', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let js: JetStreamClient;
  let jsm: JetStreamManager;
  let victim: ServiceProcess | undefined;
  let survivor: TrackerApp | undefined;
  let keyDir: { path: string; remove(): Promise<void> } | undefined;
  const answered = new Map<string, number>();

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url, timeout: 5_000 });
    js = jetstream(nc, { timeout: 5_000 });
    jsm = await jetstreamManager(nc, { timeout: 5_000 });
    nc.subscribe(handoutSubject('*'), {
      callback: (error, msg) => {
        if (error === null) {
          const asker = msg.subject.split('.').at(-1) ?? '';
          answered.set(asker, (answered.get(asker) ?? 0) + 1);
        }
      },
    });
  });

  after(async () => {
    await victim?.process.kill();
    await survivor?.close();
    await nc.drain();
    await nats.stop();
    await keyDir?.remove();
  });

  it('answers every want, those the killed replica held included', async () => {
    const a = blob('kill');
    // The victim first: it creates the streams and the shared consumer.
    victim = await startTrackerProcess({
      natsUrl: nats.url,
      env: { SHOAL_LOG_LEVEL: 'warn' },
    });
    await js.publish(
      pieceHaveSubject(a, 'holder'),
      encodeMessage(pieceHave, have(a, 'holder', { pieces: [[0, 8]], complete: true })),
    );
    keyDir = await makeTempDir('tracker-key');
    const config = loadTrackerConfig({
      SHOAL_TRACKER_HANDOUT_KEY_FILE: await writeHandoutPrivateKey(keyDir.path),
      SHOAL_NATS_URL: nats.url,
      SHOAL_TRACKER_LISTEN: '127.0.0.1:0',
      SHOAL_LOG_LEVEL: 'silent',
    });
    survivor = await buildApp(config);
    await survivor.start();
    // Both replicas pull: two pull requests wait on the shared consumer.
    await waitFor(
      'both replicas pulling',
      async () => (await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER)).num_waiting >= 2,
      { timeoutMs: 10_000, intervalMs: 50 },
    );

    // Frozen, the victim still has its pull request open: the server delivers wants to it
    // that it never answers.
    victim.process.child.kill('SIGSTOP');
    await Promise.all(
      Array.from({ length: WANTS }, (_, i) =>
        js.publish(
          pieceWantSubject(a, `asker-${i}`),
          encodeMessage(pieceWant, {
            type: 'piece-want',
            blob: a,
            peer: peer(`asker-${i}`),
            have: [],
            registry: 'registry.test',
            repository: 'library/app',
            limit: 4,
          }),
        ),
      ),
    );
    await waitFor(
      'wants delivered to both replicas',
      async () => {
        const info = await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER);
        return info.delivered.stream_seq >= WANTS && info.num_pending === 0;
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    const held = (await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER)).num_ack_pending;
    victim.process.child.kill('SIGKILL');
    await victim.process.kill();

    await waitFor('every want answered', () => Promise.resolve(answered.size >= WANTS), {
      timeoutMs: REDELIVERY_WAIT_MS,
      intervalMs: 100,
    });
    for (let i = 0; i < WANTS; i++) {
      assert.ok((answered.get(`asker-${i}`) ?? 0) >= 1, `asker-${i} answered`);
    }
    const info = await jsm.consumers.info(STREAMS.wants.name, WANTS_CONSUMER);
    // The victim held some when it died (the survivor answered the rest at once), and they
    // were delivered again: the survivor's answers to them are what filled `answered`.
    assert.ok(held > 0, 'the frozen replica held wants');
    assert.ok(info.num_redelivered > 0 || info.delivered.consumer_seq > WANTS, 'redelivered');
    assert.equal(info.num_ack_pending, 0);
    assert.equal((await jsm.streams.info(STREAMS.wants.name)).state.messages, 0);
  });
});
