/**
 * Seed requests wait on a short ack wait kept alive by in-progress acknowledgements (issue 11,
 * the fault suite's kill-seed-server-early): a seed server killed before it published a piece
 * hash has its request back within seconds of its restart, not after half a minute; and a seed
 * that takes several ack waits (a slow origin) is still done once, by one replica.
 *
 * The origin is the real registry behind the test kit's fault proxy, which holds or slows the
 * seed server's fetch.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection } from '@nats-io/transport-node';
import { encodeMessage, seedRequest, seedRequestSubject } from '@shoal/proto';
import { jetStreamFor } from '@shoal/runtime/nats';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  waitFor,
  type FaultProxy,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

const repository = 'shoal/seed-redelivery';

describe('seed requests after a seed server dies, and slow seeds', () => {
  let nats: NatsServer;
  let registry: Registry;
  let proxy: FaultProxy;
  let image: GeneratedImage;
  let nc: NatsConnection;
  let tracker: ServiceProcess;
  const started: ServiceProcess[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  before(async () => {
    nats = await startNats();
    cleanups.push(() => nats.stop());
    registry = await startRegistry();
    cleanups.push(() => registry.stop());
    const layout = await makeTempDir('seed-redelivery');
    cleanups.push(() => layout.remove());
    image = await generateImage(layout.path, {
      layerSizes: [8 * MiB, 6 * MiB],
      seed: 'seed-redelivery',
    });
    await pushImage(image, registry.host, repository);
    proxy = await startFaultProxy({ upstream: registry.url });
    cleanups.push(() => proxy.stop());
    // The tracker owns the swarm stream the seed server announces on.
    tracker = await startTracker({ natsUrl: nats.url });
    cleanups.push(() => tracker.stop());
    nc = await connect({ servers: nats.url });
    cleanups.push(() => nc.close());
  });

  after(async () => {
    for (const seed of started) {
      await seed.stop().catch(() => undefined);
    }
    for (const cleanup of cleanups.reverse()) {
      await cleanup().catch(() => undefined);
    }
  });

  const startSeed = async (
    id: string,
    env: Record<string, string> = {},
    port?: number,
  ): Promise<ServiceProcess> => {
    const seed = await startSeedServer({
      natsUrl: nats.url,
      registries: `${registry.host}=${proxy.url}`,
      id,
      ...(port === undefined ? {} : { port }),
      env,
    });
    started.push(seed);
    return seed;
  };

  const askToSeed = async (blob: string): Promise<void> => {
    const { js } = await jetStreamFor(nc);
    await js.publish(
      seedRequestSubject(blob),
      encodeMessage(seedRequest, {
        type: 'seed-request',
        blob,
        registry: registry.host,
        repository,
        reason: { kind: 'want' },
      }),
      { timeout: 5_000 },
    );
  };

  const seeded = (seed: ServiceProcess): Promise<number> =>
    seed.metric('shoal_seedserver_seeds_total', { outcome: 'seeded' });

  it('hands a killed seed server its request again within seconds of its restart', async () => {
    const blob = image.layers[0];
    assert.ok(blob !== undefined);
    const first = await startSeed('seed-killed');
    // The origin holds every request: the seed server dies before it has a single piece.
    proxy.set({ kind: 'slow', delayMs: 60_000, rateBytes: 1024 * 1024 });
    const slowedBefore = proxy.counts().slowed;
    await askToSeed(blob.digest);
    await waitFor('the seed server to ask the origin', async () =>
      Promise.resolve(proxy.counts().slowed > slowedBefore),
    );
    assert.equal(await first.metric('shoal_seedserver_ingested_bytes_total'), 0);
    await first.process.kill();
    proxy.set(undefined);

    // Restarted as a supervisor would, with its id and address; its lock is its own.
    const restarted = await startSeed('seed-killed', {}, first.port);
    const back = performance.now();
    // The old ack wait (30 s) would leave the request with the dead process for half a minute.
    await waitFor(
      'the restarted seed server to seed the blob',
      async () => (await seeded(restarted)) >= 1,
      {
        timeoutMs: 15_000,
        intervalMs: 200,
      },
    );
    const seconds = (performance.now() - back) / 1000;
    assert.ok(seconds < 15, `seeded ${seconds.toFixed(1)} s after the restart`);
    assert.equal(await restarted.metric('shoal_seedserver_ingested_bytes_total'), blob.size);
    await restarted.stop();
  });

  it('keeps a seed that outlasts several ack waits with one replica, read once from the origin', async () => {
    const blob = image.layers[1];
    assert.ok(blob !== undefined);
    // A one-second ack wait, and an origin that takes about four: a replica that did not say
    // it was at work would see its request handed to the other.
    const env = { SHOAL_SEED_REQUEST_ACK_WAIT_MS: '1000' };
    const replicas = [await startSeed('seed-a', env), await startSeed('seed-b', env)];
    const consumed = async (): Promise<number> => {
      let sum = 0;
      for (const seed of replicas) {
        sum += await seed.metric('shoal_seedserver_events_consumed_total', {
          type: 'seed-request',
        });
      }
      return sum;
    };
    const before = await consumed();
    proxy.set({ kind: 'slow', delayMs: 2_000, rateBytes: 3 * 1024 * 1024 });
    try {
      await askToSeed(blob.digest);
      await waitFor(
        'a replica to seed the blob',
        async () =>
          (await seeded(replicas[0] as ServiceProcess)) +
            (await seeded(replicas[1] as ServiceProcess)) >=
          1,
        { timeoutMs: 30_000, intervalMs: 200 },
      );
    } finally {
      proxy.set(undefined);
    }
    // Let a redelivery, had there been one, arrive and be counted.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    assert.equal((await consumed()) - before, 1, 'the request was delivered once');
    for (const seed of replicas) {
      assert.equal(await seed.metric('shoal_seedserver_seeds_total', { outcome: 'busy' }), 0);
    }
    assert.equal((await registry.blobGets(blob.digest)).length, 1, 'the origin served it once');
  });
});
