/**
 * `coalesceWrites`, against a real nats-server: what handlers publish one after another in a
 * turn of the event loop goes out in one write, every message arrives in order, and the
 * library's own immediate writes (its pending limit, `flush`, `drain`) still happen at once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { startNats, waitFor, type NatsServer } from '@shoal/testkit';
import { pino } from 'pino';

import { coalesceWrites, connectNats } from '../src/nats.js';

const MESSAGES = 50;

/** Counts the frames the connection hands its transport (one socket write each). */
function countWrites(nc: NatsConnection): { readonly count: number } {
  const transport = (nc as unknown as { protocol: { transport: { send(f: Uint8Array): void } } })
    .protocol.transport;
  const send = transport.send.bind(transport);
  const counter = { count: 0 };
  transport.send = (frame: Uint8Array): void => {
    counter.count += 1;
    send(frame);
  };
  return counter;
}

/**
 * What a subscription got, in order, as `subject payload` (the order of one connection's
 * messages is kept; two connections' are not ordered between them).
 */
function collect(sub: Subscription): string[] {
  const got: string[] = [];
  void (async () => {
    for await (const msg of sub) {
      got.push(`${msg.subject} ${msg.string()}`);
    }
  })();
  return got;
}

/** The payloads of `got` sent to `subject`, in order. */
function on(got: readonly string[], subject: string): string[] {
  return got.filter((m) => m.startsWith(`${subject} `)).map((m) => m.slice(subject.length + 1));
}

/**
 * Publishes `count` messages the way a consume loop handles them: each from its own
 * microtask, within one turn of the event loop (no I/O in between).
 */
async function publishOneByOne(nc: NatsConnection, subject: string, count: number): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    nc.publish(subject, String(i));
    await Promise.resolve();
  }
}

const inOrder = (count: number): string[] => Array.from({ length: count }, (_, i) => String(i));

describe('coalesceWrites', () => {
  let nats: NatsServer | undefined;
  let receiver: NatsConnection | undefined;

  before(async () => {
    nats = await startNats();
    receiver = await connect({ servers: nats.url, timeout: 5_000 });
  });

  after(async () => {
    try {
      await receiver?.drain();
    } finally {
      await nats?.stop();
    }
  });

  const open = async (): Promise<NatsConnection> =>
    connectNats(
      { SHOAL_NATS_URL: nats?.url ?? '', SHOAL_NATS_STREAM_REPLICAS: 1 },
      'coalesce-test',
      pino({ level: 'silent' }),
    );

  /** Subscribes the receiver to `subjects`; `got` fills as messages arrive (see `collect`). */
  const listen = async (subjects: string): Promise<{ sub: Subscription; got: string[] }> => {
    assert.ok(receiver !== undefined);
    const sub = receiver.subscribe(subjects);
    await receiver.flush();
    return { sub, got: collect(sub) };
  };

  it("writes a turn's messages once, where the library alone writes once per message", async () => {
    assert.ok(nats !== undefined);
    const { sub, got } = await listen('turn.>');

    // The library as it comes: a write at every microtask checkpoint.
    const plain = await connect({ servers: nats.url, timeout: 5_000 });
    const plainWrites = countWrites(plain);
    await publishOneByOne(plain, 'turn.plain', MESSAGES);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(plainWrites.count, MESSAGES);

    // As every service connects.
    const nc = await open();
    const writes = countWrites(nc);
    await publishOneByOne(nc, 'turn.coalesced', MESSAGES);
    assert.equal(writes.count, 0, 'nothing is written before the turn ends');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(writes.count, 1);

    await waitFor('every message at the receiver', () =>
      Promise.resolve(got.length === 2 * MESSAGES),
    );
    assert.deepEqual(on(got, 'turn.plain'), inOrder(MESSAGES));
    assert.deepEqual(on(got, 'turn.coalesced'), inOrder(MESSAGES));
    sub.unsubscribe();
    await plain.close();
    await nc.close();
  });

  it('writes at once past the pending limit, and flush and drain deliver what was published', async () => {
    const { sub, got } = await listen('limit.>');
    const nc = await open();
    const writes = countWrites(nc);
    const limit = (nc as unknown as { protocol: { pendingLimit: number } }).protocol.pendingLimit;
    // Each message a quarter of the limit: the buffer passes it every few messages.
    const large = 'x'.repeat(Math.ceil(limit / 4));
    const count = 20;
    for (let i = 0; i < count; i += 1) {
      nc.publish('limit.large', `${i}:${large}`);
    }
    assert.ok(writes.count >= count / 5, `${writes.count} writes within the turn`);
    nc.publish('limit.flushed', 'flushed');
    await nc.flush();
    nc.publish('limit.drained', 'drained');
    await nc.drain();

    await waitFor('every message at the receiver', () => Promise.resolve(got.length === count + 2));
    assert.deepEqual(
      on(got, 'limit.large').map((m) => m.split(':')[0]),
      inOrder(count),
    );
    assert.deepEqual(
      got.slice(count).map((m) => m.split(' ')[1]),
      ['flushed', 'drained'],
    );
    sub.unsubscribe();
  });

  it('writes what the turn published before a close without drain', async () => {
    const { sub, got } = await listen('closing.>');
    const nc = await open();
    await publishOneByOne(nc, 'closing.last', 5);
    await nc.close();
    await waitFor('the last messages at the receiver', () => Promise.resolve(got.length === 5));
    assert.deepEqual(on(got, 'closing.last'), inOrder(5));
    sub.unsubscribe();
  });

  it('leaves a connection alone whose client it does not know', () => {
    assert.equal(coalesceWrites({} as NatsConnection), false);
    const sendCommand = (): void => undefined;
    const close = (): Promise<void> => Promise.resolve();
    const halfKnown = { protocol: { sendCommand, close, flushPending: () => undefined } };
    assert.equal(coalesceWrites(halfKnown as unknown as NatsConnection), false);
    // Its own methods, untouched.
    assert.equal(halfKnown.protocol.sendCommand, sendCommand);
    assert.equal(halfKnown.protocol.close, close);
  });
});
