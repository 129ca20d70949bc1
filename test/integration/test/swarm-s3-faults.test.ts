/**
 * The object gateway (a real S3 endpoint behind the test kit's fault proxy) answering 503
 * while the seed server seeds: the seed server reads the origin instead (once per blob) and
 * serves the swarm, and the failure is counted; a gateway copy that fails after the blob
 * verified leaves it seeded, not failed. Before,
 * every seed failed at the gateway and every agent read every blob from the registry.
 * Repeated failures open the gateway breaker (later seeds leave the gateway alone); one failed
 * request (a 503 SlowDown that outlasted the S3 client's own retries) does not: before, one
 * failure left the gateway alone for 30 s. A read from the gateway that breaks off part-way is
 * carried on from the origin, from the byte it stopped at: before, that seed failed and every
 * agent read the blob from the registry. So is one that goes quiet part-way, given up by the
 * seed well before the S3 client's own idle timeout (30 s) would have.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  waitFor,
  startFaultProxy,
  startAgent,
  startRegistry,
  startS3,
  startSeedServer,
  Teardown,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
  type S3Server,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'shoal/s3-faults';

describe('the object gateway failing while the seed server seeds', () => {
  const teardown = new Teardown();
  let s3: S3Server;
  let gateway: FaultProxy;
  let registry: Registry;
  let image: GeneratedImage;
  let second: GeneratedImage;
  let third: GeneratedImage;
  let fourth: GeneratedImage;
  let fifth: GeneratedImage;
  let cluster: Cluster;
  /** The seed server's settings for the gateway (a replacement takes them too). */
  let gatewayEnv: Record<string, string>;

  before(async () => {
    s3 = await startS3();
    teardown.add('s3', () => s3.stop());
    await s3.createBucket('shoal-blobs');
    gateway = await startFaultProxy({ upstream: s3.endpoint });
    teardown.add('gateway proxy', () => gateway.stop());
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('s3-faults');
    teardown.add('image', () => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [8 * MiB, MiB], seed: 's3-faults' });
    await pushImage(image, registry.host, repository);
    second = await generateImage(`${layout.path}-second`, {
      layerSizes: [2 * MiB, MiB],
      seed: 's3-faults-second',
    });
    teardown.add('second image', () =>
      rm(`${layout.path}-second`, { recursive: true, force: true }),
    );
    await pushImage(second, registry.host, `${repository}-second`);
    third = await generateImage(`${layout.path}-third`, {
      layerSizes: [2 * MiB, MiB],
      seed: 's3-faults-third',
    });
    teardown.add('third image', () => rm(`${layout.path}-third`, { recursive: true, force: true }));
    await pushImage(third, registry.host, `${repository}-third`);
    fourth = await generateImage(`${layout.path}-fourth`, {
      layerSizes: [4 * MiB, MiB / 4],
      seed: 's3-faults-fourth',
    });
    teardown.add('fourth image', () =>
      rm(`${layout.path}-fourth`, { recursive: true, force: true }),
    );
    await pushImage(fourth, registry.host, `${repository}-fourth`);
    fifth = await generateImage(`${layout.path}-fifth`, {
      layerSizes: [4 * MiB, MiB / 4],
      seed: 's3-faults-fifth',
    });
    teardown.add('fifth image', () => rm(`${layout.path}-fifth`, { recursive: true, force: true }));
    await pushImage(fifth, registry.host, `${repository}-fifth`);
    gatewayEnv = {
      SHOAL_STORE_KIND: 's3',
      SHOAL_S3_ENDPOINT: gateway.url,
      SHOAL_S3_REGION: s3.region,
      SHOAL_S3_BUCKET: 'shoal-blobs',
      SHOAL_S3_ACCESS_KEY_ID: s3.accessKeyId,
      SHOAL_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      SHOAL_S3_PART_SIZE_BYTES: String(5 * MiB),
    };
    cluster = await startCluster({
      layerSizes: [],
      seed: 's3-faults',
      repository,
      trackers: 1,
      agents: [{ peerId: 'agent-a' }, { peerId: 'agent-b' }],
      registry: { registry, image },
      // The breaker's break at 8 s, not 30: the tests wait one out (under 9 s of CI, not 30).
      seedEnv: { ...gatewayEnv, SHOAL_SEED_GATEWAY_BREAK_MS: '8000' },
    });
    teardown.add('cluster', () => cluster.stop());
  });

  after(async () => {
    await teardown.run();
  });

  /** One blob of `repo` pulled through agent-a, its digest checked. */
  const pull = async (repo: string, digest: string): Promise<void> => {
    const [a] = cluster.agents;
    assert.ok(a !== undefined);
    const outcome = await streamDigest(`${a.url}/v2/${repo}/blobs/${digest}?ns=${registry.host}`);
    assert.equal(outcome.error, undefined);
    assert.equal(outcome.digest, digest);
  };

  /** Whether the blob with this hex digest was written to the S3 endpoint (not a part). */
  const copied = (hex: string): boolean =>
    s3
      .requests()
      .some(
        (r) =>
          (r.method === 'PUT' || r.method === 'POST') &&
          r.key?.endsWith(hex) === true &&
          !r.query.includes('partNumber'),
      );

  it('completes every pull from the swarm while the gateway answers 503', async () => {
    gateway.set({ kind: 'status', statuses: [503] });
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    const pulls = await Promise.all([
      pullBlobs(a, cluster, repository),
      pullBlobs(b, cluster, repository),
    ]);
    gateway.set(undefined);
    for (const outcomes of pulls) {
      assert.deepEqual(
        outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
        image.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
      );
    }
    for (const agent of [a, b]) {
      const sources = await bytesBySource(agent);
      assert.equal(sources.origin, 0, `${agent.peerId ?? ''}: nothing from the origin`);
    }
    for (const blob of image.blobs) {
      assert.equal(
        (await registry.blobGets(blob.digest)).length,
        1,
        `${blob.digest}: read from the registry once, by the seed server`,
      );
    }
    assert.ok((await cluster.seed.metric('shoal_seedserver_gateway_failures_total')) >= 1);
    // The copy the gateway refused does not fail a blob verified and served: each one seeded.
    assert.equal(
      await cluster.seed.metric('shoal_seedserver_seeds_total', { outcome: 'failed' }),
      0,
      'no seed failed',
    );
    assert.equal(
      await cluster.seed.metric('shoal_seedserver_seeds_total', {
        source: 'origin',
        outcome: 'seeded',
      }),
      image.blobs.length,
    );
  });

  it('leaves a failing gateway alone for a while: later seeds ask the origin at once', async () => {
    gateway.set({ kind: 'status', statuses: [503] });
    const [first, ...rest] = second.blobs;
    assert.ok(first !== undefined);
    try {
      // One seed meets the failing gateway (or it failed moments ago, in the test before).
      await pull(`${repository}-second`, first.digest);
      // By now the failures in a row have opened the breaker.
      assert.equal(await cluster.seed.metric('shoal_seedserver_gateway_breaker_open'), 1);
      assert.ok((await cluster.seed.metric('shoal_seedserver_gateway_breaker_trips_total')) >= 1);
      const asked = gateway.counts().refused;
      for (const blob of rest) {
        await pull(`${repository}-second`, blob.digest);
      }
      assert.equal(gateway.counts().refused, asked, 'no gateway request from the later seeds');
    } finally {
      gateway.set(undefined);
    }
    for (const blob of second.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, `${blob.digest}: once`);
    }
  });

  it('copies the blobs seeded while it was left alone into the gateway once it is back, unasked', async () => {
    // The test before healed the gateway; nobody asks for these blobs again.
    await waitFor(
      'every blob seeded during the break copied into the gateway',
      () => Promise.resolve(second.blobs.every((b) => copied(b.digest.split(':')[1] ?? ''))),
      { timeoutMs: 60_000, intervalMs: 500 },
    );
  });

  it('does not open the breaker on one failed request: the next seeds ask the gateway, copies go at once', async () => {
    await waitFor(
      'the breaker closed (the test before waited out its break)',
      async () => (await cluster.seed.metric('shoal_seedserver_gateway_breaker_open')) === 0,
      { timeoutMs: 40_000, intervalMs: 500 },
    );
    const trips = await cluster.seed.metric('shoal_seedserver_gateway_breaker_trips_total');
    const failures = await cluster.seed.metric('shoal_seedserver_gateway_failures_total');
    const [first, ...rest] = third.blobs;
    assert.ok(first !== undefined);
    const refused = gateway.counts().refused;
    // One failed gateway request: the first seed's stat meets a 503 (SlowDown) at each of the
    // S3 client's three attempts.
    gateway.set({ kind: 'status', statuses: [503], times: 3 });
    try {
      await pull(`${repository}-third`, first.digest);
      assert.equal(gateway.counts().refused - refused, 3, 'the first seed met the 503s');
      const forwarded = gateway.counts().forwarded;
      for (const blob of rest) {
        await pull(`${repository}-third`, blob.digest);
      }
      assert.ok(gateway.counts().forwarded > forwarded, 'the later seeds asked the gateway');
    } finally {
      gateway.set(undefined);
    }
    assert.equal(
      (await cluster.seed.metric('shoal_seedserver_gateway_failures_total')) - failures,
      1,
    );
    assert.equal(
      await cluster.seed.metric('shoal_seedserver_gateway_breaker_trips_total'),
      trips,
      'the breaker did not open',
    );
    assert.equal(await cluster.seed.metric('shoal_seedserver_gateway_breaker_open'), 0);
    // Every blob is in the gateway well within what a break would have cost (30 s).
    await waitFor(
      'every blob copied into the gateway',
      () => Promise.resolve(third.blobs.every((b) => copied(b.digest.split(':')[1] ?? ''))),
      { timeoutMs: 15_000, intervalMs: 250 },
    );
    for (const blob of third.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, `${blob.digest}: once`);
    }
  });
  /**
   * Both agents pull `img` while the object gateway holds it and meets `fault` when it is read:
   * the image is put in the gateway only first (seeded through a node that then leaves), and
   * the seed server is moved to another node (its cache gone, the gateway kept; `seedEnv` its
   * own settings). Every blob gets to both agents, nothing from the registry; the registry
   * sends the large layer once, to the seed server, only from where the gateway stopped (at
   * most `fault.atByte`).
   */
  const pullWhileGatewayReadFails = async (
    img: GeneratedImage,
    repo: string,
    fault: { readonly kind: 'damage'; readonly how: 'cut' | 'stall'; readonly atByte: number },
    seedEnv: Record<string, string> = {},
  ): Promise<void> => {
    const passing = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'agent-passing',
      env: { ...cluster.agentEnv, ...(await cluster.nats.clientEnv('agent-passing')) },
    });
    try {
      const outcomes = await pullBlobs(passing, { image: img, registry }, repo);
      assert.deepEqual(
        outcomes.map((o) => o.error?.message),
        img.blobs.map(() => undefined),
      );
      await waitFor(
        'every blob copied into the gateway',
        () => Promise.resolve(img.blobs.every((b) => copied(b.digest.split(':')[1] ?? ''))),
        { timeoutMs: 30_000, intervalMs: 250 },
      );
    } finally {
      await passing.stop();
    }
    const old = cluster.seed;
    await old.stop();
    cluster.seed = await startSeedServer({
      natsUrl: cluster.nats.url,
      registries: `${registry.host}=${registry.url}`,
      port: old.port,
      env: { ...gatewayEnv, ...seedEnv, ...(await cluster.nats.clientEnv('seedserver')) },
    });
    const [a, b] = cluster.agents;
    assert.ok(a !== undefined && b !== undefined);
    const [big] = img.layers;
    assert.ok(big !== undefined);
    const before = (await registry.blobGets(big.digest)).length;
    const originBefore = await Promise.all([a, b].map(async (agent) => bytesBySource(agent)));
    gateway.set(fault);
    try {
      const pulls = await Promise.all([
        pullBlobs(a, { image: img, registry }, repo),
        pullBlobs(b, { image: img, registry }, repo),
      ]);
      for (const outcomes of pulls) {
        assert.deepEqual(
          outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
          img.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
        );
      }
    } finally {
      gateway.set(undefined);
    }
    for (const [i, agent] of [a, b].entries()) {
      const sources = await bytesBySource(agent);
      assert.equal(
        sources.origin,
        originBefore[i]?.origin,
        `${agent.peerId ?? ''}: nothing from the origin`,
      );
    }
    const reads = (await registry.blobGets(big.digest)).slice(before);
    assert.equal(reads.length, 1, 'one registry read of the layer, by the seed server');
    const [sent = 0] = reads.map((r) => r.written);
    assert.ok(
      sent >= big.size - fault.atByte && sent < big.size,
      `the registry sent ${String(sent)} bytes of ${String(big.size)}, the gateway's read ${fault.how} at ${String(fault.atByte)}`,
    );
    assert.deepEqual(
      img.blobs.filter((blob) => blob.size > fault.atByte).map((blob) => blob.digest),
      [big.digest],
      'the gateway broke off the large layer only',
    );
    assert.equal(await cluster.seed.metric('shoal_seedserver_gateway_reads_continued_total'), 1);
    assert.equal(
      await cluster.seed.metric('shoal_seedserver_seeds_total', { outcome: 'failed' }),
      0,
    );
  };

  it("keeps the swarm off the registry when the gateway's read of a blob breaks off: the seed reads the rest from the origin", async () => {
    // Every blob the gateway sends is cut off past its first MiB: the 4 MiB layer.
    await pullWhileGatewayReadFails(fourth, `${repository}-fourth`, {
      kind: 'damage',
      how: 'cut',
      atByte: MiB + 7,
    });
  });

  it("keeps the swarm off the registry when the gateway's read of a blob goes quiet: the seed gives it up and reads the rest from the origin", async () => {
    // Every blob the gateway sends stops past its first MiB, the connection left open: the
    // S3 client would wait 30 s on it, and the agents (their stall timeout 4 s here) would
    // read the blob from the registry themselves. The seed gives the read up at 2 s and tells
    // them at once that it waits on the origin for the rest.
    await pullWhileGatewayReadFails(
      fifth,
      `${repository}-fifth`,
      { kind: 'damage', how: 'stall', atByte: MiB + 11 },
      { SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '2000' },
    );
  });
});
