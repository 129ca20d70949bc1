/**
 * Brings a blob into the cluster once: from the object gateway when it is there, else from
 * the origin registry. Replicas coordinate through a lock in a JetStream KV bucket (with a
 * TTL, refreshed while the fetch runs), so many agents and several seed servers asking at the
 * same instant still cause one origin fetch.
 *
 * While the bytes arrive they are cut into pieces; each piece is written to disk, hashed and
 * announced (cut-through). At the end the whole blob is checked against its digest: a match
 * is committed locally and, when it came from the origin, stored in the object gateway with
 * its piece manifest; a mismatch is withdrawn from the swarm and dropped.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { BlobStore } from '@shoal/blobstore';
import {
  DigestHasher,
  parseDigest,
  pieceBounds,
  pieceHashesSubject,
  STREAMS,
  type Digest,
  type PeerInfo,
  type SeedRequest,
} from '@shoal/proto';
import { headerValue, type RegistryReader, type UpstreamRegistry } from '@shoal/registry';
import { ShoalError, SpanKind, withSpan, type Logger } from '@shoal/runtime';

import type { SeedMetrics } from '../metrics.js';
import { Announcer } from './announcer.js';
import { SeedBlob, type PieceManifest } from './seed-blob.js';

/** How often progress is announced while a blob streams in, in ms. */
const ANNOUNCE_INTERVAL_MS = 100;
/** How often the lock is refreshed and the request kept alive, in ms. */
const HEARTBEAT_INTERVAL_MS = 10_000;
/** Name of the piece manifest kept beside a blob in the object gateway. */
export const PIECES_META = 'pieces';

export type SeedOutcome = 'seeded' | 'held' | 'busy' | 'failed';

export class SeedError extends ShoalError<
  'ORIGIN_ANSWER' | 'NO_SIZE' | 'DIGEST_MISMATCH' | 'SIZE_MISMATCH' | 'UNKNOWN_REGISTRY'
> {
  override readonly name = 'SeedError';
}

export interface SeederDeps {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly locks: KV;
  readonly store: BlobStore;
  readonly origin: RegistryReader;
  readonly registries: ReadonlyMap<string, UpstreamRegistry>;
  readonly self: PeerInfo;
  readonly cacheDir: string;
  readonly metrics: SeedMetrics;
  readonly logger: Logger;
}

export class Seeder {
  readonly #deps: SeederDeps;
  readonly #blobs = new Map<string, SeedBlob>();
  readonly #running = new Map<string, Promise<SeedOutcome>>();
  /** Why the last failed run of a blob failed, for preheat reports. */
  readonly #failures = new Map<string, string>();

  constructor(deps: SeederDeps) {
    this.#deps = deps;
  }

  /** Creates the cache folders and re-announces the complete blobs found there. */
  async init(): Promise<void> {
    const { cacheDir, logger } = this.#deps;
    await rm(join(cacheDir, 'tmp'), { recursive: true, force: true });
    await mkdir(join(cacheDir, 'tmp'), { recursive: true });
    await mkdir(join(cacheDir, 'blobs'), { recursive: true });
    for (const name of await readdir(join(cacheDir, 'blobs'))) {
      if (name.endsWith('.pieces.json')) {
        continue;
      }
      const path = join(cacheDir, 'blobs', name);
      let blob: SeedBlob;
      try {
        const digest = parseDigest(name.replace('-', ':'));
        const manifest = JSON.parse(await readFile(`${path}.pieces.json`, 'utf8')) as PieceManifest;
        blob = await SeedBlob.load(digest, path, manifest);
      } catch (error) {
        logger.warn({ file: name, err: error }, 'dropping an unreadable cached blob');
        await rm(path, { force: true });
        await rm(`${path}.pieces.json`, { force: true });
        continue;
      }
      this.#blobs.set(blob.digest.toString(), blob);
      // NATS trouble here is not the blob's fault: keep it, a later request announces it.
      await this.#ensureHashesPublished(blob).catch((error: unknown) => {
        logger.warn(
          { blob: blob.digest.toString(), err: error },
          'could not announce a cached blob',
        );
      });
    }
  }

  /** The blob's local copy (complete or in progress), for serving pieces. */
  blob(digest: string): SeedBlob | undefined {
    return this.#blobs.get(digest);
  }

  /** Why the blob's last seeding failed, if it did. */
  failure(digest: string): string | undefined {
    return this.#failures.get(digest);
  }

  /** Seeds the blob a request names; one run per blob in this process. Never throws. */
  seed(request: SeedRequest, signal: AbortSignal, heartbeat: () => void): Promise<SeedOutcome> {
    const running = this.#running.get(request.blob);
    if (running !== undefined) {
      return running;
    }
    const run = this.#seed(request, signal, heartbeat).finally(() =>
      this.#running.delete(request.blob),
    );
    this.#running.set(request.blob, run);
    return run;
  }

  async #seed(
    request: SeedRequest,
    signal: AbortSignal,
    heartbeat: () => void,
  ): Promise<SeedOutcome> {
    const { locks, self, logger, metrics } = this.#deps;
    const digest = parseDigest(request.blob);
    const held = this.#blobs.get(request.blob);
    if (held?.complete === true) {
      try {
        await this.#ensureHashesPublished(held);
        await this.#ensureStored(held, signal);
      } catch (error) {
        this.#failures.set(request.blob, errorText(error));
        logger.warn({ blob: request.blob, err: error }, 'could not announce or store a held blob');
        return 'failed';
      }
      return 'held';
    }
    const lockKey = `${digest.algorithm}.${digest.hex}`;
    if (!(await this.#takeLock(lockKey))) {
      // Another replica is seeding it and will announce it.
      metrics.seeds.inc({ source: 'none', outcome: 'busy' });
      return 'busy';
    }
    const timer = setInterval(() => {
      heartbeat();
      locks
        .put(lockKey, JSON.stringify({ owner: self.id, at: Date.now() }))
        .catch((error: unknown) => {
          logger.warn({ err: error, blob: request.blob }, 'could not refresh the seed lock');
        });
    }, HEARTBEAT_INTERVAL_MS);
    metrics.inFlight.inc();
    let source: 'store' | 'origin' = 'origin';
    try {
      // One span for reading the blob in (origin or object gateway), cut into pieces and verified.
      const opened = await withSpan(
        'seed fetch',
        { attributes: { 'oci.digest': request.blob, 'oci.registry': request.registry } },
        async (span) => {
          const bytes = await this.#open(request, digest, signal);
          span.setAttributes({ 'shoal.source': bytes.source, 'shoal.size': bytes.size });
          const ingested = await this.#ingest(digest, bytes.size, bytes.body, bytes.source);
          return { ...ingested, source: bytes.source };
        },
      );
      source = opened.source;
      await this.#announceAndStore(opened.blob, opened.announcer, source, signal);
      metrics.seeds.inc({ source, outcome: 'seeded' });
      this.#failures.delete(request.blob);
      return 'seeded';
    } catch (error) {
      metrics.seeds.inc({ source, outcome: 'failed' });
      this.#failures.set(request.blob, errorText(error));
      logger.warn({ blob: request.blob, registry: request.registry, err: error }, 'seeding failed');
      return 'failed';
    } finally {
      clearInterval(timer);
      metrics.inFlight.dec();
      await locks.delete(lockKey).catch(() => undefined);
    }
  }

  /**
   * Takes the blob's seed lock. A lock in this seed's own name is left from before a restart
   * (this process runs one seed per blob, and it is not running this one): it is taken over
   * rather than waited out.
   */
  async #takeLock(key: string): Promise<boolean> {
    const { locks, self } = this.#deps;
    const value = JSON.stringify({ owner: self.id, at: Date.now() });
    try {
      await locks.create(key, value);
      return true;
    } catch {
      const held = await locks.get(key).catch(() => null);
      if (held === null || held.operation !== 'PUT') {
        return false;
      }
      const owner = held.json<{ owner?: unknown }>().owner;
      if (owner !== self.id) {
        return false;
      }
      try {
        await locks.update(key, value, held.revision);
        return true;
      } catch {
        return false;
      }
    }
  }

  /** The blob's bytes: from the object gateway when it holds them, else from the origin. */
  async #open(
    request: SeedRequest,
    digest: Digest,
    signal: AbortSignal,
  ): Promise<{ body: Readable; size: number; source: 'store' | 'origin' }> {
    const { store, origin, registries } = this.#deps;
    const stored = await store.stat(request.blob, signal);
    if (stored !== undefined) {
      return {
        body: await store.read(request.blob, undefined, signal),
        size: stored.size,
        source: 'store',
      };
    }
    const registry = registries.get(request.registry);
    if (registry === undefined) {
      throw new SeedError(
        'UNKNOWN_REGISTRY',
        400,
        `registry ${request.registry} is not configured`,
      );
    }
    // Ends at the response headers; the body is read by the seed fetch span around it.
    const response = await withSpan(
      'origin GET blob',
      {
        kind: SpanKind.CLIENT,
        attributes: { 'oci.registry': registry.host, 'oci.repository': request.repository },
      },
      async (span) => {
        const answer = await origin.fetchBlob(registry, request.repository, digest, signal);
        span.setAttribute('http.response.status_code', answer.status);
        return answer;
      },
    );
    if (response.status !== 200) {
      response.body.resume();
      throw new SeedError('ORIGIN_ANSWER', 502, `origin answered ${response.status}`);
    }
    const length = headerValue(response.headers, 'content-length');
    if (length === undefined) {
      response.body.resume();
      throw new SeedError('NO_SIZE', 502, 'origin sent no Content-Length');
    }
    return { body: response.body, size: Number(length), source: 'origin' };
  }

  /** Cuts the stream into pieces on disk, announcing them; verifies and commits. */
  async #ingest(
    digest: Digest,
    size: number,
    body: Readable,
    source: 'store' | 'origin',
  ): Promise<{ blob: SeedBlob; announcer: Announcer }> {
    const { cacheDir, js, self, metrics } = this.#deps;
    const key = digest.toString();
    const temp = join(cacheDir, 'tmp', `${digest.algorithm}-${digest.hex}`);
    const blob = await SeedBlob.create(digest, size, temp);
    this.#blobs.set(key, blob);
    const announcer = new Announcer(js, self, blob);
    const whole = new DigestHasher(digest.algorithm);
    let offset = 0;
    let piece = createHash('sha256');
    let pieceEnd = pieceBounds(0, size, blob.pieceSize).end;
    const ticker = setInterval(
      () => void announcer.flush().catch(() => undefined),
      ANNOUNCE_INTERVAL_MS,
    );
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        let rest = chunk;
        if (offset + rest.length > size) {
          throw new SeedError('SIZE_MISMATCH', 502, `${key}: more than ${size} bytes`);
        }
        whole.update(rest);
        await blob.write(offset, rest);
        metrics.ingestedBytes.inc({ source }, rest.length);
        // Hash piece by piece; a chunk may end one piece and start the next.
        while (rest.length > 0) {
          const take = Math.min(rest.length, pieceEnd - offset);
          piece.update(rest.subarray(0, take));
          offset += take;
          rest = rest.subarray(take);
          if (offset === pieceEnd) {
            blob.pieceDone(piece.digest('hex'));
            piece = createHash('sha256');
            pieceEnd =
              blob.ready < blob.count ? pieceBounds(blob.ready, size, blob.pieceSize).end : size;
          }
        }
      }
      if (size === 0) {
        blob.pieceDone(piece.digest('hex'));
      }
      if (offset !== size) {
        throw new SeedError('SIZE_MISMATCH', 502, `${key}: ${offset} of ${size} bytes`);
      }
      if (whole.digest().toString() !== key) {
        throw new SeedError('DIGEST_MISMATCH', 502, `${key}: the bytes do not match the digest`);
      }
      clearInterval(ticker);
      const finalPath = join(cacheDir, 'blobs', `${digest.algorithm}-${digest.hex}`);
      await blob.commit(finalPath);
      return { blob, announcer };
    } catch (error) {
      // Nothing verified: withdraw what was announced and drop the file.
      clearInterval(ticker);
      body.destroy();
      if (this.#blobs.get(key) === blob) {
        this.#blobs.delete(key);
      }
      await announcer.withdraw().catch(() => undefined);
      await blob.discard();
      throw error;
    }
  }

  /**
   * After a verified commit: the last announcement and, for a blob from the origin, the copy
   * in the object gateway. A failure here (NATS, the gateway) leaves the blob held and served;
   * the next request for it tries the rest again.
   */
  async #announceAndStore(
    blob: SeedBlob,
    announcer: Announcer,
    source: 'store' | 'origin',
    signal: AbortSignal,
  ): Promise<void> {
    await announcer.flush();
    if (source === 'origin') {
      await this.#store(blob, signal);
    }
  }

  /**
   * Stores a held blob in the object gateway if it is not there: a blob committed locally
   * whose upload failed is completed by the next request for it.
   */
  async #ensureStored(blob: SeedBlob, signal: AbortSignal): Promise<void> {
    if ((await this.#deps.store.stat(blob.digest.toString(), signal)) === undefined) {
      await this.#store(blob, signal);
    }
  }

  /** Writes a verified blob and its piece manifest to the object gateway. */
  async #store(blob: SeedBlob, signal: AbortSignal): Promise<void> {
    const { store, metrics } = this.#deps;
    const key = blob.digest.toString();
    const { size } = blob;
    await withSpan(
      'gateway write',
      { kind: SpanKind.CLIENT, attributes: { 'oci.digest': key, 'shoal.size': size } },
      async () => {
        await store.write(key, createReadStream(blob.path), size, signal);
        await store.putMeta(key, PIECES_META, Buffer.from(JSON.stringify(blob.manifest)), signal);
      },
    );
    metrics.storedBytes.inc(size);
  }

  /** Re-publishes a held blob's hashes if the hashes stream no longer has them. */
  async #ensureHashesPublished(blob: SeedBlob): Promise<void> {
    const announcer = new Announcer(this.#deps.js, this.#deps.self, blob);
    try {
      await this.#deps.jsm.streams.getMessage(STREAMS.pieces.name, {
        last_by_subj: pieceHashesSubject(blob.digest.toString()),
      });
    } catch {
      // The stream no longer has them (its age limit): publish them again, then the have.
      await announcer.republish();
      return;
    }
    announcer.hashesAlreadyPublished();
    await announcer.flush();
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.#running.values());
    for (const blob of this.#blobs.values()) {
      await blob.close();
    }
  }
}

/** An error's message, for a report to the operator. */
function errorText(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).slice(0, 1024);
}
