/**
 * A consume loop working through a backlog lets the rest of the process run every few
 * milliseconds, against a real nats-server: the iterator hands over buffered messages without
 * a turn of the event loop in between, so without the slices a burst would hold the loop.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNats, waitFor, type NatsServer } from '@shoal/testkit';
import { pino } from 'pino';

import { superviseConsumption } from '../src/consume.js';

const BACKLOG = 400;
/** Work per message, in ms: the whole backlog is 100 ms of work. */
const WORK_MS = 0.25;

function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // working
  }
}

describe('superviseConsumption over a backlog', () => {
  let nats: NatsServer | undefined;
  let nc: NatsConnection | undefined;
  let js: JetStreamClient;

  before(async () => {
    nats = await startNats();
    const conn = await connect({ servers: nats.url, timeout: 5_000 });
    nc = conn;
    js = jetstream(conn, { timeout: 5_000 });
    const jsm = await jetstreamManager(conn, { timeout: 5_000 });
    for (const name of ['ONE', 'MANY']) {
      await jsm.streams.add({ name, subjects: [`${name.toLowerCase()}.>`] });
      for (let i = 0; i < BACKLOG; i += 1) {
        conn.publish(`${name.toLowerCase()}.m`, new TextEncoder().encode(String(i)));
      }
    }
    await conn.flush();
    for (const name of ['ONE', 'MANY']) {
      await waitFor(`${BACKLOG} messages in ${name}`, async () => {
        return (await jsm.streams.info(name)).state.messages === BACKLOG;
      });
    }
  });

  after(async () => {
    try {
      await nc?.drain();
    } finally {
      await nats?.stop();
    }
  });

  for (const [stream, concurrency] of [
    ['ONE', 1],
    ['MANY', 4],
  ] as const) {
    it(`yields between slices of handling (concurrency ${concurrency})`, async () => {
      const handled: number[] = [];
      let handledWhenOtherWorkRan: number | undefined;
      const loop = superviseConsumption({
        name: 'slices',
        logger: pino({ level: 'silent' }),
        retryDelayMs: 100,
        concurrency,
        open: async () => {
          const consumer = await js.consumers.get(stream);
          return consumer.consume({ max_messages: 2 * BACKLOG });
        },
        handle: (msg) => {
          if (handled.length === 0) {
            // Other work of the process, queued when the backlog starts.
            setImmediate(() => {
              handledWhenOtherWorkRan = handled.length;
            });
          }
          busy(WORK_MS);
          handled.push(Number(msg.string()));
        },
      });
      try {
        await waitFor(`${BACKLOG} messages handled`, () =>
          Promise.resolve(handled.length === BACKLOG),
        );
      } finally {
        await loop.stop();
      }
      assert.deepEqual(
        handled,
        Array.from({ length: BACKLOG }, (_, i) => i),
        'every message once, in order',
      );
      assert.ok(handledWhenOtherWorkRan !== undefined, 'the other work ran');
      // 5 ms slices of 0.25 ms messages: about 20 per slice, far from the whole backlog.
      assert.ok(
        handledWhenOtherWorkRan < BACKLOG / 4,
        `the other work waited for ${handledWhenOtherWorkRan} of ${BACKLOG} messages`,
      );
    });
  }
});
