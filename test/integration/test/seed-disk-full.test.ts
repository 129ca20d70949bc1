/**
 * A full disk on the seed server (issue 11, item 4): with its cache on a small tmpfs (a real
 * filesystem that really fills), the seed server first makes room by evicting an idle blob
 * the object gateway keeps, and when a blob cannot fit at all it fails at once and tells the
 * agents (a `seed-failed` notice on the blob's hash subject), which read it from the origin
 * straight away instead of waiting out their 10 s stall timeout.
 */
import assert from 'node:assert/strict';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  Teardown,
  waitFor,
  type AgentProcess,
  type Descriptor,
} from '@shoal/testkit';

import { MiB, smallDisk } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { bytesBySource, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'shoal/seeddisk';
const DISK_BYTES = 10 * MiB;
/** The agents' stall timeout: the default, which a fallback on a seed's notice must beat. */
const STALL_TIMEOUT_MS = 10_000;

/** Blob files (not piece manifests) in the seed's cache. */
async function seedBlobs(cacheDir: string): Promise<string[]> {
  const names = await readdir(join(cacheDir, 'blobs'));
  return names.filter((n) => !n.endsWith('.pieces.json'));
}

describe('a seed server whose cache disk is full', () => {
  const teardown = new Teardown();
  let cluster: Cluster;
  let cacheDir: string;
  /** Two layers that each fit the disk, not both at once; one larger than the disk. */
  let first: Descriptor;
  let second: Descriptor;
  let big: Descriptor;

  before(async () => {
    cacheDir = await smallDisk(teardown, DISK_BYTES);
    const agentEnv = { SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: String(STALL_TIMEOUT_MS) };
    cluster = await startCluster({
      layerSizes: [6 * MiB, 6 * MiB, 24 * MiB],
      seed: 'seed-disk-full',
      repository,
      trackers: 1,
      agents: [
        { peerId: 'node-a', env: agentEnv },
        { peerId: 'node-b', env: agentEnv },
        { peerId: 'node-c', env: agentEnv },
      ],
      // The gateway (SHOAL_STORE_DIR) stays on the ordinary disk: it keeps what is evicted.
      seedEnv: { SHOAL_SEED_CACHE_DIR: cacheDir, SHOAL_SEED_CACHE_MIN_FREE_BYTES: '0' },
    });
    // Unmounted after the seed server has stopped.
    teardown.add('cluster', () => cluster.stop());
    const layers = [...cluster.image.layers].sort((a, b) => a.size - b.size);
    [first, second, big] = layers as [Descriptor, Descriptor, Descriptor];
    assert.ok(first.size + second.size > DISK_BYTES && big.size > DISK_BYTES);
  });

  after(async () => {
    await teardown.run();
  });

  const blobUrl = (agent: AgentProcess, blob: Descriptor): string =>
    `${agent.url}/v2/${repository}/blobs/${blob.digest}?ns=${cluster.registry.host}`;

  const agent = (i: number): AgentProcess => {
    const found = cluster.agents[i];
    assert.ok(found !== undefined);
    return found;
  };

  const seedMetric = (name: string, labels?: Record<string, string>): Promise<number> =>
    cluster.seed.metric(name, labels);

  /** Pulls `blob` through `via`, checks its bytes, and waits until the seed has stored it. */
  async function pullSeeded(via: AgentProcess, blob: Descriptor): Promise<void> {
    const stored = await seedMetric('shoal_seedserver_stored_bytes_total');
    const outcome = await streamDigest(blobUrl(via, blob));
    assert.equal(outcome.error, undefined);
    assert.equal(outcome.digest, blob.digest);
    // Idle only once its run is over (stored in the gateway): then it may be evicted.
    await waitFor(
      'the blob in the gateway',
      async () =>
        (await seedMetric('shoal_seedserver_stored_bytes_total')) >= stored + blob.size &&
        (await seedMetric('shoal_seedserver_seeds_in_flight')) === 0,
      { timeoutMs: 30_000 },
    );
  }

  it('evicts an idle blob the gateway keeps to make room, and seeds the next one', async () => {
    const via = agent(0);
    await pullSeeded(via, first);
    assert.deepEqual(await seedBlobs(cacheDir), [first.digest.replace(':', '-')]);

    await pullSeeded(via, second);
    assert.ok(
      (await seedMetric('shoal_seedserver_cache_evicted_bytes_total')) >= first.size,
      'the first blob was evicted',
    );
    assert.deepEqual(await seedBlobs(cacheDir), [second.digest.replace(':', '-')]);
    // Both came from the seed server, none from the origin, and nothing failed.
    const received = await bytesBySource(via);
    assert.equal(received.seed, first.size + second.size);
    assert.equal(received.origin, 0);
    assert.equal(await seedMetric('shoal_seedserver_seeds_total', { outcome: 'failed' }), 0);
    assert.equal(await seedMetric('shoal_seedserver_cache_no_room_total'), 0);
  });

  it('fails a blob larger than the disk at once, and the agents read it from the origin without stalling', async () => {
    const evicted = await seedMetric('shoal_seedserver_cache_evicted_bytes_total');
    const pullers = [agent(1), agent(2)];
    const started = Date.now();
    const outcomes = await Promise.all(pullers.map((a) => streamDigest(blobUrl(a, big))));
    const elapsedMs = Date.now() - started;
    for (const outcome of outcomes) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.status, 200);
      assert.equal(outcome.bytes, big.size);
      assert.equal(outcome.digest, big.digest, 'not a corrupt byte');
    }
    // The seed server refused the blob for want of room, without evicting what cannot help.
    assert.ok((await seedMetric('shoal_seedserver_cache_no_room_total')) >= 1);
    assert.ok(
      (await seedMetric('shoal_seedserver_seeds_total', {
        outcome: 'failed',
        reason: 'disk-full',
      })) >= 1,
    );
    assert.equal(await seedMetric('shoal_seedserver_cache_evicted_bytes_total'), evicted);
    assert.deepEqual(await seedBlobs(cacheDir), [second.digest.replace(':', '-')]);
    for (const puller of pullers) {
      // Each agent heard the seed give up and fell back for that reason, not a stall.
      assert.equal(
        await puller.metric('shoal_agent_swarm_fallbacks_total', { reason: 'stall' }),
        0,
      );
      assert.equal(
        await puller.metric('shoal_agent_swarm_fallbacks_total', { reason: 'seed-failed' }),
        1,
      );
      assert.ok(
        (await puller.metric('shoal_agent_events_received_total', { type: 'seed-failed' })) >= 1,
      );
      const received = await bytesBySource(puller);
      assert.equal(received.origin + received.peer + received.seed, big.size);
      assert.equal(received.seed, 0);
    }
    assert.ok(
      elapsedMs < STALL_TIMEOUT_MS,
      `the pull took ${elapsedMs} ms, less than the stall timeout`,
    );
  });
});

/** Writes `path` until its disk is full (ENOSPC), as another process on the node might. */
async function fillDisk(path: string): Promise<void> {
  const file = await open(path, 'w');
  const block = Buffer.alloc(64 * 1024);
  try {
    for (;;) {
      await file.write(block);
    }
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    await file.close();
  }
}

describe('a seed server whose cache disk fills while it seeds', () => {
  const teardown = new Teardown();
  let cluster: Cluster;
  let cacheDir: string;
  let slowOrigin: Awaited<ReturnType<typeof startFaultProxy>>;
  let idle: Descriptor;
  let next: Descriptor;

  before(async () => {
    cacheDir = await smallDisk(teardown, DISK_BYTES);
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('image');
    teardown.add('image', () => layout.remove());
    const image = await generateImage(layout.path, {
      layerSizes: [3 * MiB, 3 * MiB],
      seed: 'seed-disk-fills',
    });
    await pushImage(image, registry.host, repository);
    // Only the seed server reads the registry through this proxy, so it can be slowed down.
    slowOrigin = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => slowOrigin.stop());
    cluster = await startCluster({
      layerSizes: [],
      seed: 'seed-disk-fills',
      repository,
      trackers: 1,
      agents: [{ peerId: 'node-a' }],
      registry: { registry, image },
      seedEnv: {
        SHOAL_SEED_CACHE_DIR: cacheDir,
        SHOAL_SEED_CACHE_MIN_FREE_BYTES: '0',
        SHOAL_SEED_REGISTRIES: `${registry.host}=${slowOrigin.url}`,
      },
    });
    teardown.add('cluster', () => cluster.stop());
    [idle, next] = image.layers as [Descriptor, Descriptor];
  });

  after(async () => {
    await teardown.run();
  });

  it('evicts an idle blob when a write fails with ENOSPC, and writes again', async () => {
    const via = cluster.agents[0];
    assert.ok(via !== undefined);
    const seedMetric = (name: string, labels?: Record<string, string>): Promise<number> =>
      cluster.seed.metric(name, labels);
    const url = (blob: Descriptor): string =>
      `${via.url}/v2/${repository}/blobs/${blob.digest}?ns=${cluster.registry.host}`;
    const first = await streamDigest(url(idle));
    assert.equal(first.digest, idle.digest);
    await waitFor(
      'the first blob stored and idle',
      async () =>
        (await seedMetric('shoal_seedserver_stored_bytes_total')) >= idle.size &&
        (await seedMetric('shoal_seedserver_seeds_in_flight')) === 0,
      { timeoutMs: 30_000 },
    );
    // The next blob comes in slowly; once it has begun, another writer takes all the room left.
    slowOrigin.set({ kind: 'slow', delayMs: 0, rateBytes: MiB });
    const pulling = streamDigest(url(next));
    await waitFor(
      'the next blob coming in',
      async () =>
        (await seedMetric('shoal_seedserver_ingested_bytes_total')) >= idle.size + MiB / 2,
      { timeoutMs: 30_000 },
    );
    await fillDisk(join(cacheDir, 'filler'));
    const outcome = await pulling;
    slowOrigin.set(undefined);
    assert.equal(outcome.error, undefined);
    assert.equal(outcome.digest, next.digest);
    // The write that failed made the seed server evict the idle blob, and it went on.
    assert.ok((await seedMetric('shoal_seedserver_cache_evicted_bytes_total')) >= idle.size);
    assert.equal(await seedMetric('shoal_seedserver_seeds_total', { outcome: 'failed' }), 0);
    assert.deepEqual(await seedBlobs(cacheDir), [next.digest.replace(':', '-')]);
    const received = await bytesBySource(via);
    assert.equal(received.seed, idle.size + next.size);
    assert.equal(received.origin, 0);
  });
});
