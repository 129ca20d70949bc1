/**
 * The agent's haves against a real nats-server: batched per blob (the last piece set queued
 * goes, once), sent within the have interval of the first one queued, and no timer running
 * while nothing is queued (an idle agent costs nothing per unit of time).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { decodeMessage, digestOf, pieceHave, pieceHaveSubject, STREAMS } from '@shoal/proto';
import { createLogger, createMetrics } from '@shoal/runtime';

import { createAgentMetrics } from '../src/metrics.js';
import { SwarmClient } from '../src/swarm/client.js';
import { startJetStream, type JetStreamFixture } from './jetstream-fixture.js';
import { timerCallbacks } from './timer-callbacks.js';

const HAVE_INTERVAL_MS = 150;
const SELF = { id: 'agent-haves', url: 'http://127.0.0.1:65002' };

describe('SwarmClient haves', () => {
  let fixture: JetStreamFixture;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm]);
  });

  after(() => fixture.close());

  function newClient(): SwarmClient {
    const { nc, js, jsm } = fixture;
    return new SwarmClient({
      nc,
      js,
      jsm,
      self: SELF,
      uploads: true,
      haveIntervalMs: HAVE_INTERVAL_MS,
      logger: createLogger({ service: 'test', level: 'silent' }),
      metrics: createAgentMetrics(createMetrics('agent')),
    });
  }

  it('sends the last piece set queued for a blob once, within the have interval', async () => {
    const blob = digestOf(Buffer.from('haves batched')).toString();
    const heard: { pieces: unknown; at: number }[] = [];
    const subscription = fixture.nc.subscribe(pieceHaveSubject(blob, SELF.id), {
      callback: (_error, msg) => {
        const decoded = decodeMessage(pieceHave, msg.data);
        assert.ok(decoded.ok);
        heard.push({ pieces: decoded.value.pieces, at: performance.now() });
      },
    });
    const client = newClient();
    try {
      const queued = performance.now();
      client.announce(blob, [[0, 1]], false);
      client.announce(blob, [[0, 3]], false);
      await sleep(HAVE_INTERVAL_MS * 4);
      assert.equal(heard.length, 1, 'one have for two announcements');
      const [first] = heard;
      assert.ok(first !== undefined);
      assert.deepEqual(first.pieces, [[0, 3]]);
      // Sent once the interval is over (a busy machine runs timers late, never early).
      assert.ok(first.at - queued >= HAVE_INTERVAL_MS - 5);
      // A later announcement starts a new batch.
      client.announce(blob, [[0, 4]], true);
      await sleep(HAVE_INTERVAL_MS * 4);
      assert.equal(heard.length, 2);
      assert.deepEqual(heard[1]?.pieces, [[0, 4]]);
    } finally {
      await client.close();
      subscription.unsubscribe();
    }
  });

  it('runs no timer while no have is queued', async () => {
    let client: SwarmClient | undefined;
    try {
      // Six have intervals with nothing to announce: no timer of the client's fires (one that
      // ran on an interval would have fired six times).
      const fired = await timerCallbacks(async () => {
        client = newClient();
        await sleep(HAVE_INTERVAL_MS * 6);
      });
      // The sleep itself is the one timer callback.
      assert.equal(fired, 1);
    } finally {
      await client?.close();
    }
  });
});
