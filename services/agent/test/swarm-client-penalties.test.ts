/**
 * A source that refused connections, named again by a hand-out over a real nats-server: the
 * agent asks it again after the shortest penalty, not after the doubled one (a restarted seed
 * server was left alone up to 8 s more while downloads stalled toward the origin).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { digestOf, encodeMessage, handout, handoutSubject, STREAMS } from '@shoal/proto';
import { createLogger, createMetrics } from '@shoal/runtime';

import { createAgentMetrics } from '../src/metrics.js';
import { SwarmClient } from '../src/swarm/client.js';
import { startJetStream, type JetStreamFixture } from './jetstream-fixture.js';

const SELF = { id: 'agent-penalties', url: 'http://127.0.0.1:65003' };
const SEED = { id: 'seed-restarted', url: 'http://127.0.0.1:65004' };
const BASE_MS = 2000;
const MAX_MS = 8000;

describe('SwarmClient refused sources', () => {
  let fixture: JetStreamFixture;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm]);
  });

  after(() => fixture.close());

  it('cuts a refused source’s doubled penalty back when a hand-out names it', async () => {
    const { nc, js, jsm } = fixture;
    // The penalties' clock: the seed's penalties pass without the test waiting 6 s for them.
    const clock = { ms: Date.now() };
    const client = new SwarmClient({
      nc,
      js,
      jsm,
      self: SELF,
      uploads: true,
      haveIntervalMs: 1000,
      logger: createLogger({ service: 'test', level: 'silent' }),
      metrics: createAgentMetrics(createMetrics('agent')),
      now: () => clock.ms,
    });
    client.start();
    try {
      await nc.flush();
      // Refused each time its penalty ends: 2, 4, then 8 s (at 0, 2 and 6 s).
      for (const ms of [BASE_MS, BASE_MS * 2, MAX_MS]) {
        client.refused(SEED.id, BASE_MS, MAX_MS);
        assert.equal(client.penaltyEnds(SEED.id), clock.ms + ms);
        if (ms !== MAX_MS) {
          clock.ms += ms + 1;
        }
      }
      const refusedAt = clock.ms;
      // It restarted and announced: the tracker names it at 7 s.
      clock.ms += 1000;
      const blob = digestOf(Buffer.from('penalties')).toString();
      nc.publish(
        handoutSubject(SELF.id),
        encodeMessage(handout, {
          type: 'handout',
          blob,
          peers: [{ peer: SEED, pieces: [], complete: true, seed: true }],
        }),
      );
      await nc.flush();
      // The hand-out is handled on the subscription's loop: wait for the cut, to 8 s not 14 s.
      const deadline = Date.now() + 5000;
      while (client.penaltyEnds(SEED.id) !== refusedAt + BASE_MS) {
        assert.ok(Date.now() < deadline, `penalty ends ${client.penaltyEnds(SEED.id)}`);
        await sleep(10);
      }
      clock.ms = refusedAt + BASE_MS + 1;
      assert.ok(!client.isPenalized(SEED.id), 'asked again 2 s after its last refusal');
    } finally {
      await client.close();
    }
  });
});
