/**
 * The watch on a read of the object gateway: a body that goes quiet part-way ends its chunks
 * with the reason, and is destroyed; a wait for the gateway's answer past the limit fires the
 * signal handed to the store; the time the reader spends on a chunk does not count.
 */
import assert from 'node:assert/strict';
import { PassThrough, Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { GatewayWatch } from '../src/seeding/gateway-watch.js';

const IDLE_MS = 300;

describe('GatewayWatch', () => {
  // The watch's timer does not keep a process up (a seed server has its servers for that).
  let keepUp: NodeJS.Timeout | undefined;
  before(() => {
    keepUp = setInterval(() => undefined, 1000);
  });
  after(() => {
    clearInterval(keepUp);
  });

  it(
    'ends the chunks of a body that goes quiet part-way, with the reason, and destroys it',
    { timeout: 10_000 },
    async () => {
      const watch = new GatewayWatch(IDLE_MS);
      const body = new PassThrough();
      body.write(Buffer.alloc(1000, 1));
      body.write(Buffer.alloc(500, 2));
      const received: number[] = [];
      const startedAt = performance.now();
      await assert.rejects(
        async () => {
          for await (const chunk of watch.read(body)) {
            received.push(chunk.length);
          }
        },
        (error: Error) => {
          assert.match(error.message, /sent nothing for \d+ ms/);
          return true;
        },
      );
      const waited = performance.now() - startedAt;
      assert.equal(
        received.reduce((a, b) => a + b, 0),
        1500,
      );
      assert.ok(waited >= IDLE_MS, `given up after ${String(waited)} ms`);
      assert.ok(body.destroyed, 'the body was destroyed');
      assert.equal(watch.quiet?.message.startsWith('the object gateway sent nothing'), true);
    },
  );

  it('does not count the time the reader spends on a chunk', { timeout: 10_000 }, async () => {
    const watch = new GatewayWatch(IDLE_MS);
    const chunks = 4;
    // Every chunk there at once, each read on its own.
    const body = Readable.from(Array.from({ length: chunks }, (_, i) => Buffer.alloc(100, i)));
    let read = 0;
    let reads = 0;
    for await (const chunk of watch.read(body)) {
      read += chunk.length;
      reads += 1;
      // The ingest slower than the limit on each chunk: the gateway had sent them all.
      await sleep(IDLE_MS * 2);
    }
    assert.equal(read, chunks * 100);
    assert.equal(reads, chunks);
    assert.equal(watch.quiet, undefined);
  });

  it(
    'lets a body whose gaps stay below the limit run for longer than it',
    { timeout: 10_000 },
    async () => {
      const watch = new GatewayWatch(IDLE_MS);
      const body = new PassThrough();
      const gaps = 6;
      const writer = (async () => {
        for (let i = 0; i < gaps; i += 1) {
          await sleep(IDLE_MS / 6);
          body.write(Buffer.alloc(10, i));
        }
        body.end();
      })();
      let read = 0;
      for await (const chunk of watch.read(body)) {
        read += chunk.length;
      }
      await writer;
      assert.equal(read, gaps * 10);
      assert.equal(watch.quiet, undefined);
    },
  );

  it(
    "fires the signal handed to the store when the gateway's answer does not come in time",
    { timeout: 10_000 },
    async () => {
      const watch = new GatewayWatch(IDLE_MS);
      const caller = new AbortController();
      const signal = watch.signal(caller.signal);
      watch.waiting();
      await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      assert.equal(caller.signal.aborted, false, "the caller's own signal is left alone");
      assert.equal(signal.reason, watch.quiet);
      assert.match(String(watch.quiet?.message), /SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS/);
    },
  );

  it(
    'leaves the signal alone once the gateway answered, and after stop',
    { timeout: 10_000 },
    async () => {
      const watch = new GatewayWatch(IDLE_MS);
      const signal = watch.signal(new AbortController().signal);
      watch.waiting();
      await sleep(IDLE_MS / 3);
      watch.answered();
      await sleep(IDLE_MS * 2);
      assert.equal(signal.aborted, false);
      watch.waiting();
      watch.stop();
      await sleep(IDLE_MS * 2);
      assert.equal(signal.aborted, false);
      assert.equal(watch.quiet, undefined);
    },
  );

  it("passes the caller's abort on until stop, and lets the caller's signal go then", () => {
    const caller = new AbortController();
    const first = new GatewayWatch(IDLE_MS);
    const signal = first.signal(caller.signal);
    const second = new GatewayWatch(IDLE_MS);
    const other = second.signal(caller.signal);
    second.stop();
    caller.abort(new Error('seeding stopped'));
    assert.equal(signal.aborted, true);
    assert.equal((signal.reason as Error).message, 'seeding stopped');
    assert.equal(first.quiet, undefined, 'not the gateway going quiet');
    assert.equal(other.aborted, false, 'a stopped watch no longer follows the caller');
  });

  it('never gives a read up without a limit (Infinity)', { timeout: 10_000 }, async () => {
    const watch = new GatewayWatch(Infinity);
    const signal = watch.signal(new AbortController().signal);
    watch.waiting();
    await sleep(IDLE_MS);
    assert.equal(signal.aborted, false);
    watch.stop();
  });
});
