/**
 * What one blob costs the seed server: CPU seconds per GiB and disk bytes per byte, from the
 * seed process's /proc/PID/stat and /proc/PID/io, for one ingest from the origin (into the
 * object gateway) and every piece served once.
 *
 *   node services/seedserver/dist/tools/cost-per-byte.js [--size-mib 256] [--rounds 1]
 *     [--store fs|s3] [name=path/to/seedserver/main.js ...]
 *
 * Each `name=main.js` is a seed server build to measure (default: this one, as `current`);
 * pass an older build's main.js (`tools/build-at.sh <commit> <dir>` makes one) to compare two
 * builds on the same machine in the same run.
 * The registry (Debian's docker-registry) and the blob are shared; every round of every build
 * gets a fresh nats-server, cache and store. The registry's own CPU per GiB for the same bytes
 * is printed as the yardstick of a direct pull.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { connect } from '@nats-io/transport-node';
import {
  encodeMessage,
  pieceCount,
  piecePath,
  pieceSizeFor,
  seedRequest,
  seedRequestSubject,
  STREAMS,
} from '@shoal/proto';
import { ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import {
  freePort,
  generateImage,
  makeTempDir,
  procCostBetween,
  pushImage,
  ratio,
  readProcCost,
  scrapeMetrics,
  serviceMain,
  startNats,
  startProcess,
  startRegistry,
  startS3,
  table,
  waitFor,
  type ProcCost,
  type Registry,
  type S3Server,
} from '@shoal/testkit';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const REPOSITORY = 'shoal/cost';
/** Pieces fetched at once while serving. */
const SERVE_CONCURRENCY = 4;

interface RoundResult {
  readonly name: string;
  readonly ingest: ProcCost;
  readonly serve: ProcCost;
  readonly ingestSeconds: number;
  readonly serveSeconds: number;
  readonly registryCpuSeconds: number;
}

async function measure(
  name: string,
  main: string,
  registry: Registry,
  blob: { digest: string; size: number },
  storeEnv: (dir: string) => Promise<Record<string, string>>,
): Promise<RoundResult> {
  const nats = await startNats();
  const dir = await makeTempDir('seed-cost');
  const port = await freePort();
  const seedId = `seed-${port}`;
  const proc = startProcess(process.execPath, [main], {
    logPath: join(dir.path, 'seedserver.log'),
    env: {
      PATH: process.env.PATH ?? '',
      SHOAL_LOG_LEVEL: 'info',
      SHOAL_NATS_URL: nats.url,
      SHOAL_SEED_LISTEN: `127.0.0.1:${port}`,
      SHOAL_SEED_URL: `http://127.0.0.1:${port}`,
      SHOAL_SEED_ID: seedId,
      SHOAL_SEED_REGISTRIES: `${registry.host}=${registry.url}`,
      SHOAL_SEED_CACHE_DIR: join(dir.path, 'cache'),
      // Pieces are read here without hand-out tokens (builds before them ignore this).
      SHOAL_SEED_PIECE_AUTH: 'off',
      ...(await storeEnv(dir.path)),
    },
  });
  const url = `http://127.0.0.1:${port}`;
  const nc = await connect({ servers: nats.url });
  const { js, jsm } = await jetStreamFor(nc);
  // The trackers own the swarm stream the seed announces on; none runs here.
  await ensureStreams(jsm, [STREAMS.swarm], 1);
  try {
    await waitFor('seed server /readyz', async () => (await fetch(`${url}/readyz`)).ok, {
      process: proc,
      timeoutMs: 30_000,
    });
    const pid = proc.child.pid ?? 0;
    const registryPid = registry.process.child.pid ?? 0;
    const registryBefore = await readProcCost(registryPid);
    const before = await readProcCost(pid);
    const started = performance.now();
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
    await waitFor(
      'the blob seeded',
      async () =>
        (await scrapeMetrics(url)).get('shoal_seedserver_seeds_total', { outcome: 'seeded' }) >= 1,
      { process: proc, timeoutMs: 120_000, intervalMs: 250 },
    );
    const ingestSeconds = (performance.now() - started) / 1000;
    const seeded = await readProcCost(pid);
    const registryAfter = await readProcCost(registryPid);

    const count = pieceCount(blob.size, pieceSizeFor(blob.size));
    let next = 0;
    let served = 0;
    const serveStarted = performance.now();
    const worker = async (): Promise<void> => {
      while (next < count) {
        const index = next++;
        const response = await fetch(`${url}${piecePath(blob.digest, index)}`, {
          signal: AbortSignal.timeout(60_000),
        });
        if (!response.ok) {
          throw new Error(`piece ${index}: HTTP ${response.status}`);
        }
        const bytes = await response.arrayBuffer();
        served += bytes.byteLength;
      }
    };
    await Promise.all(Array.from({ length: SERVE_CONCURRENCY }, worker));
    const serveSeconds = (performance.now() - serveStarted) / 1000;
    if (served !== blob.size) {
      throw new Error(`served ${served} bytes of ${blob.size}`);
    }
    const after = await readProcCost(pid);
    return {
      name,
      ingest: procCostBetween(before, seeded),
      serve: procCostBetween(seeded, after),
      ingestSeconds,
      serveSeconds,
      registryCpuSeconds: registryAfter.cpuSeconds - registryBefore.cpuSeconds,
    };
  } catch (error) {
    const log = await readFile(proc.logPath, 'utf8').catch(() => '');
    throw new Error(`${name}: ${(error as Error).message}\n${log.slice(-4000)}`, { cause: error });
  } finally {
    await nc.close();
    await proc.stop();
    await nats.stop();
    await dir.remove();
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'size-mib': { type: 'string', default: '256' },
      rounds: { type: 'string', default: '1' },
      store: { type: 'string', default: 'fs' },
    },
  });
  const size = Number(values['size-mib']) * MiB;
  const rounds = Number(values.rounds);
  const builds = (
    positionals.length > 0 ? positionals : [`current=${serviceMain('seedserver')}`]
  ).map((arg) => {
    const at = arg.indexOf('=');
    return { name: arg.slice(0, at), main: resolve(arg.slice(at + 1)) };
  });

  const registry = await startRegistry();
  const layout = await makeTempDir('seed-cost-image');
  let s3: S3Server | undefined;
  try {
    const image = await generateImage(layout.path, { layerSizes: [size], seed: 'seed-cost' });
    await pushImage(image, registry.host, REPOSITORY);
    const layer = image.layers[0];
    if (layer === undefined) {
      throw new Error('no layer generated');
    }
    let storeEnv = (dir: string): Promise<Record<string, string>> =>
      Promise.resolve({ SHOAL_STORE_DIR: join(dir, 'store') });
    if (values.store === 's3') {
      const server = await startS3();
      s3 = server;
      let bucket = 0;
      storeEnv = async () => {
        const name = `cost-${++bucket}`;
        await server.createBucket(name);
        return {
          SHOAL_STORE_KIND: 's3',
          SHOAL_S3_ENDPOINT: server.endpoint,
          SHOAL_S3_REGION: server.region,
          SHOAL_S3_BUCKET: name,
          SHOAL_S3_ACCESS_KEY_ID: server.accessKeyId,
          SHOAL_S3_SECRET_ACCESS_KEY: server.secretAccessKey,
        };
      };
    }
    const results: RoundResult[] = [];
    for (let round = 0; round < rounds; round++) {
      for (const build of builds) {
        const result = await measure(build.name, build.main, registry, layer, storeEnv);
        results.push(result);
        process.stderr.write(`${build.name} round ${round + 1}: done\n`);
      }
    }
    const gib = size / GiB;
    const rows = results.map((r) => {
      const total = r.ingest.cpuSeconds + r.serve.cpuSeconds;
      return [
        r.name,
        ratio(r.ingest.cpuSeconds / gib),
        ratio(r.serve.cpuSeconds / gib),
        ratio(total / gib),
        ratio((r.ingest.writeBytes + r.serve.writeBytes) / size),
        ratio((r.ingest.wchar + r.serve.wchar) / size),
        ratio((r.ingest.readBytes + r.serve.readBytes) / size),
        String(r.ingest.syscw + r.serve.syscw),
        String(r.ingest.syscr + r.serve.syscr),
        ratio(r.ingestSeconds),
        ratio(r.serveSeconds),
        ratio(r.registryCpuSeconds / gib),
      ];
    });
    process.stdout.write(
      `seed server cost, ${values['size-mib']} MiB blob, ${values.store} store, ${rounds} round(s)\n`,
    );
    process.stdout.write(
      `${table(
        [
          'build',
          'ingest CPU s/GiB',
          'serve CPU s/GiB',
          'total CPU s/GiB',
          'disk write B/B',
          'wchar B/B',
          'disk read B/B',
          'write calls',
          'read calls',
          'ingest s',
          'serve s',
          'registry CPU s/GiB',
        ],
        rows,
      )}\n`,
    );
  } finally {
    await s3?.stop();
    await layout.remove();
    await registry.stop();
  }
}

await main();
