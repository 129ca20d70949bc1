/**
 * ensureStreams and ensureConsumer against a real nats-server: a declaration that matches
 * what the server holds writes nothing (after every reconnect the services only read), and
 * one that differs (a setting changed by an upgrade) is still applied.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { ensureConsumer, ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import { startNats, type NatsServer } from '@shoal/testkit';

describe('declaring streams and consumers again', () => {
  let nats: NatsServer;
  let nc: NatsConnection;

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
  });

  after(async () => {
    await nc.close();
    await nats.stop();
  });

  it('updates only what differs', async () => {
    const { jsm } = await jetStreamFor(nc);
    const spec = STREAMS.seed;
    assert.deepEqual(await ensureStreams(jsm, [spec], 1), [spec.name]);
    const settings = { ackWaitMs: 30_000, maxDeliver: 5, maxAckPending: 10 };
    assert.equal(await ensureConsumer(jsm, spec.name, 'test-declare', settings), true);
    const before = {
      stream: (await jsm.streams.info(spec.name)).config,
      consumer: (await jsm.consumers.info(spec.name, 'test-declare')).config,
    };

    // The same declarations again: nothing created.
    assert.deepEqual(await ensureStreams(jsm, [spec], 1), []);
    assert.equal(await ensureConsumer(jsm, spec.name, 'test-declare', settings), false);
    assert.deepEqual((await jsm.streams.info(spec.name)).config, before.stream);
    assert.deepEqual((await jsm.consumers.info(spec.name, 'test-declare')).config, before.consumer);

    // Changed settings are applied.
    const longer = { ...spec, maxAgeMs: spec.maxAgeMs + 60_000 };
    assert.deepEqual(await ensureStreams(jsm, [longer], 1), []);
    assert.equal(
      (await jsm.streams.info(spec.name)).config.max_age,
      (spec.maxAgeMs + 60_000) * 1_000_000,
    );
    assert.equal(
      await ensureConsumer(jsm, spec.name, 'test-declare', { ...settings, maxAckPending: 20 }),
      false,
    );
    assert.equal((await jsm.consumers.info(spec.name, 'test-declare')).config.max_ack_pending, 20);
  });
});
