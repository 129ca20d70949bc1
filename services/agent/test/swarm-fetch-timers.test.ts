/**
 * A swarm fetch waiting on the network costs nothing per unit of time: its loop sleeps until
 * its next real deadline (the next want, the stall timeout) or an event, not on a fixed tick.
 * Against a real nats-server: a blob nobody holds, no hand-out, no hash. The fetch must still
 * notice the stall on time and turn to the origin (here unreachable, so the download fails).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import { digestOf, STREAMS } from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import {
  startJetStream,
  startSwarmClient,
  swarmFetchNoOrigin,
  type JetStreamFixture,
} from './jetstream-fixture.js';
import { timerCallbacks } from './timer-callbacks.js';

const STALL_TIMEOUT_MS = 2_000;
/** Longer than the test: one want goes out, at the start. */
const WANT_INTERVAL_MS = 60_000;
const SELF = { id: 'agent-timers', url: 'http://127.0.0.1:65002' };

describe('SwarmFetch timers', () => {
  let fixture: JetStreamFixture;
  let root: string;

  before(async () => {
    // With the wants stream: a want NATS refused would be sent again on a timer of its own.
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces, STREAMS.wants]);
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-timers-'));
  });

  after(async () => {
    await fixture.close();
    await rm(root, { recursive: true, force: true });
  });

  it('sleeps until the stall timeout without a tick, then falls back on time', async () => {
    const { client, logger, metrics } = startSwarmClient(fixture, SELF, true);
    const store = new FsContentStore(join(root, 'store'), 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(1024 * 1024);
    const digest = digestOf(Buffer.from('a blob nobody holds'));
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch = swarmFetchNoOrigin(
      download,
      'library/idle',
      { client, store, pool, metrics, logger },
      {
        concurrency: 4,
        stallTimeoutMs: STALL_TIMEOUT_MS,
        wantIntervalMs: WANT_INTERVAL_MS,
      },
    );
    let tookMs = 0;
    try {
      const { fired, sites } = await timerCallbacks(async () => {
        const started = performance.now();
        await fetch.run(new AbortController().signal);
        tookMs = performance.now() - started;
      });
      // The stall is noticed when it is due, not a tick later and not early.
      assert.ok(tookMs >= STALL_TIMEOUT_MS, `fell back after ${tookMs} ms`);
      assert.ok(tookMs < STALL_TIMEOUT_MS + 500, `fell back after ${tookMs} ms`);
      assert.equal(download.state, 'failed', 'the unreachable origin fails the download');
      const fallbacks = await metrics.swarmFallbacks.get();
      assert.deepEqual(
        fallbacks.values.map((v) => [v.labels.reason, v.value]),
        [['stall', 1]],
      );
      // The loop's one wake at the stall deadline, and the hash reader's first recheck: a
      // 250 ms tick fired eight times in these two seconds.
      assert.ok(
        fired <= 3,
        `${fired} timer callbacks while waiting ${tookMs} ms, set at: ${sites.join('; ')}`,
      );
    } finally {
      await client.close();
    }
  });
});
