/**
 * The agent's piece-hash reader against a real nats-server: stored batches by direct get,
 * new ones on the subject while the seed hashes, done once every hash is known (no consumer,
 * no subscription left behind), and a consumer of its own where the stream refuses direct gets.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  digestOf,
  encodeMessage,
  pieceHashes,
  pieceHashesSubject,
  STREAMS,
  type PieceHashes,
} from '@shoal/proto';
import { createLogger, createMetrics } from '@shoal/runtime';
import { ensureStreams } from '@shoal/runtime/nats';
import type { NatsServer } from '@shoal/testkit';

import { createAgentMetrics, type AgentMetrics } from '../src/metrics.js';
import { DirectGetCheck, readPieceHashes } from '../src/swarm/hash-reader.js';
import { startJetStream, type JetStreamFixture } from './jetstream-fixture.js';

const KiB = 1024;
/** 1 MiB: four pieces of 256 KiB. */
const SIZE = 1024 * KiB;

const blobNamed = (name: string): string => digestOf(Buffer.from(`hash reader ${name}`)).toString();
const hashOf = (i: number): string => digestOf(Buffer.from(`piece ${i}`)).hex;

function batch(blob: string, first: number, count: number): PieceHashes {
  return {
    type: 'piece-hashes',
    blob,
    size: SIZE,
    pieceSize: 256 * KiB,
    first,
    hashes: Array.from({ length: count }, (_, i) => hashOf(first + i)),
  };
}

describe('piece-hash reader', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let js: JetStreamClient;
  let jsm: JetStreamManager;

  let fixture: JetStreamFixture;

  before(async () => {
    fixture = await startJetStream([STREAMS.pieces]);
    ({ nats, nc, js, jsm } = fixture);
  });

  after(() => fixture.close());

  const publish = (b: PieceHashes): Promise<PubAck> =>
    js.publish(pieceHashesSubject(b.blob), encodeMessage(pieceHashes, b));

  /** Reads `blob`'s hashes; resolves with what was delivered and the reader's counters. */
  async function read(
    blob: string,
    whileReading: () => Promise<void> = () => Promise.resolve(),
  ): Promise<{ hashes: (string | undefined)[]; metrics: AgentMetrics }> {
    const metrics = createAgentMetrics(createMetrics('agent'));
    const hashes: (string | undefined)[] = [];
    const done = readPieceHashes(
      {
        nc,
        js,
        jsm,
        // A new check per read: the last test changes the stream's setting.
        directGets: new DirectGetCheck(jsm),
        metrics,
        logger: createLogger({ service: 'test', level: 'silent' }),
      },
      blob,
      AbortSignal.timeout(10_000),
      (b) => b.hashes.forEach((h, i) => (hashes[b.first + i] = h)),
    );
    await whileReading();
    await done;
    return { hashes, metrics };
  }

  const count = async (metrics: AgentMetrics, path: string): Promise<number> =>
    (await metrics.pieceHashReads.get()).values.find((v) => v.labels.path === path)?.value ?? 0;

  it('reads the stored batches by direct get, and stops once every hash is known', async () => {
    const blob = blobNamed('stored');
    await publish(batch(blob, 0, 1));
    await publish(batch(blob, 1, 3));
    // Another blob's batch in between is not this blob's business.
    await publish(batch(blobNamed('other'), 0, 4));
    const { hashes, metrics } = await read(blob);
    assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
    assert.equal(await count(metrics, 'stored'), 2);
    assert.equal(await count(metrics, 'consumer'), 0);
    const info = await jsm.streams.info(STREAMS.pieces.name);
    assert.equal(info.state.consumer_count, 0, 'no consumer was opened');
    // Nothing is left subscribed on the connection.
    const connz = (await (
      await fetch(`${nats.monitorUrl}/connz?subs=1`, { signal: AbortSignal.timeout(5_000) })
    ).json()) as { connections: { subscriptions_list?: string[] }[] };
    const subs = connz.connections.flatMap((c) => c.subscriptions_list ?? []);
    assert.ok(!subs.some((s) => s.startsWith('shoal.pieces.')), subs.join(', '));
  });

  it('hears batches published while it reads (cut-through), each hash once', async () => {
    const blob = blobNamed('live');
    await publish(batch(blob, 0, 1));
    const { hashes, metrics } = await read(blob, async () => {
      // The seed goes on hashing: the rest comes on the subject.
      await new Promise((resolve) => setTimeout(resolve, 50));
      await publish(batch(blob, 1, 2));
      await publish(batch(blob, 3, 1));
    });
    assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
    assert.equal((await count(metrics, 'stored')) + (await count(metrics, 'live')), 3);
    assert.ok((await count(metrics, 'live')) >= 2);
  });

  it('drops a batch that is not valid for the blob and keeps reading', async () => {
    const blob = blobNamed('invalid');
    nc.publish(pieceHashesSubject(blob), new TextEncoder().encode('{"type":"piece-hashes"}'));
    await publish(batch(blob, 0, 4));
    const { hashes, metrics } = await read(blob);
    assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
    const rejected = (await metrics.eventsRejected.get()).values.find(
      (v) => v.labels.type === 'piece-hashes',
    );
    assert.equal(rejected?.value, 1);
  });

  it('reads again what the subscription missed while the connection was down', async () => {
    const blob = blobNamed('missed');
    await publish(batch(blob, 0, 1));
    const { hashes, metrics } = await read(blob, async () => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      // The reader's connection is down for its reconnect wait (2 s): a batch the seed
      // publishes meanwhile is stored, but never reaches its subscription.
      await nats.crashAndRestart(100);
      const seed = await connect({ servers: nats.url, timeout: 5_000 });
      try {
        const seedJs = jetstream(seed, { timeout: 5_000 });
        const rest = batch(blob, 1, 3);
        await seedJs.publish(pieceHashesSubject(blob), encodeMessage(pieceHashes, rest));
      } finally {
        await seed.close();
      }
    });
    assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
    assert.equal(await count(metrics, 'stored'), 2, 'both batches read from the stream');
    assert.equal(await count(metrics, 'consumer'), 0);
  });

  it('reads a stream made anew from its first message (NATS back with its store lost)', async () => {
    const blob = blobNamed('store-lost');
    // Other blobs' batches first: this blob's first batch is read at a sequence the new
    // stream has not reached when the rest is published into it.
    for (let i = 0; i < 5; i++) {
      await publish(batch(blobNamed(`filler ${String(i)}`), 0, 4));
    }
    await publish(batch(blob, 0, 1));
    const { hashes, metrics } = await read(blob, async () => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      // The reader's connection is down for its reconnect wait (2 s): the seed declares the
      // stream again and publishes the rest into it meanwhile, at its sequence 1.
      await nats.crashAndRestart(100, { loseStore: true });
      const seed = await connect({ servers: nats.url, timeout: 5_000 });
      try {
        await ensureStreams(await jetstreamManager(seed, { timeout: 5_000 }), [STREAMS.pieces], 1);
        const seedJs = jetstream(seed, { timeout: 5_000 });
        const ack = await seedJs.publish(
          pieceHashesSubject(blob),
          encodeMessage(pieceHashes, batch(blob, 1, 3)),
        );
        assert.equal(ack.seq, 1);
      } finally {
        await seed.close();
      }
    });
    assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
    assert.equal(await count(metrics, 'stored'), 2, 'both batches read from the streams');
    const anew = (await metrics.streamsMadeAnew.get()).values.find(
      (v) => v.labels.reader === 'piece-hashes',
    );
    assert.equal(anew?.value, 1);
  });

  it('reads a stream made anew from its first message with its consumer too', async () => {
    const blob = blobNamed('recreated-consumer');
    const config = (await jsm.streams.info(STREAMS.pieces.name)).config;
    await jsm.streams.update(STREAMS.pieces.name, { allow_direct: false });
    try {
      for (let i = 0; i < 5; i++) {
        await publish(batch(blobNamed(`consumer filler ${String(i)}`), 0, 4));
      }
      await publish(batch(blob, 0, 1));
      const { hashes, metrics } = await read(blob, async () => {
        await new Promise((resolve) => setTimeout(resolve, 200));
        // Deleted and declared again while the reader's connection stays up.
        await jsm.streams.delete(STREAMS.pieces.name);
        await jsm.streams.add({ ...config, allow_direct: false });
        const ack = await publish(batch(blob, 1, 3));
        assert.equal(ack.seq, 1);
      });
      assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
      assert.equal(await count(metrics, 'consumer'), 2);
    } finally {
      await jsm.streams.update(STREAMS.pieces.name, { allow_direct: true });
    }
  });

  it('reads with a consumer of its own where the stream refuses direct gets', async () => {
    const blob = blobNamed('fallback');
    await publish(batch(blob, 0, 2));
    await publish(batch(blob, 2, 2));
    await jsm.streams.update(STREAMS.pieces.name, { allow_direct: false });
    try {
      const { hashes, metrics } = await read(blob);
      assert.deepEqual(hashes, [0, 1, 2, 3].map(hashOf));
      assert.equal(await count(metrics, 'consumer'), 2);
      assert.equal(await count(metrics, 'stored'), 0);
    } finally {
      await jsm.streams.update(STREAMS.pieces.name, { allow_direct: true });
    }
  });

  it('asks the stream whether it was made anew once per interval per agent, however many readers idle', async () => {
    // Every JetStream API request the server handles, from its audit advisories.
    const infos: number[] = [];
    const audit = nc.subscribe('$JS.EVENT.ADVISORY.API', {
      callback: (error, msg) => {
        if (error === null) {
          const advisory = msg.json<{ subject?: string }>();
          if (advisory.subject === `$JS.API.STREAM.INFO.${STREAMS.pieces.name}`) {
            infos.push(performance.now());
          }
        }
      },
    });
    const readers = 20;
    const blobs = Array.from({ length: readers }, (_, i) => blobNamed(`idle ${String(i)}`));
    for (const blob of blobs) {
      // The first of four hashes: every reader then waits for a seed that does not hash on.
      await publish(batch(blob, 0, 1));
    }
    const deps = {
      nc,
      js,
      jsm,
      // One per agent, shared by its readers, as the swarm client has it.
      directGets: new DirectGetCheck(jsm),
      metrics: createAgentMetrics(createMetrics('agent')),
      logger: createLogger({ service: 'test', level: 'silent' }),
    };
    const delivered = blobs.map(() => new Set<number>());
    const startedAt = performance.now();
    const done = blobs.map((blob, i) =>
      readPieceHashes(deps, blob, AbortSignal.timeout(30_000), (b) =>
        b.hashes.forEach((_, k) => delivered[i]?.add(b.first + k)),
      ),
    );
    try {
      // Re-reads at about 1, 3 and 7 s: each found nothing new and checked the stream.
      await new Promise((resolve) => setTimeout(resolve, 7_500));
      await nc.flush();
      const idleMs = performance.now() - startedAt;
      // Before: one STREAM.INFO per reader per empty re-read, 60 here.
      const allowed = Math.ceil(idleMs / 2_000) + 2;
      // The advisories do arrive: the first check (direct gets allowed?) and the later ones.
      assert.ok(infos.length >= 2, `${String(infos.length)} STREAM.INFO heard`);
      assert.ok(
        infos.length <= allowed,
        `${String(infos.length)} STREAM.INFO for ${String(readers)} idle readers in ${String(Math.round(idleMs))} ms (at most ${String(allowed)})`,
      );
      assert.equal(
        (await deps.metrics.streamsMadeAnew.get()).values.length,
        0,
        'no stream taken for made anew',
      );
      for (const blob of blobs) {
        await publish(batch(blob, 1, 3));
      }
      await Promise.all(done);
      assert.deepEqual(
        delivered.map((d) => d.size),
        blobs.map(() => 4),
      );
    } finally {
      audit.unsubscribe();
    }
  });
});
