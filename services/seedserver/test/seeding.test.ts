/**
 * The seed server's real wiring (`buildApp`) against a real nats-server, Debian's registry and
 * the filesystem or S3 object gateway: one-pass ingest, what a digest mismatch leaves behind,
 * the cache quota, and the cap on piece uploads.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  type S3Client,
} from '@aws-sdk/client-s3';
import { createS3Client } from '@shoal/blobstore';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  decodePieceBitmap,
  encodeMessage,
  MAX_BLOB_BYTES,
  pieceCount,
  pieceHashes,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  PIECE_PEER_HEADER,
  PIECE_NOT_FROM_HEADER,
  PIECE_RATIONED_HEADER,
  PIECE_UNHEARD_HEADER,
  pieceListDigest,
  piecePath,
  piecesVerified,
  piecesVerifiedSubject,
  pieceSizeFor,
  seedFailed,
  seedRequest,
  seedRequestSubject,
  STREAMS,
  verifyPiecesVerified,
  type PiecesVerified,
} from '@shoal/proto';
import { ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import {
  generateHandoutKeys,
  generateImage,
  makeTempDir,
  pushImage,
  scrapeMetrics,
  startFaultProxy,
  startNats,
  startRegistry,
  startS3,
  testRecordKeys,
  waitFor,
  writeRecordPrivateKey,
  type Descriptor,
  type FaultProxy,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type RegistryFault,
  type RegistryRequest,
  type S3Server,
} from '@shoal/testkit';

import { buildApp, loadSeedConfig, type SeedApp } from '../src/app.js';

const MiB = 1024 * 1024;
const REPOSITORY = 'shoal/seed-test';
const WAIT_MS = 30_000;

interface SeedUnderTest {
  readonly app: SeedApp;
  /** The seed's nats-server. */
  readonly nats: NatsServer;
  /** The test's own JetStream handles on the seed's NATS. */
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly url: string;
  readonly cacheDir: string;
  readonly storeDir: string;
  /** Publishes a seed request for the blob (no message id: every request counts). */
  request(blob: Descriptor): Promise<void>;
  /** Waits until `count` seeds ended with `outcome` (and `source`, when given). */
  seeds(outcome: 'seeded' | 'failed', count: number, source?: 'origin' | 'store'): Promise<void>;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** Piece-hash messages the SHOAL_PIECES stream holds for `blob`. */
  hashMessages(blob: Descriptor): Promise<number>;
  /** The first piece-hash message stored for `blob` and its sequence, read as agents do. */
  storedHashes(blob: Descriptor): Promise<{ seq: number; first: number; hashes: string[] }>;
  /** The `pieces-verified` record stored for `blob`, if any. */
  record(blob: Descriptor): Promise<PiecesVerified | undefined>;
  stop(): Promise<void>;
}

let registry: Registry;
let image: GeneratedImage;
let imageDir: { path: string; remove(): Promise<void> };

/** The image's layers: big (one-pass), a and b (quota), corrupt (mismatch). */
function layer(index: number): Descriptor {
  const descriptor = image.layers[index];
  assert.ok(descriptor !== undefined, `layer ${index}`);
  return descriptor;
}

/**
 * A seed server on a fresh nats-server; its cache and store in `base` when given (kept on
 * stop, as a restart would find them), else in a temporary directory removed on stop.
 */
async function startSeed(env: Record<string, string> = {}, base?: string): Promise<SeedUnderTest> {
  const nats: NatsServer = await startNats();
  const dir =
    base === undefined ? await makeTempDir('seed-test') : { path: base, remove: async () => {} };
  let nc: NatsConnection | undefined;
  let app: SeedApp | undefined;
  try {
    const cacheDir = join(dir.path, 'cache');
    const storeDir = join(dir.path, 'store');
    nc = await connect({ servers: nats.url });
    const { js, jsm } = await jetStreamFor(nc);
    // The trackers own the swarm stream the seed announces on; none runs here.
    await ensureStreams(jsm, [STREAMS.swarm], 1);
    const config = loadSeedConfig({
      SHOAL_NATS_URL: nats.url,
      SHOAL_SEED_LISTEN: '127.0.0.1:0',
      SHOAL_SEED_ID: 'seed-test',
      SHOAL_SEED_REGISTRIES: `${registry.host}=${registry.url}`,
      SHOAL_SEED_CACHE_DIR: cacheDir,
      SHOAL_STORE_DIR: storeDir,
      SHOAL_LOG_LEVEL: 'silent',
      // These tests read pieces without hand-out tokens; piece-auth.test.ts covers those.
      SHOAL_SEED_PIECE_AUTH: 'off',
      ...env,
    });
    const started = await buildApp(config);
    app = started;
    await started.start();
    const url = started.url().replace('localhost', '127.0.0.1');
    const metric = async (name: string, labels: Record<string, string> = {}): Promise<number> =>
      (await scrapeMetrics(url)).get(name, labels);
    const connection = nc;
    let stopped: Promise<void> | undefined;
    return {
      app: started,
      nats,
      js,
      jsm,
      url,
      cacheDir,
      storeDir,
      request: (blob) => publishRequest(js, blob),
      seeds: (outcome, count, source) =>
        waitFor(
          `${count} seed(s) ${outcome}`,
          async () =>
            (await metric('shoal_seedserver_seeds_total', {
              outcome,
              ...(source === undefined ? {} : { source }),
            })) >= count,
          { timeoutMs: WAIT_MS, intervalMs: 50 },
        ),
      metric,
      hashMessages: async (blob) => {
        const info = await jsm.streams.info(STREAMS.pieces.name, {
          subjects_filter: pieceHashesSubject(blob.digest),
        });
        return Object.values(info.state.subjects ?? {}).reduce((sum, n) => sum + n, 0);
      },
      storedHashes: async (blob) => {
        const stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
          seq: 1,
          next_by_subj: pieceHashesSubject(blob.digest),
        });
        assert.ok(stored !== null, `no stored hashes for ${blob.digest}`);
        const batch = stored.json<{ type: string; first: number; hashes: string[] }>();
        if (batch.type === 'piece-hashes') {
          // As agents decode them: the announcer does not validate what it publishes.
          const decoded = decodeMessage(pieceHashes, stored.data);
          assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
        }
        return { seq: stored.seq, ...batch };
      },
      record: async (blob) => {
        const stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
          last_by_subj: piecesVerifiedSubject(blob.digest),
        });
        if (stored === null) {
          return undefined;
        }
        const decoded = decodeMessage(piecesVerified, stored.data);
        assert.ok(decoded.ok, 'a valid record');
        return decoded.value;
      },
      // Once: a test that stops it early leaves the rest of its teardown to do the same.
      stop: () =>
        (stopped ??= stopAll([
          ['seed server', () => started.close()],
          ['NATS connection', () => connection.close()],
          ['nats-server', () => nats.stop()],
          ['directory', () => dir.remove()],
        ])),
    };
  } catch (error) {
    await app?.close().catch(() => undefined);
    await nc?.close().catch(() => undefined);
    await nats.stop();
    await dir.remove();
    throw error;
  }
}

/**
 * Runs every step in order, each whether the ones before failed or not (so that nothing a
 * test started outlives it), then throws the failures, if any.
 */
async function stopAll(steps: readonly (readonly [string, () => Promise<void>])[]): Promise<void> {
  const failures: Error[] = [];
  for (const [what, step] of steps) {
    await step().catch((error: unknown) => {
      failures.push(new Error(`stopping ${what}`, { cause: error }));
    });
  }
  if (failures.length > 0) {
    throw new AggregateError(failures, failures.map((f) => f.message).join('; '));
  }
}

async function publishRequest(js: JetStreamClient, blob: Descriptor): Promise<void> {
  await js.publish(
    seedRequestSubject(blob.digest),
    encodeMessage(seedRequest, {
      type: 'seed-request',
      blob: blob.digest,
      registry: registry.host,
      repository: REPOSITORY,
      reason: { kind: 'want' },
    }),
  );
}

/** Bytes this process caused to be written to storage so far (`/proc/self/io`). */
async function writeBytes(): Promise<number> {
  const io = await readFile('/proc/self/io', 'utf8');
  const match = /^write_bytes: (\d+)$/m.exec(io);
  assert.ok(match?.[1] !== undefined, 'write_bytes in /proc/self/io');
  return Number(match[1]);
}

/** Every piece of a blob from the seed, checked against the blob's digest. */
async function fetchAllPieces(url: string, blob: Descriptor): Promise<string[]> {
  const hashes: string[] = [];
  const whole = createHash('sha256');
  for (let i = 0; i < pieceCount(blob.size, pieceSizeFor(blob.size)); i++) {
    const response = await fetch(`${url}${piecePath(blob.digest, i)}`, {
      signal: AbortSignal.timeout(WAIT_MS),
    });
    assert.equal(response.status, 200, `piece ${i}`);
    const bytes = Buffer.from(await response.arrayBuffer());
    hashes.push(createHash('sha256').update(bytes).digest('hex'));
    whole.update(bytes);
  }
  assert.equal(`sha256:${whole.digest('hex')}`, blob.digest);
  return hashes;
}

/** The files under `dir` this process holds open (from /proc/self/fd). */
async function openFilesUnder(dir: string): Promise<string[]> {
  const open: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(join('/proc/self/fd', fd)).catch(() => '');
    if (target.startsWith(`${dir}/`)) {
      open.push(target);
    }
  }
  return open;
}

async function entries(path: string): Promise<string[]> {
  return readdir(path).catch(() => []);
}

function cacheFile(cacheDir: string, blob: Descriptor): string {
  return join(cacheDir, 'blobs', blob.digest.replace(':', '-'));
}

function storeFile(storeDir: string, blob: Descriptor): string {
  return join(storeDir, 'blobs', ...blob.digest.split(':'));
}

/** A client of the test's S3 endpoint, to look into the bucket. */
function clientOf(s3: S3Server): S3Client {
  return createS3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
  });
}

/** The seed server's settings for an S3 gateway at `endpoint` (the server or a proxy of it). */
function s3Env(s3: S3Server, endpoint: string, bucket: string): Record<string, string> {
  return {
    SHOAL_STORE_KIND: 's3',
    SHOAL_S3_ENDPOINT: endpoint,
    SHOAL_S3_REGION: s3.region,
    SHOAL_S3_BUCKET: bucket,
    SHOAL_S3_ACCESS_KEY_ID: s3.accessKeyId,
    SHOAL_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
    SHOAL_S3_PART_SIZE_BYTES: String(5 * MiB),
  };
}

/** A seed server whose object gateway is a real S3 endpoint behind a fault proxy. */
interface SeedOnS3 {
  readonly seed: SeedUnderTest;
  readonly gateway: FaultProxy;
  readonly client: S3Client;
  /** Whether the bucket holds the blob (not its piece manifest). */
  readonly stored: (blob: Descriptor) => Promise<boolean>;
  /** The seed's gateway settings: another seed server on the same gateway takes them. */
  readonly gatewayEnv: Record<string, string>;
  readonly stop: () => Promise<void>;
}

/** Seeds `blob` from the origin on `on`'s seed server, and waits for its gateway copy. */
async function seedIntoGateway(on: SeedOnS3, blob: Descriptor): Promise<void> {
  await on.seed.request(blob);
  await on.seed.seeds('seeded', 1, 'origin');
  await waitFor('the gateway copy', () => on.stored(blob), { timeoutMs: WAIT_MS, intervalMs: 100 });
}

/**
 * Seeds `blob` from the origin on `on`'s seed server while its gateway meets `fault`, and
 * shows that the seed did not wait on the gateway's upload (before, it went at the gateway's
 * pace, or left it behind after the gateway's idle timeout): seeded in under `boundMs`, every
 * piece served. Returns when the seed was asked (performance.now()).
 */
async function seedPastGateway(
  on: SeedOnS3,
  blob: Descriptor,
  fault: RegistryFault,
  boundMs: number,
): Promise<number> {
  on.gateway.set(fault);
  const startedAt = performance.now();
  await on.seed.request(blob);
  await on.seed.seeds('seeded', 1, 'origin');
  const tookMs = performance.now() - startedAt;
  assert.ok(tookMs < boundMs, `seeded in ${String(Math.round(tookMs))} ms`);
  await fetchAllPieces(on.seed.url, blob);
  return startedAt;
}

async function startSeedOnS3(env: Record<string, string> = {}, base?: string): Promise<SeedOnS3> {
  const s3 = await startS3();
  const bucket = 'seed-gateway';
  await s3.createBucket(bucket);
  const gateway = await startFaultProxy({ upstream: s3.endpoint });
  const client = clientOf(s3);
  const gatewayEnv = s3Env(s3, gateway.url, bucket);
  const seed = await startSeed({ ...gatewayEnv, ...env }, base);
  return {
    seed,
    gateway,
    client,
    gatewayEnv,
    stored: async (blob) => {
      const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
      const key = `blobs/${blob.digest.replace(':', '/')}`;
      return (listed.Contents ?? []).some((o) => o.Key === key);
    },
    stop: () =>
      stopAll([
        ['seed', () => seed.stop()],
        [
          'S3 client',
          () => {
            client.destroy();
            return Promise.resolve();
          },
        ],
        ['gateway proxy', () => gateway.stop()],
        ['S3 server', () => s3.stop()],
      ]),
  };
}

describe('seed server', () => {
  before(async () => {
    registry = await startRegistry();
    imageDir = await makeTempDir('seed-test-image');
    image = await generateImage(imageDir.path, {
      layerSizes: [24 * MiB, 3 * MiB, 2 * MiB, 6 * MiB + 123],
      seed: 'seedserver-test',
    });
    await pushImage(image, registry.host, REPOSITORY);
    await registry.corruptBlob(layer(3).digest);
  });

  after(async () => {
    await registry.stop();
    await imageDir.remove();
  });

  it('ingests in one pass: the blob is written once, and the gateway links that file', async () => {
    const seed = await startSeed();
    try {
      const big = layer(0);
      const before = await writeBytes();
      await seed.request(big);
      await seed.seeds('seeded', 1);
      const written = (await writeBytes()) - before;
      // The piece file once, plus its manifests; no second copy for the gateway.
      assert.ok(written >= big.size, `${written} bytes written for ${big.size}`);
      assert.ok(written <= big.size * 1.05, `${written} bytes written for ${big.size}`);
      const cached = await stat(cacheFile(seed.cacheDir, big));
      const stored = await stat(storeFile(seed.storeDir, big));
      assert.equal(stored.ino, cached.ino);
      assert.equal(stored.size, big.size);
      assert.equal(await seed.metric('shoal_seedserver_stored_bytes_total'), big.size);
      // Announced in batches as it streamed in, its hashes are kept as one message (96
      // pieces): a node that comes later reads them with one direct get.
      assert.equal(await seed.hashMessages(big), 1, 'a seeded blob keeps its hashes, consolidated');
      const kept = await seed.storedHashes(big);
      assert.ok(kept.seq > 1, 'published in batches first (its first piece alone)');
      // Every piece serves the verified bytes, and the manifest in the gateway matches.
      const hashes = await fetchAllPieces(seed.url, big);
      const manifest = JSON.parse(
        await readFile(join(seed.storeDir, 'meta', ...big.digest.split(':'), 'pieces'), 'utf8'),
      ) as { hashes: string[] };
      assert.deepEqual(manifest.hashes, hashes);
      assert.deepEqual(kept.hashes, hashes);
      assert.deepEqual(await entries(join(seed.cacheDir, 'tmp')), []);
      assert.deepEqual(await entries(join(seed.storeDir, 'tmp')), []);
    } finally {
      await seed.stop();
    }
  });

  it('refuses a blob larger than Shoal moves before reading a byte of it', async () => {
    const seed = await startSeed();
    try {
      const big = layer(1);
      // The object gateway holds a file of one byte past 1 TiB (sparse: nothing is written).
      const path = storeFile(seed.storeDir, big);
      await mkdir(dirname(path), { recursive: true });
      const file = await open(path, 'w');
      try {
        await file.truncate(MAX_BLOB_BYTES + 1);
      } finally {
        await file.close();
      }
      await seed.request(big);
      await seed.seeds('failed', 1);
      // Nothing announced but the notice that tells waiting agents, nothing cached.
      const notice: Record<string, unknown> = await seed.storedHashes(big);
      assert.equal(notice.type, 'seed-failed');
      assert.equal(notice.reason, 'origin');
      assert.deepEqual(await entries(join(seed.cacheDir, 'tmp')), []);
      assert.equal(await seed.metric('shoal_seedserver_ingested_bytes_total'), 0);
    } finally {
      await seed.stop();
    }
  });

  it('announces an IPv6 listen address in brackets when SHOAL_SEED_URL is unset', async () => {
    const seed = await startSeed({ SHOAL_SEED_LISTEN: '[::1]:0' });
    try {
      const a = layer(1);
      await seed.request(a);
      await seed.seeds('seeded', 1);
      const last = await seed.jsm.streams.getMessage(STREAMS.swarm.name, {
        last_by_subj: pieceHaveSubject(a.digest, 'seed-test'),
      });
      assert.ok(last !== null, 'the seed announced the blob');
      const have = decodeMessage(pieceHave, last.data);
      assert.ok(have.ok, have.ok ? '' : have.error);
      assert.match(have.value.peer.url, /^http:\/\/\[::1\]:\d+$/);
      assert.equal(have.value.complete, true);
    } finally {
      await seed.stop();
    }
  });

  it('seeds through a registry that redirects to signed storage URLs, asking again for an expired one', async () => {
    const proxy = await startFaultProxy({ upstream: registry.url });
    const seed = await startSeed({ SHOAL_SEED_REGISTRIES: `${registry.host}=${proxy.url}` });
    try {
      proxy.set({ kind: 'redirect', expired: 1 });
      await seed.request(layer(1));
      await seed.seeds('seeded', 1, 'origin');
      assert.deepEqual(
        await fetchAllPieces(seed.url, layer(1)),
        (await seed.storedHashes(layer(1))).hashes,
      );
      const storage = proxy.storageReceived();
      assert.deepEqual(
        storage.map((r) => r.status),
        [403, 200],
        'the expired URL refused, a fresh one from the registry served',
      );
      assert.ok(storage.every((r) => r.authorization === undefined));
    } finally {
      await stopAll([
        ['seed', () => seed.stop()],
        ['registry proxy', () => proxy.stop()],
      ]);
    }
  });

  it("honours a registry's 429 Retry-After: seeds fail at once until it has passed", async () => {
    const proxy = await startFaultProxy({ upstream: registry.url });
    const seed = await startSeed({ SHOAL_SEED_REGISTRIES: `${registry.host}=${proxy.url}` });
    try {
      proxy.set({ kind: 'status', statuses: [429], retryAfterS: 60, methods: ['GET'] });
      await seed.request(layer(1));
      await seed.seeds('failed', 1);
      await seed.request(layer(2));
      await seed.seeds('failed', 2);
      const gets = proxy.received().filter((r) => r.method === 'GET');
      assert.equal(gets.length, 1, 'the registry was asked once');
      const rateLimited = (outcome: string): Promise<number> =>
        seed.metric('shoal_seedserver_origin_rate_limited_total', { outcome });
      assert.equal(await rateLimited('answered'), 1);
      assert.equal(await rateLimited('held'), 1);
      const notice: Record<string, unknown> = await seed.storedHashes(layer(2));
      assert.equal(notice.type, 'seed-failed');
    } finally {
      await stopAll([
        ['seed', () => seed.stop()],
        ['registry proxy', () => proxy.stop()],
      ]);
    }
  });

  it('opens the gateway breaker on refused writes though reads succeed, and reopens it at the first failure after a break', async () => {
    const { seed, gateway, stored, stop } = await startSeedOnS3({
      SHOAL_SEED_GATEWAY_BREAK_MS: '4000',
    });
    let teardownWatch = (): void => undefined;
    try {
      // Out of quota, say: every HEAD answered, every upload refused with a 503.
      gateway.set({ kind: 'status', statuses: [503], methods: ['PUT', 'POST'] });
      // When each failed write began: its refusals (the S3 client's tries) come close together.
      const writeFailures: number[] = [];
      let refused = 0;
      let refusedAt = -Infinity;
      const watch = setInterval(() => {
        const now = performance.now();
        if (gateway.counts().refused > refused) {
          if (now - refusedAt > 1_000) {
            writeFailures.push(now);
          }
          refused = gateway.counts().refused;
          refusedAt = now;
        }
      }, 25);
      teardownWatch = () => clearInterval(watch);
      await seed.request(layer(1));
      await seed.seeds('seeded', 1, 'origin');
      const trips = (): Promise<number> =>
        seed.metric('shoal_seedserver_gateway_breaker_trips_total');
      // Before: each owed copy's successful HEAD started the count again; it never opened.
      await waitFor('the breaker opened', async () => (await trips()) >= 1, {
        timeoutMs: 25_000,
        intervalMs: 50,
      });
      teardownWatch();
      // The owed copy backs off: 2 s after the first failure, 4 s after the second (before,
      // every 2 s for ever).
      const [first, second, third] = writeFailures;
      assert.ok(first !== undefined && second !== undefined && third !== undefined);
      assert.ok(
        third - second > (second - first) * 1.4,
        `waits ${String(Math.round(second - first))} ms, then ${String(Math.round(third - second))} ms`,
      );
      const refusedAtFirst = gateway.counts().refused;
      const firstFailures = await seed.metric('shoal_seedserver_gateway_failures_total');
      await waitFor('the breaker reopened after its break', async () => (await trips()) >= 2, {
        timeoutMs: 25_000,
        intervalMs: 50,
      });
      // Half-open: one failed write (the S3 client's attempts at it) reopened it, not three.
      assert.equal(
        (await seed.metric('shoal_seedserver_gateway_failures_total')) - firstFailures,
        1,
        'one failure after the break reopened the breaker',
      );
      const perRequest = gateway.counts().refused - refusedAtFirst;
      assert.ok(perRequest >= 1 && perRequest <= 3, `${perRequest} refused writes`);
      gateway.set(undefined);
      // The owed copy is made after this break (4 s), whether or not anyone asks.
      await waitFor('the owed copy made', () => stored(layer(1)), {
        timeoutMs: 15_000,
        intervalMs: 250,
      });
      await waitFor(
        'the breaker closed by a write that succeeded',
        async () => (await seed.metric('shoal_seedserver_gateway_breaker_open')) === 0,
        { timeoutMs: 5_000, intervalMs: 50 },
      );
    } finally {
      teardownWatch();
      await stop();
    }
  });

  it('opens the gateway breaker at the first write refused for lack of space (507)', async () => {
    const { seed, gateway, stop } = await startSeedOnS3();
    try {
      gateway.set({ kind: 'status', statuses: [507], methods: ['PUT', 'POST'] });
      await seed.request(layer(2));
      await seed.seeds('seeded', 1, 'origin');
      await waitFor(
        'the breaker opened',
        async () => (await seed.metric('shoal_seedserver_gateway_breaker_open')) === 1,
        { timeoutMs: 10_000, intervalMs: 50 },
      );
      assert.equal(await seed.metric('shoal_seedserver_gateway_failures_total'), 1);
      assert.equal(await seed.metric('shoal_seedserver_gateway_breaker_trips_total'), 1);
    } finally {
      await stop();
    }
  });

  it("owes and retries a held blob's gateway copy that failed in the background", async () => {
    const on = await startSeedOnS3();
    const { seed, gateway, client, stored, stop } = on;
    try {
      await seedIntoGateway(on, layer(2));
      // The copy (finished in the background) is done, its piece manifest too.
      await waitFor(
        'the copy accounted for',
        async () => (await seed.metric('shoal_seedserver_stored_bytes_total')) === layer(2).size,
        { timeoutMs: WAIT_MS, intervalMs: 50 },
      );
      // The gateway lost it (a lifecycle rule, an operator): the next request for the held
      // blob copies it again, and that upload meets one failure (the client's three tries).
      await client.send(
        new DeleteObjectCommand({
          Bucket: 'seed-gateway',
          Key: `blobs/${layer(2).digest.replace(':', '/')}`,
        }),
      );
      gateway.set({ kind: 'status', statuses: [503], methods: ['PUT', 'POST'], times: 3 });
      await seed.request(layer(2));
      // The held blob is answered at once; its copy's upload meets the 503s.
      await waitFor('the upload refused', () => Promise.resolve(gateway.counts().refused >= 3), {
        timeoutMs: WAIT_MS,
        intervalMs: 50,
      });
      assert.equal(await stored(layer(2)), false);
      // Before: the failed copy was dropped until someone asked for the blob again.
      await waitFor('the copy made again, unasked', () => stored(layer(2)), {
        timeoutMs: 8_000,
        intervalMs: 250,
      });
    } finally {
      await stop();
    }
  });

  it('keeps nothing of a blob that fails its digest, in the cache or the gateway', async () => {
    const seed = await startSeed();
    try {
      await seed.request(layer(3));
      await seed.seeds('failed', 1);
      // No hash of the failed run stays for agents to verify pieces against: only the notice
      // that tells them the seed gave the blob up, so they need not wait for it.
      assert.equal(await seed.hashMessages(layer(3)), 1);
      const notice: Record<string, unknown> = await seed.storedHashes(layer(3));
      assert.equal(notice.type, 'seed-failed');
      assert.equal(notice.reason, 'verification');
      assert.equal(
        await seed.metric('shoal_seedserver_seeds_total', {
          outcome: 'failed',
          reason: 'verification',
        }),
        1,
      );
      assert.deepEqual(await entries(join(seed.cacheDir, 'blobs')), []);
      assert.deepEqual(await entries(join(seed.cacheDir, 'tmp')), []);
      assert.deepEqual(await entries(join(seed.storeDir, 'blobs', 'sha256')), []);
      assert.deepEqual(await entries(join(seed.storeDir, 'meta', 'sha256')), []);
      assert.deepEqual(await entries(join(seed.storeDir, 'tmp')), []);
      assert.equal(await seed.metric('shoal_seedserver_cache_bytes'), 0);
      const missing = await fetch(`${seed.url}${piecePath(layer(3).digest, 0)}`);
      assert.equal(missing.status, 404);
    } finally {
      await seed.stop();
    }
  });

  it('streams to S3 as the bytes arrive, and aborts the upload on a digest mismatch', async () => {
    const s3 = await startS3();
    const bucket = 'seed-test';
    let client: S3Client | undefined;
    try {
      await s3.createBucket(bucket);
      client = clientOf(s3);
      const seed = await startSeed(s3Env(s3, s3.endpoint, bucket));
      try {
        // 6 MiB: a multipart upload whose first part is sent before the digest is known.
        await seed.request(layer(3));
        await seed.seeds('failed', 1);
        const objects = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
        assert.deepEqual(objects.Contents ?? [], []);
        const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
        assert.deepEqual(uploads.Uploads ?? [], []);
        assert.deepEqual(await entries(join(seed.cacheDir, 'blobs')), []);
        assert.deepEqual(await entries(join(seed.cacheDir, 'tmp')), []);

        // A good blob is in the bucket once seeded (its copy finished in the background), read
        // from the origin once.
        const good = layer(1);
        await seed.request(good);
        await seed.seeds('seeded', 1);
        const hex = good.digest.split(':')[1] ?? '';
        let keys: string[] = [];
        const s3Client = client;
        await waitFor(
          'the gateway copy',
          async () => {
            const head = await s3Client.send(new ListObjectsV2Command({ Bucket: bucket }));
            keys = (head.Contents ?? []).map((o) => `${o.Key ?? ''} ${o.Size ?? -1}`);
            return keys.includes(`blobs/sha256/${hex} ${good.size}`);
          },
          { timeoutMs: WAIT_MS, intervalMs: 100 },
        ).catch(() => assert.fail(keys.join(', ')));
        await fetchAllPieces(seed.url, good);
      } finally {
        await seed.stop();
      }
    } finally {
      client?.destroy();
      await s3.stop();
    }
  });

  /**
   * A blob the object gateway holds, read by a seed server started afresh on the same gateway
   * (a new pod: its cache empty, `env` its settings) while the gateway meets `fault`. Returns
   * the origin's reads of the blob for that seed, and how long it took until seeded (ms).
   */
  const seedFromGateway = async (
    blob: Descriptor,
    fault: RegistryFault,
    env: Record<string, string>,
    check: (
      second: SeedUnderTest,
      outcome: { reads: RegistryRequest[]; tookMs: number },
    ) => Promise<void>,
  ): Promise<void> => {
    const first = await startSeedOnS3();
    let second: SeedUnderTest | undefined;
    try {
      await seedIntoGateway(first, blob);
      second = await startSeed({ ...first.gatewayEnv, ...env });
      first.gateway.set(fault);
      const originReads = (await registry.blobGets(blob.digest)).length;
      const startedAt = performance.now();
      await second.request(blob);
      await second.seeds('seeded', 1, fault.kind === 'silent' ? 'origin' : 'store');
      const tookMs = performance.now() - startedAt;
      first.gateway.set(undefined);
      // Every piece, checked against the blob's digest.
      await fetchAllPieces(second.url, blob);
      const reads = (await registry.blobGets(blob.digest)).slice(originReads);
      assert.equal(reads.length, 1, 'one origin read');
      assert.equal(await second.metric('shoal_seedserver_seeds_total', { outcome: 'failed' }), 0);
      await check(second, { reads, tookMs });
    } finally {
      await second?.stop();
      await first.stop();
    }
  };

  it("reads the rest of a blob from the origin when the object gateway's read of it breaks off", async () => {
    const blob = layer(1);
    const cutAt = MiB + 12_345;
    await seedFromGateway(
      blob,
      { kind: 'damage', how: 'cut', atByte: cutAt },
      {},
      async (second, { reads }) => {
        // Once, the rest only: from where the gateway stopped (at most at the cut: bytes the
        // proxy held when it cut are lost with the connection).
        const [sent = 0] = reads.map((r) => r.written);
        assert.ok(
          sent >= blob.size - cutAt && sent < blob.size,
          `the origin sent ${String(sent)} bytes of ${String(blob.size)}, cut at ${String(cutAt)}`,
        );
        assert.equal(await second.metric('shoal_seedserver_gateway_reads_continued_total'), 1);
      },
    );
  });

  it("gives up an object gateway's read that goes quiet part-way, and reads the rest from the origin", async () => {
    const blob = layer(1);
    const stallAt = MiB + 4_321;
    // The S3 client's own idle timeout is 30 s: the watch gives the read up well before.
    const env = { SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '3000' };
    await seedFromGateway(
      blob,
      { kind: 'damage', how: 'stall', atByte: stallAt },
      env,
      async (second, { reads, tookMs }) => {
        const [sent = 0] = reads.map((r) => r.written);
        assert.ok(
          sent >= blob.size - stallAt && sent < blob.size,
          `the origin sent ${String(sent)} bytes of ${String(blob.size)}, the gateway quiet from ${String(stallAt)}`,
        );
        assert.equal(await second.metric('shoal_seedserver_gateway_reads_continued_total'), 1);
        assert.ok(tookMs < 15_000, `seeded in ${String(Math.round(tookMs))} ms`);
      },
    );
  });

  it('reads a blob from the origin when the object gateway does not answer the read', async () => {
    const blob = layer(2);
    const env = { SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '3000' };
    const fault = { kind: 'silent', methods: ['GET', 'HEAD'] } as const;
    await seedFromGateway(blob, fault, env, async (second, { reads, tookMs }) => {
      // The whole blob, once; nothing carried on.
      assert.equal(reads[0]?.written, blob.size);
      assert.equal(await second.metric('shoal_seedserver_gateway_reads_continued_total'), 0);
      assert.equal(await second.metric('shoal_seedserver_gateway_failures_total'), 1);
      assert.ok(tookMs < 15_000, `seeded in ${String(Math.round(tookMs))} ms`);
    });
  });

  it('waits on a quiet object gateway while the registry holds the seed server off (429)', async () => {
    const blob = layer(2);
    const first = await startSeedOnS3();
    const origin = await startFaultProxy({ upstream: registry.url });
    let second: SeedUnderTest | undefined;
    try {
      await seedIntoGateway(first, blob);
      second = await startSeed({
        ...first.gatewayEnv,
        SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '1000',
        SHOAL_SEED_REGISTRIES: `${registry.host}=${origin.url}`,
      });
      // The registry rate-limits the seed server (a blob the gateway lacks meets its 429).
      origin.set({ kind: 'status', statuses: [429], retryAfterS: 60, methods: ['GET'] });
      await second.request(layer(1));
      await second.seeds('failed', 1);
      // Then the gateway is quiet for three times the watch's limit: the origin cannot be
      // asked, so the seed waits for the gateway rather than fail the blob.
      first.gateway.set({ kind: 'silent', methods: ['GET', 'HEAD'] });
      const healed = setTimeout(() => first.gateway.set(undefined), 3_000);
      try {
        await second.request(blob);
        await second.seeds('seeded', 1, 'store');
      } finally {
        clearTimeout(healed);
        first.gateway.set(undefined);
      }
      await fetchAllPieces(second.url, blob);
      assert.equal(await second.metric('shoal_seedserver_gateway_failures_total'), 0);
      assert.equal(
        origin.received().filter((r) => r.url.includes(blob.digest)).length,
        0,
        'the origin was not asked for the blob',
      );
    } finally {
      await second?.stop();
      await origin.stop();
      await first.stop();
    }
  });

  it('seeds from the origin without waiting on an object gateway that takes nothing, and its copy goes there once it is back', async () => {
    // Larger than a part: streamed to the gateway from the seed's file as the pieces land.
    const blob = layer(0);
    // Before, the seed waited this long on the gateway, then left its upload behind.
    const on = await startSeedOnS3({ SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '25000' });
    const { seed, gateway, stored, stop } = on;
    try {
      const readsBefore = (await registry.blobGets(blob.digest)).length;
      // Reads answered (the blob is not there); every upload left hanging.
      await seedPastGateway(on, blob, { kind: 'silent', methods: ['PUT', 'POST'] }, 15_000);
      assert.equal(await stored(blob), false, 'nothing in the gateway while it takes nothing');
      assert.equal(await seed.metric('shoal_seedserver_gateway_failures_total'), 0);
      gateway.set(undefined);
      // The upload goes on where it waited once the gateway takes bytes again.
      await waitFor('the gateway copy', () => stored(blob), {
        timeoutMs: WAIT_MS,
        intervalMs: 250,
      });
      assert.equal(await seed.metric('shoal_seedserver_gateway_failures_total'), 0);
      assert.equal(
        (await registry.blobGets(blob.digest)).length,
        readsBefore + 1,
        'read from the origin once',
      );
    } finally {
      await stop();
    }
  });

  it("seeds at the origin's pace whatever the object gateway's, which gets its copy at its own", async () => {
    // 32 MiB in 5 MiB parts: more than the S3 store holds in memory (four parts in flight and
    // a fifth filling), so a gateway that sets the pace would hold the seed back. One seed
    // (and so one upload) at a time.
    const slowDir = await makeTempDir('seed-test-slow-gateway');
    const on = await startSeedOnS3({
      SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: '25000',
      SHOAL_SEED_CONCURRENCY: '1',
    });
    const { seed, gateway, stored, stop } = on;
    try {
      const large = await generateImage(slowDir.path, {
        layerSizes: [32 * MiB],
        seed: 'seedserver-slow-gateway',
      });
      await pushImage(large, registry.host, REPOSITORY, { tag: 'slow-gateway' });
      const blob = large.layers[0];
      assert.ok(blob !== undefined);
      // Uploads at 3 MiB/s: the copy takes about 11 s. The four parts in flight share the
      // link, so the first is answered after about 6.5 s: a seed at the gateway's pace took at
      // least that long.
      const startedAt = await seedPastGateway(
        on,
        blob,
        { kind: 'slow', delayMs: 0, rateBytes: 3 * MiB, uploads: true },
        4_000,
      );
      assert.equal(await seed.metric('shoal_seedserver_gateway_uploads'), 1);
      // Another blob meanwhile: seeded at once, its copy owed (the one upload is busy) and
      // made from the file afterwards.
      const next = layer(1);
      await seed.request(next);
      await seed.seeds('seeded', 2, 'origin');
      assert.equal(await stored(next), false);
      await waitFor('the gateway copy', () => stored(blob), {
        timeoutMs: WAIT_MS,
        intervalMs: 250,
      });
      const copiedMs = performance.now() - startedAt;
      assert.ok(
        copiedMs > 8_000,
        `the copy went at the gateway's pace: ${String(Math.round(copiedMs))} ms`,
      );
      await waitFor('the owed copy', () => stored(next), { timeoutMs: WAIT_MS, intervalMs: 250 });
      await waitFor(
        'no upload left',
        async () => (await seed.metric('shoal_seedserver_gateway_uploads')) === 0,
        { timeoutMs: WAIT_MS, intervalMs: 100 },
      );
      assert.equal(await seed.metric('shoal_seedserver_gateway_failures_total'), 0);
      assert.equal((await registry.blobGets(blob.digest)).length, 1, 'read from the origin once');
    } finally {
      gateway.set(undefined);
      await stop();
      await slowDir.remove();
    }
  });

  it("makes a blob's gateway copy after a restart, from its cache, when it was not made before", async () => {
    const dir = await makeTempDir('seed-test-cut-copy');
    const on = await startSeedOnS3({}, dir.path);
    let second: SeedUnderTest | undefined;
    try {
      const blob = layer(2);
      const readsBefore = (await registry.blobGets(blob.digest)).length;
      // Seeded while the gateway refuses every upload; the seed server stops before its copy
      // is made (the seed was acked: its request is not asked again, and what a process owes
      // goes with it).
      on.gateway.set({ kind: 'status', statuses: [503], methods: ['PUT', 'POST'] });
      await on.seed.request(blob);
      await on.seed.seeds('seeded', 1, 'origin');
      await waitFor(
        'the copy refused',
        async () => (await on.seed.metric('shoal_seedserver_gateway_failures_total')) >= 1,
        { timeoutMs: WAIT_MS, intervalMs: 100 },
      );
      await on.seed.stop();
      on.gateway.set(undefined);
      assert.equal(await on.stored(blob), false);
      // Started again on the same cache: the blob's copy was never noted as made, so it is
      // checked for and made from the cache, nothing asked of the origin.
      second = await startSeed(on.gatewayEnv, dir.path);
      await waitFor('the copy made after the restart', () => on.stored(blob), {
        timeoutMs: WAIT_MS,
        intervalMs: 250,
      });
      assert.equal((await registry.blobGets(blob.digest)).length, readsBefore + 1);
    } finally {
      await second?.stop();
      await on.stop();
      await dir.remove();
    }
  });

  it('deletes the oldest blobs from the object gateway past its size limit, and keeps serving from its cache', async () => {
    const [a, b] = [layer(1), layer(2)];
    const seed = await startSeed({
      // A or B fits, A and B together do not.
      SHOAL_SEED_GATEWAY_MAX_BYTES: String(a.size + b.size - 1),
      SHOAL_SEED_GATEWAY_SWEEP_INTERVAL_MS: '1000',
    });
    try {
      await seed.request(a);
      await seed.seeds('seeded', 1);
      // Stored a moment later than A, so that A is the older one whatever the clock's grain.
      await new Promise((resolve) => setTimeout(resolve, 1100));
      await seed.request(b);
      await seed.seeds('seeded', 2);
      await waitFor(
        'a sweep deleted A',
        async () =>
          (await seed.metric('shoal_seedserver_gateway_deleted_blobs_total')) >= 1 &&
          (await seed.metric('shoal_seedserver_gateway_blobs')) === 1,
        { timeoutMs: WAIT_MS, intervalMs: 100 },
      );
      await assert.rejects(stat(storeFile(seed.storeDir, a)), { code: 'ENOENT' });
      assert.deepEqual(await entries(join(seed.storeDir, 'meta', ...a.digest.split(':'))), []);
      assert.equal((await stat(storeFile(seed.storeDir, b))).size, b.size);
      assert.equal(await seed.metric('shoal_seedserver_gateway_deleted_bytes_total'), a.size);
      assert.equal(await seed.metric('shoal_seedserver_gateway_bytes'), b.size);
      assert.equal(await seed.metric('shoal_seedserver_gateway_blobs'), 1);
      // The seed server's own cache has its own quota: A is still served from there.
      await fetchAllPieces(seed.url, a);
    } finally {
      await seed.stop();
    }
  });

  it('keeps no file open for a complete blob nobody is reading', async () => {
    // No rationing: this test reads the same pieces twice in a row.
    const seed = await startSeed({ SHOAL_SEED_PIECE_FANOUT: '0' });
    try {
      const blobs = [layer(0), layer(1), layer(2)];
      for (const [i, blob] of blobs.entries()) {
        await seed.request(blob);
        await seed.seeds('seeded', i + 1);
      }
      for (const blob of blobs) {
        await fetchAllPieces(seed.url, blob);
      }
      // Served pieces close their file once the last request ends; the next one opens it again.
      await waitFor(
        'no cached blob file open',
        async () => (await openFilesUnder(seed.cacheDir)).length === 0,
        { timeoutMs: WAIT_MS, intervalMs: 50 },
      );
      await fetchAllPieces(seed.url, layer(1));
    } finally {
      await seed.stop();
    }
  });

  it('serves every piece while NATS is down (nobody can hear who got one), and rations again once it is back', async () => {
    // One copy per piece, counted for a minute: the whole test runs inside the window.
    const seed = await startSeed({ SHOAL_SEED_FANOUT_WINDOW_MS: '60000' });
    let back: Promise<void> | undefined;
    try {
      const blob = layer(2);
      await seed.request(blob);
      await seed.seeds('seeded', 1);
      const askPiece = async (): Promise<number> => {
        const response = await fetch(`${seed.url}${piecePath(blob.digest, 0)}`, {
          signal: AbortSignal.timeout(WAIT_MS),
        });
        await response.arrayBuffer();
        return response.status;
      };
      const connected = (): Promise<number> => seed.metric('shoal_seedserver_nats_connected');
      assert.equal(await connected(), 1);
      assert.equal(await askPiece(), 200);
      assert.equal(await askPiece(), 429, 'rationed: the first copy counts for the window');

      back = seed.nats.crashAndRestart(4_000);
      // Awaited below; a restart that fails before then is not an unhandled rejection.
      back.catch(() => undefined);
      await waitFor('the seed server to see NATS down', async () => (await connected()) === 0, {
        timeoutMs: WAIT_MS,
        intervalMs: 50,
      });
      assert.equal(await askPiece(), 200, 'served while NATS is down');
      assert.equal(await askPiece(), 200, 'and again');
      await back;
      await waitFor('the seed server back on NATS', async () => (await connected()) === 1, {
        timeoutMs: WAIT_MS,
        intervalMs: 50,
      });
      assert.equal(await askPiece(), 429, 'rationed again, the copies sent meanwhile counted');
      assert.equal(
        await seed.metric('shoal_seedserver_piece_requests_total', { result: 'served' }),
        3,
      );
      assert.equal(
        await seed.metric('shoal_seedserver_piece_requests_total', { result: 'rationed' }),
        2,
      );
    } finally {
      // NATS back first, so that stopping does not race its restart (a restart that failed
      // has failed the test already, above: the seed server is stopped all the same).
      await back?.catch(() => undefined);
      await seed.stop();
    }
  });

  it('sends a rationed piece to the agent it went to, and to one that could not reach it', async () => {
    // One copy per piece, counted for a minute: the whole test runs inside the window.
    const seed = await startSeed({ SHOAL_SEED_FANOUT_WINDOW_MS: '60000' });
    try {
      const blob = layer(2);
      await seed.request(blob);
      await seed.seeds('seeded', 1);
      /** The pieces the last refusal named as refused too (`shoal-rationed`). */
      let named: number[] = [];
      const ask = async (peer: string, notFrom?: string, unheard?: string): Promise<number> => {
        const response = await fetch(`${seed.url}${piecePath(blob.digest, 0)}`, {
          headers: {
            [PIECE_PEER_HEADER]: peer,
            ...(notFrom === undefined ? {} : { [PIECE_NOT_FROM_HEADER]: notFrom }),
            ...(unheard === undefined ? {} : { [PIECE_UNHEARD_HEADER]: unheard }),
          },
          signal: AbortSignal.timeout(WAIT_MS),
        });
        await response.arrayBuffer();
        named = decodePieceBitmap(response.headers.get(PIECE_RATIONED_HEADER) ?? undefined);
        return response.status;
      };
      const exemptions = (reason: string): Promise<number> =>
        seed.metric('shoal_seedserver_ration_exemptions_total', { reason });

      assert.equal(await ask('agent-a'), 200);
      assert.deepEqual(named, [], 'a piece served names nothing');
      assert.equal(await ask('agent-b'), 429, 'rationed: agent-a got the piece');
      assert.deepEqual(named, [0], 'the refusal names what it refuses the asker: piece 0');
      // agent-a restarted and lost it: asked again, it gets it at once.
      assert.equal(await ask('agent-a'), 200, 'the agent that lost its copy gets it again');
      assert.equal(await ask('agent-b'), 429, 'its copies count for the others');
      // agent-a was killed for good: agent-b could not reach it.
      assert.equal(await ask('agent-b', 'agent-x,not an id!,agent-a'), 200);
      assert.equal(await ask('agent-c', 'agent-x'), 429, "agent-b's copy counts");
      assert.equal(await ask('agent-c', 'agent-a'), 429, 'agent-b can pass it on');
      // agent-c's wants go unanswered (no tracker reads them): it cannot learn who has it.
      assert.equal(await ask('agent-c', undefined, 'yes'), 429, 'only the value 1 says so');
      assert.equal(await ask('agent-c', undefined, '1'), 200, 'the swarm does not hear it');
      assert.equal(await ask('agent-d'), 429, "agent-c's copy counts too");
      assert.equal(await exemptions('asked-again'), 1);
      assert.equal(await exemptions('not-from'), 1);
      assert.equal(await exemptions('unheard'), 1);
    } finally {
      await seed.stop();
    }
  });

  it('evicts the least recently used blob past its quota, never one being served', async () => {
    const [a, b] = [layer(1), layer(2)];
    const seed = await startSeed({
      // A and B do not both fit.
      SHOAL_SEED_CACHE_MAX_BYTES: String(4 * MiB),
      // A 256 KiB piece takes three seconds: a request stays in flight meanwhile.
      SHOAL_SEED_UPLOAD_RATE_BYTES: String(64 * 1024),
      SHOAL_SEED_MAX_UPLOADS: '1',
    });
    try {
      await seed.request(a);
      await seed.seeds('seeded', 1);
      const originReads = (await registry.blobGets(a.digest)).length;

      // One piece of A being served; past the cap of one upload, the next gets 429.
      const serving = fetch(`${seed.url}${piecePath(a.digest, 0)}`, {
        signal: AbortSignal.timeout(WAIT_MS),
      });
      await waitFor(
        'an upload in flight',
        async () => (await seed.metric('shoal_seedserver_uploads_in_flight')) === 1,
        { timeoutMs: WAIT_MS, intervalMs: 20 },
      );
      const busy = await fetch(`${seed.url}${piecePath(a.digest, 1)}`);
      assert.equal(busy.status, 429);
      assert.equal(busy.headers.get('retry-after'), '1');
      await busy.body?.cancel();

      // B does not fit, but A is being served: both stay, over the quota for now.
      await seed.request(b);
      await seed.seeds('seeded', 2);
      await stat(cacheFile(seed.cacheDir, a));
      await stat(cacheFile(seed.cacheDir, b));
      assert.equal(await seed.metric('shoal_seedserver_cache_evicted_bytes_total'), 0);
      const piece = await serving;
      assert.equal(piece.status, 200);
      assert.equal((await piece.arrayBuffer()).byteLength, pieceSizeFor(a.size));

      // The next blob makes room: A, least recently used and no longer served, goes. The
      // gateway keeps its copy.
      await seed.request(image.config);
      await seed.seeds('seeded', 3);
      await assert.rejects(stat(cacheFile(seed.cacheDir, a)), { code: 'ENOENT' });
      await stat(cacheFile(seed.cacheDir, b));
      await stat(storeFile(seed.storeDir, a));
      assert.equal(await seed.metric('shoal_seedserver_cache_evicted_bytes_total'), a.size);
      assert.ok((await seed.metric('shoal_seedserver_cache_bytes')) <= 4 * MiB);
      const gone = await fetch(`${seed.url}${piecePath(a.digest, 0)}`);
      assert.equal(gone.status, 404);

      // Asked for again, A comes back from the gateway, not from the origin; B makes room.
      await seed.request(a);
      await seed.seeds('seeded', 1, 'store');
      await stat(cacheFile(seed.cacheDir, a));
      await assert.rejects(stat(cacheFile(seed.cacheDir, b)), { code: 'ENOENT' });
      assert.equal((await registry.blobGets(a.digest)).length, originReads);
      assert.ok((await seed.metric('shoal_seedserver_cache_bytes')) <= 4 * MiB);
    } finally {
      await seed.stop();
    }
  });

  it('closes a piece answer that outlives its deadline, and frees its upload slot', async () => {
    const a = layer(1);
    const seed = await startSeed({
      // A 256 KiB piece would take three seconds; the deadline is half a second.
      SHOAL_SEED_UPLOAD_RATE_BYTES: String(64 * 1024),
      SHOAL_SEED_UPLOAD_TIMEOUT_MS: '500',
      SHOAL_SEED_MAX_UPLOADS: '1',
    });
    try {
      await seed.request(a);
      await seed.seeds('seeded', 1);
      const started = Date.now();
      await assert.rejects(
        fetch(`${seed.url}${piecePath(a.digest, 0)}`, { signal: AbortSignal.timeout(WAIT_MS) }),
        (error: Error) => error.name === 'TypeError',
      );
      assert.ok(Date.now() - started < 2500, `closed after ${Date.now() - started} ms`);
      await waitFor(
        'the upload slot freed',
        async () => (await seed.metric('shoal_seedserver_uploads_in_flight')) === 0,
        { timeoutMs: WAIT_MS, intervalMs: 20 },
      );
    } finally {
      await seed.stop();
    }
  });

  it('evicts at start when the cache is over a smaller quota, oldest first', async () => {
    const [a, b] = [layer(1), layer(2)];
    const dir = await makeTempDir('seed-test-restart');
    try {
      const first = await startSeed({}, dir.path);
      try {
        await first.request(a);
        await first.seeds('seeded', 1);
        await first.request(b);
        await first.seeds('seeded', 2);
      } finally {
        await first.stop();
      }
      // Restarted with room for one of them: A, the older, goes; B stays and is served.
      const second = await startSeed({ SHOAL_SEED_CACHE_MAX_BYTES: String(4 * MiB) }, dir.path);
      try {
        await assert.rejects(stat(cacheFile(second.cacheDir, a)), { code: 'ENOENT' });
        await stat(storeFile(second.storeDir, a));
        assert.equal(await second.metric('shoal_seedserver_cache_bytes'), b.size);
        await fetchAllPieces(second.url, b);
      } finally {
        await second.stop();
      }
    } finally {
      await dir.remove();
    }
  });

  it('signs a record only for bytes that matched the digest, and republishes it from its manifest, never from a changed one', async () => {
    const a = layer(1);
    const dir = await makeTempDir('seed-test-record');
    const keys = await makeTempDir('seed-test-record-key');
    try {
      const keyEnv = { SHOAL_SEED_RECORD_KEY_FILE: await writeRecordPrivateKey(keys.path) };
      const publicKey = testRecordKeys().publicKey;
      const first = await startSeed(keyEnv, dir.path);
      let hashes: string[];
      try {
        await first.request(a);
        await first.seeds('seeded', 1);
        hashes = (await first.storedHashes(a)).hashes;
        await waitFor('the record', async () => (await first.record(a)) !== undefined);
        const record = await first.record(a);
        assert.ok(record !== undefined);
        assert.equal(record.hashes, pieceListDigest(hashes));
        assert.equal(verifyPiecesVerified(record, [publicKey]), true);
      } finally {
        await first.stop();
      }
      // Restarted (a new NATS here, as after losing its store): the record made at the commit
      // is published again as it was, with the hashes.
      const second = await startSeed(keyEnv, dir.path);
      let kept: PiecesVerified | undefined;
      try {
        await waitFor('the record again', async () => (await second.record(a)) !== undefined);
        kept = await second.record(a);
        // With the hashes it vouches for (a store lost: the stream no longer has them).
        assert.deepEqual((await second.storedHashes(a)).hashes, hashes);
        assert.equal(kept?.hashes, pieceListDigest(hashes));
      } finally {
        await second.stop();
      }
      // Restarted without the key, or with another one (rotated): the record the file keeps
      // is not published (no key vouches for it now), the hashes are.
      const otherKey = await makeTempDir('seed-test-record-other');
      try {
        const other = generateHandoutKeys();
        for (const env of [
          {},
          { SHOAL_SEED_RECORD_KEY_FILE: await writeRecordPrivateKey(otherKey.path, other) },
        ]) {
          const restarted = await startSeed(env, dir.path);
          try {
            assert.deepEqual((await restarted.storedHashes(a)).hashes, hashes);
            assert.equal(await restarted.record(a), undefined);
          } finally {
            await restarted.stop();
          }
        }
      } finally {
        await otherKey.remove();
      }
      // A manifest changed on disk since (one hash altered): its hashes still go out (agents
      // check pieces, and the whole blob, against them), but no record vouches for them, and
      // none is signed anew from the file.
      const manifestPath = `${cacheFile(join(dir.path, 'cache'), a)}.pieces.json`;
      const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { hashes: string[] };
      manifest.hashes[0] = '0'.repeat(64);
      await writeFile(manifestPath, JSON.stringify(manifest));
      const third = await startSeed(keyEnv, dir.path);
      try {
        await waitFor('the hashes', async () => (await third.hashMessages(a)) > 0, {
          timeoutMs: WAIT_MS,
        });
        assert.equal((await third.storedHashes(a)).hashes[0], '0'.repeat(64));
        assert.equal(await third.record(a), undefined);
      } finally {
        await third.stop();
      }
      // A manifest holding something that is no piece hash, or a size that is not its file's:
      // the blob is dropped at start (its file and manifest removed, no hashes announced: the
      // announcer publishes them without validating them again), and a request seeds it
      // afresh with its real hashes.
      const corruptions: [string, (m: { size: number; hashes: string[] }) => void][] = [
        ['a malformed hash', (m) => (m.hashes[1] = 'not a piece hash')],
        ['a size not its file', (m) => (m.size += 1)],
      ];
      for (const [what, corrupt] of corruptions) {
        const good = JSON.parse(await readFile(manifestPath, 'utf8')) as {
          size: number;
          hashes: string[];
        };
        corrupt(good);
        await writeFile(manifestPath, JSON.stringify(good));
        const restarted = await startSeed(keyEnv, dir.path);
        try {
          await assert.rejects(stat(manifestPath), { code: 'ENOENT' }, what);
          await assert.rejects(stat(cacheFile(join(dir.path, 'cache'), a)), { code: 'ENOENT' });
          assert.equal(await restarted.hashMessages(a), 0, what);
          await restarted.request(a);
          await restarted.seeds('seeded', 1);
          assert.deepEqual((await restarted.storedHashes(a)).hashes, hashes, what);
        } finally {
          await restarted.stop();
        }
      }
    } finally {
      await dir.remove();
      await keys.remove();
    }
  });

  it("publishes a held blob's hashes again when another replica's failed run left its notice in their place", async () => {
    const a = layer(1);
    const seed = await startSeed();
    try {
      await seed.request(a);
      await seed.seeds('seeded', 1);
      const { hashes } = await seed.storedHashes(a);
      // Another replica seeded the blob again and failed: its run removed every hash of the
      // subject and left a seed-failed notice, which agents take for the blob's end.
      await seed.jsm.streams.purge(STREAMS.pieces.name, { filter: pieceHashesSubject(a.digest) });
      await seed.js.publish(
        pieceHashesSubject(a.digest),
        encodeMessage(seedFailed, {
          type: 'seed-failed',
          blob: a.digest,
          seed: 'seed-other',
          reason: 'disk-full',
        }),
      );
      // A request for the blob this replica holds: its hashes are back, the notice gone.
      await seed.request(a);
      await waitFor(
        'the hashes again',
        async () => {
          const last = await seed.jsm.direct.getMessage(STREAMS.pieces.name, {
            last_by_subj: pieceHashesSubject(a.digest),
          });
          return last !== null && decodeMessage(pieceHashes, last.data).ok;
        },
        { timeoutMs: WAIT_MS },
      );
      assert.deepEqual((await seed.storedHashes(a)).hashes, hashes);
    } finally {
      await seed.stop();
    }
  });
});
