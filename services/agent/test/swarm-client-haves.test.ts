/**
 * The agent's haves against a real nats-server: batched per blob (the last piece set queued
 * goes, once), sent within the have interval of the first one queued, and no timer running
 * while nothing is queued (an idle agent costs nothing per unit of time).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  decodeMessage,
  digestOf,
  pieceHave,
  pieceHaveSubject,
  pieceWant,
  pieceWantSubject,
  STREAMS,
} from '@shoal/proto';
import { createLogger, createMetrics } from '@shoal/runtime';
import { ensureStreams } from '@shoal/runtime/nats';

import type { JetStreamClient } from '@nats-io/jetstream';

import { createAgentMetrics } from '../src/metrics.js';
import { SwarmClient } from '../src/swarm/client.js';
import { startJetStream, startSwarmClient, type JetStreamFixture } from './jetstream-fixture.js';
import { timerCallbacks } from './timer-callbacks.js';

const HAVE_INTERVAL_MS = 150;
const SELF = { id: 'agent-haves', url: 'http://127.0.0.1:65002' };

describe('SwarmClient haves', () => {
  let fixture: JetStreamFixture;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.wants]);
  });

  after(() => fixture.close());

  function newClient(js: JetStreamClient = fixture.js): SwarmClient {
    const { nc, jsm } = fixture;
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

  /** The real JetStream client, but the first publish to `subject` rejects (NATS away). */
  function failingOnce(
    subject: string,
    meanwhile: () => void = () => undefined,
    error: Error = new Error('timeout'),
  ): JetStreamClient {
    const { js } = fixture;
    let failed = false;
    const stub = Object.create(js) as JetStreamClient;
    stub.publish = (subj, data, options) => {
      if (subj === subject && !failed) {
        failed = true;
        meanwhile();
        return Promise.reject(error);
      }
      return js.publish(subj, data, options);
    };
    return stub;
  }

  /** Collects the piece sets heard on `blob`'s have subject. */
  function listen(blob: string): { heard: unknown[]; stop: () => void } {
    const heard: unknown[] = [];
    const subscription = fixture.nc.subscribe(pieceHaveSubject(blob, SELF.id), {
      callback: (_error, msg) => {
        const decoded = decodeMessage(pieceHave, msg.data);
        assert.ok(decoded.ok);
        heard.push(decoded.value.pieces);
      },
    });
    return { heard, stop: () => subscription.unsubscribe() };
  }

  it('sends a have NATS did not take with the next batch, once', async () => {
    const blob = digestOf(Buffer.from('have requeued')).toString();
    const other = digestOf(Buffer.from('have in the same batch')).toString();
    const heard = listen(blob);
    const heardOther = listen(other);
    const client = newClient(failingOnce(pieceHaveSubject(blob, SELF.id)));
    let toldUnheard = 0;
    client.onUnheard(() => (toldUnheard += 1));
    try {
      client.announce(blob, [[0, 1]], false);
      client.announce(other, [[0, 2]], false);
      await sleep(HAVE_INTERVAL_MS * 6);
      assert.deepEqual(heard.heard, [[[0, 1]]]);
      assert.deepEqual(heardOther.heard, [[[0, 2]]], 'the rest of the batch went at once');
      // Unheard from the failure until the next have went through.
      assert.equal(toldUnheard, 1);
      assert.equal(client.unheard, false);
    } finally {
      await client.close();
      heard.stop();
      heardOther.stop();
    }
  });

  it('sends the newer have instead of one NATS did not take', async () => {
    const blob = digestOf(Buffer.from('have superseded')).toString();
    const heard = listen(blob);
    // A newer have of the blob is queued while the failed publish was waiting.
    const client: SwarmClient = newClient(
      failingOnce(pieceHaveSubject(blob, SELF.id), () => client.announce(blob, [[0, 3]], false)),
    );
    try {
      client.announce(blob, [[0, 1]], false);
      await sleep(HAVE_INTERVAL_MS * 6);
      assert.deepEqual(heard.heard, [[[0, 3]]]);
    } finally {
      await client.close();
      heard.stop();
    }
  });

  it('sends a have again at once when the connection is made anew, not after its timeout', async () => {
    const blob = digestOf(Buffer.from('have lost with its connection')).toString();
    const heard = listen(blob);
    const unacked = losingFirstAck(pieceHaveSubject(blob, SELF.id));
    const client = newClient(unacked.js);
    client.start();
    try {
      client.announce(blob, [[0, 1]], false);
      await waitUntil(unacked.lost);
      const reconnected = performance.now();
      await fixture.nc.reconnect();
      await waitUntil(() => heard.heard.length > 0);
      assert.deepEqual(heard.heard, [[[0, 1]]]);
      // Within a few have intervals of the new connection (the publish timeout is 5 s).
      assert.ok(performance.now() - reconnected < 2_000);
    } finally {
      await client.close();
      heard.stop();
    }
  });

  it('asks again, once NATS is back, for a blob whose want it did not take', async () => {
    // A blob read whole from the origin while NATS was away: the want asking for a seed was
    // lost, and without one nobody publishes its piece hashes.
    const blob = digestOf(Buffer.from('want lost with its connection')).toString();
    const heard: unknown[] = [];
    const subscription = fixture.nc.subscribe(pieceWantSubject(blob, SELF.id), {
      callback: (_error, msg) => {
        const decoded = decodeMessage(pieceWant, msg.data);
        assert.ok(decoded.ok);
        heard.push(decoded.value.have);
      },
    });
    const unacked = losingFirstAck(pieceWantSubject(blob, SELF.id));
    const client = newClient(unacked.js);
    client.start();
    try {
      const wanted = client.want({ blob, registry: 'r.test', repository: 'team/app', have: [] });
      await waitUntil(unacked.lost);
      await fixture.nc.reconnect();
      await wanted;
      await waitUntil(() => heard.length > 0);
      assert.deepEqual(heard, [[]], 'asked again over the new connection, once');
    } finally {
      await client.close();
      subscription.unsubscribe();
    }
  });

  /**
   * The real JetStream client, but the first publish to `subject` gets no acknowledgement, as
   * one written to a server that vanished silently (the integration suite causes that for
   * real, with iptables); `lost()` once it was made.
   */
  function losingFirstAck(subject: string): { js: JetStreamClient; lost: () => boolean } {
    const { js } = fixture;
    let lost = false;
    const stub = Object.create(js) as JetStreamClient;
    stub.publish = (subj, data, options) => {
      if (subj === subject && !lost) {
        lost = true;
        return new Promise(() => undefined);
      }
      return js.publish(subj, data, options);
    };
    return { js: stub, lost: () => lost };
  }

  /** Resolves once `done()` holds (polled), or throws after 10 s. */
  async function waitUntil(done: () => boolean): Promise<void> {
    const deadline = performance.now() + 10_000;
    while (!done()) {
      assert.ok(performance.now() < deadline, 'timed out');
      await sleep(10);
    }
  }

  it('counts as unheard while a have waits for its acknowledgement past a second and a half', async () => {
    const blob = digestOf(Buffer.from('have held unacknowledged')).toString();
    const heard = listen(blob);
    // The stream's leader went with its server: the publish is neither taken nor refused.
    let release: () => void = () => undefined;
    let sentAt = 0;
    const { js } = fixture;
    const stub = Object.create(js) as JetStreamClient;
    stub.publish = (subj, data, options) => {
      if (subj !== pieceHaveSubject(blob, SELF.id)) {
        return js.publish(subj, data, options);
      }
      sentAt = Date.now();
      return new Promise<void>((resolve) => {
        release = resolve;
      }).then(() => js.publish(subj, data, options));
    };
    const client = newClient(stub);
    let toldUnheard = 0;
    client.onUnheard(() => (toldUnheard += 1));
    try {
      client.announce(blob, [[0, 1]], false);
      await sleep(HAVE_INTERVAL_MS + 200);
      const lateAt = client.lateAckAtMs;
      assert.ok(lateAt !== undefined, 'the have is waiting');
      assert.ok(Math.abs(lateAt - sentAt - 1500) <= 20, `late ${lateAt - sentAt} ms after it went`);
      assert.equal(client.unheard, false, 'not late yet');
      assert.equal(toldUnheard, 0);
      await sleep(lateAt - Date.now() + 50);
      assert.equal(client.unheard, true, 'late');
      assert.equal(toldUnheard, 1, 'told when it became late');
      release();
      await sleep(200);
      assert.deepEqual(heard.heard, [[[0, 1]]]);
      assert.equal(client.lateAckAtMs, undefined);
      assert.equal(client.unheard, false);
    } finally {
      release();
      await client.close();
      heard.stop();
    }
  });

  it('drops a have NATS refused for good (a permissions violation)', async () => {
    const blob = digestOf(Buffer.from('have refused')).toString();
    const heard = listen(blob);
    const refused = Object.assign(new Error('permissions violation'), {
      name: 'PermissionViolationError',
    });
    const client = newClient(
      failingOnce(pieceHaveSubject(blob, SELF.id), () => undefined, refused),
    );
    let toldUnheard = 0;
    client.onUnheard(() => (toldUnheard += 1));
    try {
      client.announce(blob, [[0, 1]], false);
      await sleep(HAVE_INTERVAL_MS * 6);
      assert.deepEqual(heard.heard, []);
      // Refused for this have only: the swarm still hears the others.
      assert.equal(toldUnheard, 0);
      assert.equal(client.unheard, false);
    } finally {
      await client.close();
      heard.stop();
    }
  });

  it('runs no timer while no have is queued', async () => {
    let client: SwarmClient | undefined;
    try {
      // Six have intervals with nothing to announce: no timer of the client's fires (one that
      // ran on an interval would have fired six times).
      const { fired, sites } = await timerCallbacks(async () => {
        client = newClient();
        await sleep(HAVE_INTERVAL_MS * 6);
      });
      // The sleep itself is the one timer callback.
      assert.equal(fired, 1, `timers set at: ${sites.join('; ')}`);
    } finally {
      await client?.close();
    }
  });
});

describe('SwarmClient wants NATS refused on a connection that stays up', () => {
  let fixture: JetStreamFixture;

  before(async () => {
    // No wants stream yet: a want gets "no responders", as it does for the seconds a
    // JetStream cluster takes to elect the stream's new leader after a server went.
    fixture = await startJetStream([STREAMS.swarm]);
  });

  after(() => fixture.close());

  it('sends the want again within a second of the stream answering, with no reconnect', async () => {
    const { jsm } = fixture;
    const { client } = startSwarmClient(fixture, SELF, true);
    const blob = digestOf(Buffer.from('want refused while connected')).toString();
    const subject = pieceWantSubject(blob, SELF.id);
    /** The wants the stream holds for the blob. */
    const stored = async (): Promise<number> => {
      const info = await jsm.streams.info(STREAMS.wants.name, { subjects_filter: subject });
      return Object.values(info.state.subjects ?? {}).reduce((sum, n) => sum + n, 0);
    };
    let toldUnheard = 0;
    const off = client.onUnheard(() => (toldUnheard += 1));
    try {
      assert.equal(client.unheard, false);
      await client.want({ blob, registry: 'r.test', repository: 'team/app', have: [] });
      // Refused: the swarm does not hear this agent (the seed is told with each request).
      assert.equal(client.unheard, true);
      assert.equal(toldUnheard, 1);
      // The stream is back (its leader elected): the client was told nothing of it.
      await ensureStreams(jsm, [STREAMS.wants], 1);
      const back = performance.now();
      const deadline = back + 5_000;
      while ((await stored()) === 0) {
        assert.ok(performance.now() < deadline, 'the want never reached the stream');
        await sleep(20);
      }
      // Retried 0.5, 1.5, 3.5 s after the refusal (then every 4 s): well before the
      // download's own next want (8 s and more), whenever the stream came back.
      assert.ok(performance.now() - back < 4_500, `${performance.now() - back} ms`);
      await sleep(1_500);
      assert.equal(await stored(), 1, 'sent again once');
      assert.equal(client.unheard, false, 'heard again once the want was taken');
      assert.equal(toldUnheard, 1, 'told once, for the run of failures');
    } finally {
      off();
      await client.close();
    }
  });
});
