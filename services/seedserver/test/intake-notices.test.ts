/**
 * The seed's intake notices, on a real nats-server: before the blob's first byte every look
 * tells how long the seed has waited on its source; after it, a notice goes out at a look only
 * when bytes came since the last one and no piece landed meanwhile (the hashes told agents
 * then), or while the seed asks again for the rest of a transfer that broke off, and none once
 * the intake ended.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  parseDigest,
  SEED_WAIT_NOTICE_MAX_MS,
  seedIntake,
  seedIntakeSubject,
  type SeedIntake,
} from '@shoal/proto';
import { createLogger } from '@shoal/runtime';
import { makeTempDir, startNats, type NatsServer } from '@shoal/testkit';
import { Counter, Registry } from 'prom-client';

import { IntakeNotices } from '../src/seeding/intake-notices.js';
import { SeedBlob } from '../src/seeding/seed-blob.js';

const MiB = 1024 * 1024;
const LOOK_MS = 40;
/** Long enough for several looks. */
const LOOKS_MS = 6 * LOOK_MS;

/** Waits (up to 5 s) until `done()` holds of the notices `heard` so far. */
async function heardUntil(heard: readonly SeedIntake[], done: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!done() && Date.now() < deadline) {
    await sleep(5);
  }
  assert.ok(done(), JSON.stringify(heard));
}

describe('IntakeNotices', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let dir: { path: string; remove(): Promise<void> };

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
    dir = await makeTempDir('intake-notices');
  });

  after(async () => {
    await nc.close();
    await nats.stop();
    await dir.remove();
  });

  /**
   * Notices for `digest`, looked at every `LOOK_MS` on the clock `now`, and what a subscriber
   * to the blob's intake subject heard of them. `stop` ends both.
   */
  function follow(
    digest: string,
    now: () => number,
  ): {
    heard: SeedIntake[];
    counter: Counter<'while'>;
    notices: IntakeNotices;
    stop: () => void;
  } {
    const heard: SeedIntake[] = [];
    const subscription = nc.subscribe(seedIntakeSubject(digest), {
      callback: (error, message) => {
        assert.equal(error, null);
        const decoded = decodeMessage(seedIntake, message.data);
        assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
        heard.push(decoded.value);
      },
    });
    const counter = new Counter({
      name: 'notices',
      help: 'notices',
      labelNames: ['while'] as const,
      registers: [new Registry()],
    });
    const notices = new IntakeNotices(
      {
        nc,
        seed: 'seed-a',
        notices: counter,
        logger: createLogger({ service: 'test', level: 'silent' }),
        intervalMs: LOOK_MS,
        now,
      },
      digest,
    );
    return {
      heard,
      counter,
      notices,
      stop: () => {
        notices.stop();
        subscription.unsubscribe();
      },
    };
  }

  it('tells of the wait for the first byte, then of bytes that came while no piece landed, and of nothing else', async () => {
    const digest = parseDigest(`sha256:${createHash('sha256').update('intake').digest('hex')}`);
    const blob = await SeedBlob.create(digest, 10 * MiB, join(dir.path, 'intake'));
    let received = 0;
    let now = 1_000_000;
    const { heard, counter, notices, stop } = follow(digest.toString(), () => now);
    const sent = async (doing: string): Promise<number | undefined> =>
      (await counter.get()).values.find((v) => v.labels.while === doing)?.value;
    /** The notices of bytes received, and of the wait before them. */
    const ofBytes = (): SeedIntake[] => heard.filter((n) => n.waitingMs === undefined);
    const ofWait = (): SeedIntake[] => heard.filter((n) => n.waitingMs !== undefined);
    const until = (done: () => boolean): Promise<void> => heardUntil(heard, done);
    try {
      // The source has not answered: each look tells how long the seed has waited, no size.
      now += 3_000;
      await until(() => heard.length >= 2);
      assert.deepEqual(heard[0], {
        type: 'seed-intake',
        blob: digest.toString(),
        seed: 'seed-a',
        received: 0,
        waitingMs: 3_000,
      });
      // It answered (headers, no body yet): the size comes with the wait.
      now += 1_000;
      notices.follow(blob, () => received);
      await until(() => heard.at(-1)?.size !== undefined);
      assert.deepEqual(heard.at(-1), {
        type: 'seed-intake',
        blob: digest.toString(),
        seed: 'seed-a',
        size: 10 * MiB,
        received: 0,
        waitingMs: 4_000,
      });
      assert.equal(ofBytes().length, 0);

      // The first bytes: no more waits, one notice of them.
      received = 100_000;
      await until(() => ofBytes().length >= 1);
      const waits = ofWait().length;
      assert.deepEqual(ofBytes()[0], {
        type: 'seed-intake',
        blob: digest.toString(),
        seed: 'seed-a',
        size: 10 * MiB,
        received: 100_000,
      });
      // No more bytes: no more notices.
      await sleep(LOOKS_MS);
      assert.equal(ofBytes().length, 1);
      assert.equal(ofWait().length, waits, 'no wait told of after the first byte');

      // Bytes, and a piece landed with them: its hash is the news.
      received = 300_000;
      blob.piecesDone([createHash('sha256').update('piece 0').digest('hex')]);
      await sleep(LOOKS_MS);
      assert.equal(ofBytes().length, 1);

      received = 400_000;
      await until(() => ofBytes().length >= 2);
      assert.equal(ofBytes()[1]?.received, 400_000);
      assert.equal(await sent('receiving'), 2);
      assert.equal(await sent('waiting'), waits);

      notices.stop();
      received = 500_000;
      await sleep(LOOKS_MS);
      assert.equal(ofBytes().length, 2, 'the intake ended: no notice');
    } finally {
      stop();
      await blob.discard();
    }
  });

  it('tells of the wait for the rest of a transfer that broke off, until a byte past the break comes', async () => {
    const digest = parseDigest(`sha256:${createHash('sha256').update('resume').digest('hex')}`);
    const blob = await SeedBlob.create(digest, 10 * MiB, join(dir.path, 'resume'));
    let received = 0;
    let now = 0;
    const { heard, counter, notices, stop } = follow(digest.toString(), () => now);
    const ofBytes = (): SeedIntake[] => heard.filter((n) => n.waitingMs === undefined);
    const ofResume = (): SeedIntake[] =>
      heard.filter((n) => n.waitingMs !== undefined && n.received > 0);
    const until = (done: () => boolean): Promise<void> => heardUntil(heard, done);
    try {
      notices.follow(blob, () => received);
      received = 300_000;
      await until(() => ofBytes().length >= 1);
      // The transfer breaks off there and the seed asks its source again: no byte comes.
      notices.resuming(300_000);
      // The agents hear of it at once, not at the next look: the seed may have been silent
      // for its source's idle timeout already.
      await until(() => ofResume().length >= 1);
      assert.deepEqual(ofResume()[0], {
        type: 'seed-intake',
        blob: digest.toString(),
        seed: 'seed-a',
        size: 10 * MiB,
        received: 300_000,
        waitingMs: 0,
      });
      now += 2_000;
      await until(() => ofResume().at(-1)?.waitingMs === 2_000);
      // A resume request failed and the seed asks again, from the same byte: one wait.
      now += 3_000;
      notices.resuming(300_000);
      await until(() => ofResume().at(-1)?.waitingMs === 5_000);
      // Past the longest wait agents count: no notice of it.
      now += SEED_WAIT_NOTICE_MAX_MS;
      await sleep(LOOKS_MS);
      const told = ofResume().length;
      await sleep(LOOKS_MS);
      assert.equal(ofResume().length, told, 'no notice of a longer wait');
      // Bytes past the break: the transfer goes on, and so do the notices of bytes.
      received = 400_000;
      await until(() => ofBytes().at(-1)?.received === 400_000);
      await sleep(LOOKS_MS);
      assert.equal(ofResume().length, told, 'no wait told of once bytes came again');
      assert.ok(heard.every((n) => (n.waitingMs ?? 0) <= SEED_WAIT_NOTICE_MAX_MS));
      const waited = (await counter.get()).values.find((v) => v.labels.while === 'waiting');
      assert.equal(waited?.value, told);
    } finally {
      stop();
      await blob.discard();
    }
  });

  it('tells no more of a resume wait while a request for the rest cannot reach the source', async () => {
    const digest = parseDigest(`sha256:${createHash('sha256').update('gone').digest('hex')}`);
    const blob = await SeedBlob.create(digest, 10 * MiB, join(dir.path, 'gone'));
    let received = 0;
    let now = 0;
    const { heard, counter, notices, stop } = follow(digest.toString(), () => now);
    const ofResume = (): SeedIntake[] =>
      heard.filter((n) => n.waitingMs !== undefined && n.received > 0);
    const until = (done: () => boolean): Promise<void> => heardUntil(heard, done);
    /** Wait notices published so far (counted as they are sent, not as they arrive). */
    const waits = async (): Promise<number> =>
      (await counter.get()).values.find((v) => v.labels.while === 'waiting')?.value ?? 0;
    try {
      notices.follow(blob, () => received);
      received = 500_000;
      // The transfer went quiet and is asked for again: told at once, and at the looks.
      notices.resuming(500_000);
      now += 1_000;
      await until(() => ofResume().at(-1)?.waitingMs === 1_000);
      // That request could not connect (the registry vanished): no more notices of the wait,
      // the agents find the registry gone at their stall timeout.
      notices.resuming(500_000, true);
      const told = await waits();
      now += 1_000;
      await sleep(LOOKS_MS);
      assert.equal(await waits(), told, 'no notice of the wait after an unreachable source');
      // The next request reaches it (and waits on its answer): told of again.
      notices.resuming(500_000);
      await until(() => ofResume().at(-1)?.waitingMs === 2_000);
      // A later break is told of at once.
      received = 700_000;
      notices.resuming(700_000);
      await until(() => ofResume().some((n) => n.received === 700_000));
    } finally {
      stop();
      await blob.discard();
    }
  });

  it('tells of a wait up to the longest one agents count, and no longer', async () => {
    const digest = parseDigest(`sha256:${createHash('sha256').update('long wait').digest('hex')}`);
    let now = 0;
    const { heard, stop } = follow(digest.toString(), () => now);
    try {
      now = SEED_WAIT_NOTICE_MAX_MS;
      const deadline = Date.now() + 5_000;
      while (heard.length === 0 && Date.now() < deadline) {
        await sleep(5);
      }
      assert.equal(heard[0]?.waitingMs, SEED_WAIT_NOTICE_MAX_MS);
      now = SEED_WAIT_NOTICE_MAX_MS + 1;
      await sleep(LOOKS_MS);
      const told = heard.length;
      await sleep(LOOKS_MS);
      assert.equal(heard.length, told, 'no notice of a longer wait');
      assert.ok(heard.every((n) => (n.waitingMs ?? 0) <= SEED_WAIT_NOTICE_MAX_MS));
    } finally {
      stop();
    }
  });
});
