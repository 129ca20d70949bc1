/**
 * ensureStreams and ensureConsumer against a real nats-server: a declaration that matches
 * what the server holds writes nothing (after every reconnect the services only read), and
 * one that differs (a setting changed by an upgrade) is still applied. Writes are counted from
 * the server's own JetStream API audit advisories: the same configuration written again
 * would leave the configuration as it was, so comparing it could not tell.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { ensureConsumer, ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import { startNats, waitFor, type NatsServer } from '@shoal/testkit';

/** The server's audit advisory for every JetStream API request (its `subject` the request's). */
const AUDIT_SUBJECT = '$JS.EVENT.ADVISORY.API';

/** JetStream API requests that write: creating, updating or deleting a stream or consumer. */
const WRITES =
  /^\$JS\.API\.(STREAM\.(CREATE|UPDATE|DELETE)|CONSUMER\.(CREATE|DURABLE\.CREATE|DELETE))\./;

describe('declaring streams and consumers again', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let audit: Subscription;
  /** Subjects of the JetStream API requests the server has audited so far, in order. */
  const audited: string[] = [];

  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
    audit = nc.subscribe(AUDIT_SUBJECT, {
      callback: (error, msg) => {
        const subject = error === null ? msg.json<{ subject?: string }>().subject : undefined;
        if (subject !== undefined) {
          audited.push(subject);
        }
      },
    });
    await nc.flush();
  });

  after(async () => {
    audit.unsubscribe();
    await nc.close();
    await nats.stop();
  });

  /**
   * The JetStream API requests `run` made, as the server audited them: a stream info on a
   * stream of its own after `run` marks the end (the server audits requests in order).
   */
  async function requestsOf(run: () => Promise<void>, marker: string): Promise<string[]> {
    const { jsm } = await jetStreamFor(nc);
    const from = audited.length;
    await run();
    await jsm.streams.info(marker);
    const end = `$JS.API.STREAM.INFO.${marker}`;
    await waitFor('the marker audited', () => Promise.resolve(audited.slice(from).includes(end)));
    const requests = audited.slice(from);
    return requests.slice(0, requests.indexOf(end));
  }

  it('updates only what differs', async () => {
    const { jsm } = await jetStreamFor(nc);
    const spec = STREAMS.seed;
    const marker = STREAMS.wants;
    assert.deepEqual(await ensureStreams(jsm, [spec, marker], 1), [spec.name, marker.name]);
    const settings = { ackWaitMs: 30_000, maxDeliver: 5, maxAckPending: 10 };
    assert.equal(await ensureConsumer(jsm, spec.name, 'test-declare', settings), true);
    const before = {
      stream: (await jsm.streams.info(spec.name)).config,
      consumer: (await jsm.consumers.info(spec.name, 'test-declare')).config,
    };

    // The same declarations again: read, nothing written.
    const again = await requestsOf(async () => {
      assert.deepEqual(await ensureStreams(jsm, [spec], 1), []);
      assert.equal(await ensureConsumer(jsm, spec.name, 'test-declare', settings), false);
    }, marker.name);
    assert.ok(again.length > 0, 'the declarations were audited (read)');
    assert.deepEqual(
      again.filter((subject) => WRITES.test(subject)),
      [],
      `no write among ${again.join(', ')}`,
    );
    assert.deepEqual((await jsm.streams.info(spec.name)).config, before.stream);
    assert.deepEqual((await jsm.consumers.info(spec.name, 'test-declare')).config, before.consumer);

    // Changed settings are applied: each by one write (the audit sees writes).
    const longer = { ...spec, maxAgeMs: spec.maxAgeMs + 60_000 };
    const update = await requestsOf(async () => {
      assert.deepEqual(await ensureStreams(jsm, [longer], 1), []);
    }, marker.name);
    assert.deepEqual(
      update.filter((subject) => WRITES.test(subject)),
      [`$JS.API.STREAM.UPDATE.${spec.name}`],
    );
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
