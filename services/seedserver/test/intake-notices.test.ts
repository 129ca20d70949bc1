/**
 * The seed's intake notices, on a real nats-server: a notice goes out at a look only when
 * bytes came since the last one and no piece landed meanwhile (the hashes told agents then),
 * and none once the intake ended.
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

  it('tells of bytes that came while no piece landed, and of nothing else', async () => {
    const digest = parseDigest(`sha256:${createHash('sha256').update('intake').digest('hex')}`);
    const blob = await SeedBlob.create(digest, 10 * MiB, join(dir.path, 'intake'));
    const heard: SeedIntake[] = [];
    const subscription = nc.subscribe(seedIntakeSubject(digest.toString()), {
      callback: (error, message) => {
        assert.equal(error, null);
        const decoded = decodeMessage(seedIntake, message.data);
        assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
        heard.push(decoded.value);
      },
    });
    const counter = new Counter({ name: 'notices', help: 'notices', registers: [new Registry()] });
    let received = 0;
    const notices = new IntakeNotices(
      {
        nc,
        seed: 'seed-a',
        notices: counter,
        logger: createLogger({ service: 'test', level: 'silent' }),
        intervalMs: LOOK_MS,
      },
      blob,
      () => received,
    );
    const until = async (count: number): Promise<void> => {
      const deadline = Date.now() + 5_000;
      while (heard.length < count && Date.now() < deadline) {
        await sleep(5);
      }
      assert.equal(heard.length, count);
    };
    try {
      // Nothing came yet: nothing to tell.
      await sleep(LOOKS_MS);
      assert.equal(heard.length, 0);

      received = 100_000;
      await until(1);
      assert.deepEqual(heard[0], {
        type: 'seed-intake',
        blob: digest.toString(),
        seed: 'seed-a',
        size: 10 * MiB,
        received: 100_000,
      });
      // No more bytes: no more notices.
      await sleep(LOOKS_MS);
      assert.equal(heard.length, 1);

      // Bytes, and a piece landed with them: its hash is the news.
      received = 300_000;
      blob.piecesDone([createHash('sha256').update('piece 0').digest('hex')]);
      await sleep(LOOKS_MS);
      assert.equal(heard.length, 1);

      received = 400_000;
      await until(2);
      assert.equal(heard[1]?.received, 400_000);
      assert.equal((await counter.get()).values[0]?.value, 2);

      notices.stop();
      received = 500_000;
      await sleep(LOOKS_MS);
      assert.equal(heard.length, 2, 'the intake ended: no notice');
    } finally {
      notices.stop();
      subscription.unsubscribe();
      await blob.discard();
    }
  });
});
