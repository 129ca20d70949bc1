/**
 * Brings a blob into the cluster once: from the object gateway when it is there, else from
 * the origin registry. Replicas coordinate through a lock in a JetStream KV bucket (with a
 * TTL, refreshed while the fetch runs), so many agents and several seed servers asking at the
 * same instant still cause one origin fetch.
 *
 * The bytes are read once (see ingest.ts): while they arrive they are cut into pieces, hashed,
 * written to disk in large writes and announced (cut-through), and streamed on to an object
 * gateway that cannot take the local file. At the end the whole blob is checked against its
 * digest: a match is committed locally and, when it came from the origin, stored in the object
 * gateway with its piece manifest (the filesystem gateway hard-links the committed file: one
 * copy on disk); a mismatch is withdrawn from the swarm and nothing of it is kept anywhere.
 *
 * The local copies live under a quota (`SeedCache`): past it the least recently used blobs
 * the gateway keeps are evicted, never one being served or seeded; a later request for one
 * brings it back from the gateway. The disk itself is looked at too (statfs): before an
 * ingest, and once more if a write fails with ENOSPC, idle blobs are evicted until the blob
 * fits with `cacheMinFreeBytes` to spare. When it cannot fit, the seed fails at once and says
 * so on the blob's hash subject (`seed-failed`), so that agents read from the origin (or
 * their peers) now rather than after their stall timeout.
 */
import type { KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { BlobStore } from '@shoal/blobstore';
import { freeDiskBytes, isDiskFull } from '@shoal/pieces';
import {
  decodeMessage,
  encodeMessage,
  MAX_BLOB_BYTES,
  parseDigest,
  peerGone,
  peerGoneSubject,
  pieceHashes,
  pieceHashesSubject,
  seedFailed,
  STREAMS,
  type Digest,
  type PeerInfo,
  type SeedFailureReason,
  type SeedRequest,
} from '@shoal/proto';
import {
  isUnreachable,
  RateLimitHolds,
  type LimitedRequest,
  RealmError,
  refusalAdvice,
  type BlobReader,
  type OpenedBlob,
  type RegistryAuth,
  type UpstreamRegistry,
  ResumeRefusedError,
  resumingBody,
} from '@shoal/registry';
import { markSpan, ShoalError, SpanKind, withSpan, type Logger } from '@shoal/runtime';

import type { SeedMetrics } from '../metrics.js';
import { Announcer } from './announcer.js';
import { FailureNotes } from './failures.js';
import { GatewayWatch } from './gateway-watch.js';
import { IntakeNotices } from './intake-notices.js';
import { GatewayUpload, PieceCutter } from './ingest.js';
import { SeedBlob, type PieceManifest } from './seed-blob.js';
import { SeedCache } from './seed-cache.js';

/** How often the lock is refreshed and the request kept alive, in ms. */
const HEARTBEAT_INTERVAL_MS = 10_000;
/**
 * Wait before a gateway copy that failed is tried again while the breaker is closed, in ms:
 * a gateway that answered one 503 (an S3 SlowDown) is given a moment, not hammered.
 */
const GATEWAY_RETRY_MS = 2_000;

/** A gateway request reads (stat, read) or writes (upload, piece manifest). */
type GatewayUse = 'read' | 'write';

/** A held blob owed its gateway copy: due at `dueAt`, after a wait of `retryMs`. */
interface OwedCopy {
  readonly blob: SeedBlob;
  readonly retryMs: number;
  readonly dueAt: number;
}

/**
 * HTTP statuses of a gateway that will go on refusing until someone acts (403: no permission
 * such as s3:PutObject; 507: MinIO out of space), and errno codes of a filesystem gateway
 * likewise (out of space, over quota, not writable): asking again in 2 s changes nothing.
 */
const REFUSAL_STATUSES = new Set([403, 507]);
const REFUSAL_CODES = new Set(['ENOSPC', 'EDQUOT', 'EACCES', 'EPERM', 'EROFS']);

/** The permanent refusal in `error` or its causes (an S3 status, an errno code), if any. */
function gatewayRefusal(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 8 && typeof current === 'object' && current !== null; depth += 1) {
    if ('code' in current && typeof current.code === 'string' && REFUSAL_CODES.has(current.code)) {
      return current.code;
    }
    if (
      '$metadata' in current &&
      typeof current.$metadata === 'object' &&
      current.$metadata !== null &&
      'httpStatusCode' in current.$metadata &&
      typeof current.$metadata.httpStatusCode === 'number' &&
      REFUSAL_STATUSES.has(current.$metadata.httpStatusCode)
    ) {
      return `HTTP ${current.$metadata.httpStatusCode}`;
    }
    current = 'cause' in current ? current.cause : undefined;
  }
  return undefined;
}

/** Name of the piece manifest kept beside a blob in the object gateway. */
export const PIECES_META = 'pieces';

export type SeedOutcome = 'seeded' | 'held' | 'busy' | 'failed';

export class SeedError extends ShoalError<
  | 'ORIGIN_ANSWER'
  | 'NO_SIZE'
  | 'TOO_LARGE'
  | 'DIGEST_MISMATCH'
  | 'SIZE_MISMATCH'
  | 'UNKNOWN_REGISTRY'
  | 'NO_ROOM'
> {
  override readonly name = 'SeedError';
}

/** Where the seed server's registry credentials are set. */
const SEED_CREDENTIALS = {
  dockerConfig: 'SHOAL_SEED_DOCKER_CONFIG',
  trustedRealms: 'SHOAL_SEED_TRUSTED_REALMS',
} as const;

export interface SeederDeps {
  /** Core NATS, for the intake notices (`IntakeNotices`: not stored). */
  readonly nc: Pick<NatsConnection, 'publish'>;
  /** How often a blob coming in is looked at for an intake notice, in ms. */
  readonly intakeNoticeMs: number;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly locks: KV;
  readonly store: BlobStore;
  /** Reads blobs from the origin registries, into blocks it reuses. */
  readonly origin: BlobReader;
  /** The origin reader's credentials: why a registry refused them. */
  readonly originAuth: Pick<RegistryAuth, 'refusal'>;
  readonly registries: ReadonlyMap<string, UpstreamRegistry>;
  readonly self: PeerInfo;
  /** Signs each verified blob's `pieces-verified` record; none published without it. */
  readonly recordKey?: KeyObject | undefined;
  readonly cacheDir: string;
  /** The local cache's quota in bytes; past it least recently used blobs are evicted. */
  readonly cacheMaxBytes: number;
  /**
   * Free space kept on the cache's disk, in bytes: a blob is seeded only if it fits with this
   * much to spare, once idle blobs are evicted (0: only what the blob itself needs).
   */
  readonly cacheMinFreeBytes: number;
  /**
   * The object gateway breaker: after `failures` gateway requests in a row failed, the gateway
   * is not asked for `breakMs` (a gateway that hangs would otherwise cost every seed its
   * request timeout before the origin is read, and a failing one a request per seed). One
   * failure alone (an S3 SlowDown, a restart) does not open it: any success starts the count
   * again.
   */
  readonly gatewayBreaker: { readonly failures: number; readonly breakMs: number };
  /**
   * Longest wait on the object gateway's read during a seed, in ms: for an answer, or for the
   * next bytes of a body (`GatewayWatch`: past it the read counts as failed, and the origin is
   * read instead). Its uploads are never waited on (`GatewayUpload`), but for the abort of
   * one when a seed fails.
   */
  readonly gatewayIdleMs: number;
  /**
   * Copies streamed to an S3 gateway at once (`GatewayUpload`, each holding its part buffers);
   * a blob seeded while they are all busy has its copy made afterwards from the local file.
   */
  readonly maxUploads: number;
  readonly metrics: SeedMetrics;
  readonly logger: Logger;
}

export class Seeder {
  readonly #deps: SeederDeps;
  readonly #cache: SeedCache;
  /** Evictions run one at a time. */
  #evicting: Promise<void> = Promise.resolve();
  #overQuotaLogged = false;
  /** Bytes of ingests that passed the disk check and are not in the cache yet. */
  #reserved = 0;
  readonly #running = new Map<string, Promise<SeedOutcome>>();
  /** Until when (ms since the epoch) the object gateway is not asked: see `gatewayBreaker`. */
  #gatewayBrokenUntil = 0;
  /**
   * Gateway requests of each kind that failed since the last of that kind that succeeded or
   * the breaker opened: a read that succeeds says nothing of writes (a gateway out of space).
   */
  readonly #gatewayFailuresInRow: Record<GatewayUse, number> = { read: 0, write: 0 };
  /**
   * The kind of failure that opened the breaker, until it closes: once the break is over the
   * breaker is half-open, and a success of that kind closes it, any failure reopens it.
   */
  #gatewayOpenedBy: GatewayUse | undefined;
  /**
   * Held blobs owed their gateway copy because the gateway was left alone when they came in:
   * copied one at a time once the break is over (`#copyOwed`), whether or not anyone asks for
   * them again (nobody may: the agents get them from each other).
   */
  readonly #owed = new Map<string, OwedCopy>();
  /** Copies streamed to the gateway now (`GatewayUpload`): at most `maxUploads`. */
  #uploads = 0;
  #owedTimer: NodeJS.Timeout | undefined;
  /** `#copyOwed` is running: one at a time, it sets the next timer when done. */
  #copyingOwed = false;
  /** Aborted by `close`: ends the copies owed to the gateway. */
  readonly #closing = new AbortController();
  /** Held blobs whose copy in the gateway is being written in the background. */
  readonly #storing = new Set<string>();
  /** Why the last failed run of a blob failed, for preheat reports. */
  readonly #failures = new FailureNotes();
  /**
   * Registries' 429s with Retry-After (the seed server's own credentials: one allowance per
   * registry), honoured until they pass.
   */
  readonly #rateLimits: RateLimitHolds;

  constructor(deps: SeederDeps) {
    this.#deps = deps;
    this.#rateLimits = new RateLimitHolds({
      count: (registry, outcome) => deps.metrics.originRateLimited.inc({ registry, outcome }),
    });
    this.#cache = new SeedCache(deps.cacheMaxBytes);
  }

  /**
   * Withdraws what an earlier seed server with this id claimed, creates the cache folders and
   * re-announces the complete blobs found there.
   */
  async init(): Promise<void> {
    const { cacheDir, logger, js, self } = this.#deps;
    // A seed server that comes back under the same id (a StatefulSet pod restarted, or moved to
    // another node with a new cache) must not be handed out for blobs it no longer holds:
    // agents would ask it for pieces it cannot serve and, stalled, read from the origin.
    // Leaving every swarm first, then announcing the cache, keeps the tracker's view (and its
    // replay of the stream) to what this server holds.
    await js
      .publish(
        peerGoneSubject(self.id),
        encodeMessage(peerGone, { type: 'peer-gone', peer: self.id }),
      )
      .catch((error: unknown) => {
        logger.warn({ err: error }, 'could not withdraw what an earlier run of this seed id held');
      });
    await rm(join(cacheDir, 'tmp'), { recursive: true, force: true });
    await mkdir(join(cacheDir, 'tmp'), { recursive: true });
    await mkdir(join(cacheDir, 'blobs'), { recursive: true });
    // Least recently written first, so that the quota evicts the oldest first.
    const found: { name: string; at: number }[] = [];
    for (const name of await readdir(join(cacheDir, 'blobs'))) {
      if (!name.endsWith('.pieces.json')) {
        const at = await stat(join(cacheDir, 'blobs', name)).then(
          (s) => s.mtimeMs,
          () => 0,
        );
        found.push({ name, at });
      }
    }
    found.sort((a, b) => a.at - b.at);
    for (const { name } of found) {
      const path = join(cacheDir, 'blobs', name);
      let blob: SeedBlob;
      try {
        const digest = parseDigest(name.replace('-', ':'));
        const manifest = JSON.parse(await readFile(`${path}.pieces.json`, 'utf8')) as PieceManifest;
        blob = await SeedBlob.load(digest, path, manifest, this.#deps.recordKey);
      } catch (error) {
        logger.warn({ file: name, err: error }, 'dropping an unreadable cached blob');
        await rm(path, { force: true });
        await rm(`${path}.pieces.json`, { force: true });
        continue;
      }
      this.#cache.add(blob);
      if (blob.stored !== true) {
        // Its gateway copy was not known to be made (cut short by a stop or a crash, or an
        // earlier version's cache): checked for, and made, in the background.
        this.#owe(blob);
      }
      // NATS trouble here is not the blob's fault: keep it, a later request announces it.
      await this.#ensureHashesPublished(blob).catch((error: unknown) => {
        logger.warn(
          { blob: blob.digest.toString(), err: error },
          'could not announce a cached blob',
        );
      });
    }
    this.#reportCache();
    // The quota may have shrunk since these were written.
    await this.#makeRoom(0);
  }

  /** The blob's local copy (complete or in progress), for serving pieces; marks it used. */
  /** Whether the blob is being seeded now. */
  seeding(digest: string): boolean {
    return this.#running.has(digest);
  }

  blob(digest: string): SeedBlob | undefined {
    return this.#cache.use(digest);
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
    const held = this.#cache.use(request.blob);
    if (held?.complete === true) {
      try {
        await this.#ensureHashesPublished(held);
      } catch (error) {
        this.#failures.set(request.blob, errorText(error));
        logger.warn({ blob: request.blob, err: error }, 'could not announce a held blob');
        return 'failed';
      }
      // The blob is served from here whatever the gateway does, at once: its copy there is
      // made in the background, or by a later request once the gateway is back.
      this.#storeInBackground(held, signal);
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
    /** Verified and committed: from then on a failure leaves the blob held and served. */
    let committed = false;
    // A notice of an earlier failed run must not outlive this one's first hashes. Looked up
    // while the origin answers (it was a NATS round trip before the first piece); it never
    // rejects.
    const cleared = this.#clearFailure(request.blob);
    // The agents following the blob hear that this seed is at it, from its first ask on.
    const notices = new IntakeNotices(
      {
        nc: this.#deps.nc,
        seed: self.id,
        notices: metrics.intakeNotices,
        logger,
        intervalMs: this.#deps.intakeNoticeMs,
      },
      request.blob,
    );
    try {
      // One span for reading the blob in (origin or object gateway), cut into pieces and verified.
      const opened = await withSpan(
        'seed fetch',
        { attributes: { 'oci.digest': request.blob, 'oci.registry': request.registry } },
        async (span) => {
          const bytes = await this.#open(request, digest, signal, (at, cause) =>
            notices.resuming(at, cause !== undefined && isUnreachable(cause)),
          );
          span.setAttributes({ 'shoal.source': bytes.source, 'shoal.size': bytes.size });
          const ingested = await this.#ingest(digest, bytes, cleared, notices, signal);
          return { ...ingested, source: bytes.source };
        },
      );
      source = opened.source;
      committed = true;
      await this.#announceAndStore(opened, signal);
      metrics.seeds.inc({ source, outcome: 'seeded' });
      this.#failures.delete(request.blob);
      return 'seeded';
    } catch (error) {
      // No notice after the failure's: the agents stop waiting on this seed.
      notices.stop();
      const reason = failureReason(error);
      metrics.seeds.inc({ source, outcome: 'failed', reason });
      this.#failures.set(request.blob, errorText(error));
      logger.warn(
        { blob: request.blob, registry: request.registry, reason, err: error },
        reason === 'disk-full' ? 'seeding failed: no room on the cache disk' : 'seeding failed',
      );
      // Agents waiting on this seed hear of it now. Not when shutting down (the request goes
      // back to the queue for another run) nor after the commit (the blob is served).
      if (!committed && !signal.aborted) {
        // After the old notice is gone, never before: it would take this one with it.
        await cleared;
        await this.#tellFailed(request.blob, reason);
      }
      return 'failed';
    } finally {
      notices.stop();
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

  /**
   * The blob's bytes from the object gateway, or undefined when it does not hold them or
   * cannot be asked. A gateway that fails (down, answering 5xx) is no reason to fail the seed
   * and send every agent waiting on it to the registry: the origin has the blob, and the
   * gateway gets its copy from the next request once it is back.
   */
  async #openStored(request: SeedRequest, signal: AbortSignal): Promise<BlobBytes | undefined> {
    const { store, logger } = this.#deps;
    const { blob } = request;
    if (this.#gatewayBroken()) {
      logger.debug({ blob }, 'the object gateway failed lately: reading the blob from the origin');
      return undefined;
    }
    // A gateway that keeps the seed waiting, for its answers or inside the body, is given up
    // for the origin; unless the origin cannot be asked now either (it rate-limited the seed
    // server), when a slow gateway is still the better source.
    const watch = new GatewayWatch(
      this.#rateLimits.holds(this.#originLimited(request)) ? Infinity : this.#deps.gatewayIdleMs,
    );
    const watched = watch.signal(signal);
    try {
      watch.waiting();
      const stored = await store.stat(blob, watched);
      // An answer after the watch gave up (a store that does not heed the signal): a failure.
      watch.throwIfQuiet();
      if (stored === undefined) {
        watch.stop();
        this.#gatewayAnswered('read');
        return undefined;
      }
      // A read the gateway answers counts as answered once its body has come whole
      // (`#storedThenOrigin`): one that answers its stat and cuts every body fails each read.
      watch.waiting();
      const body = await store.read(blob, undefined, watched);
      watch.answered();
      watch.throwIfQuiet(body);
      return {
        chunks: watch.read(body),
        lent: false,
        cancel: () => {
          watch.stop();
          body.destroy();
        },
        size: stored.size,
        source: 'store',
      };
    } catch (error) {
      watch.stop();
      if (signal.aborted) {
        throw error;
      }
      this.#gatewayFailed(
        'read',
        blob,
        watch.quiet ?? error,
        'the object gateway failed: reading the blob from the origin instead',
      );
      return undefined;
    }
  }

  /**
   * The blob's bytes: from the object gateway when it holds them (the rest from the origin
   * should that read break off), else from the origin. `onBreak`: a transfer broke off at
   * that byte, and the rest is asked for.
   */
  async #open(
    request: SeedRequest,
    digest: Digest,
    signal: AbortSignal,
    onBreak: (at: number, cause?: Error) => void,
  ): Promise<BlobBytes> {
    const stored = await this.#openStored(request, signal);
    if (stored === undefined) {
      return this.#openOrigin(request, digest, signal, onBreak);
    }
    const state: ContinuedRead = { rest: undefined, cancelled: false, continued: undefined };
    return {
      chunks: this.#storedThenOrigin(stored, state, { request, digest, signal, onBreak }),
      lent: false,
      continued: () => state.continued,
      cancel: () => {
        state.cancelled = true;
        stored.cancel();
        state.rest?.cancel();
      },
      size: stored.size,
      source: 'store',
    };
  }

  /**
   * The object gateway's bytes of a blob, and when that read breaks off before the blob's end
   * (a connection reset, the gateway restarting; or an answer that ends short), the rest from
   * the origin, from the byte the gateway stopped at. Before, the seed failed there and every
   * agent waiting on it read the whole blob from the registry. The gateway's failure counts
   * toward its breaker, as a failed read at the start does.
   */
  async *#storedThenOrigin(
    stored: BlobBytes,
    state: ContinuedRead,
    seed: {
      readonly request: SeedRequest;
      readonly digest: Digest;
      readonly signal: AbortSignal;
      readonly onBreak: (at: number, cause?: Error) => void;
    },
  ): AsyncGenerator<Buffer> {
    const { request, digest, signal, onBreak } = seed;
    // Read through a call: `cancel` sets it while the origin is awaited, which narrowing misses.
    const cancelled = (): boolean => state.cancelled;
    let received = 0;
    let failure: unknown;
    try {
      for await (const chunk of stored.chunks) {
        received += chunk.length;
        yield chunk;
      }
    } catch (error) {
      failure = error;
    }
    if (received >= stored.size || cancelled() || signal.aborted) {
      // Every byte came (the digest decides), or the seed stopped reading.
      if (failure !== undefined && received < stored.size) {
        throw failure instanceof Error ? failure : new Error(errorText(failure));
      }
      if (failure === undefined && received >= stored.size) {
        this.#gatewayAnswered('read');
      }
      return;
    }
    this.#gatewayFailed(
      'read',
      request.blob,
      failure ??
        new Error(`the answer ended at byte ${String(received)} of ${String(stored.size)}`),
      "the object gateway's read of a blob broke off: the rest from the origin",
    );
    this.#deps.metrics.gatewayReadsContinued.inc();
    // An answer that ended short without an error leaves the gateway's copy in doubt.
    state.continued = { short: failure === undefined };
    onBreak(received);
    const rest = await this.#openOrigin(request, digest, signal, onBreak, {
      byte: received,
      size: stored.size,
    });
    state.rest = rest;
    if (cancelled()) {
      rest.cancel();
      throw new Error('seeding stopped');
    }
    for await (const chunk of rest.chunks) {
      // The origin's blocks are lent; the ingest takes this blob's chunks as its own.
      yield Buffer.from(chunk);
    }
  }

  /** The seed server's blob reads from `request`'s registry, as its rate limits count them. */
  #originLimited(request: SeedRequest): LimitedRequest {
    const host = this.#deps.registries.get(request.registry)?.host ?? request.registry;
    // The seed server reads with its own credentials, the same for every blob.
    return { registry: host, kind: 'blob', method: 'GET', authorization: undefined };
  }

  /**
   * The blob from the origin, resumed where its transfer breaks off (`onBreak` told the byte);
   * `from`: only from that byte of its `size` bytes on (the rest of a read the object gateway
   * broke off).
   */
  async #openOrigin(
    request: SeedRequest,
    digest: Digest,
    signal: AbortSignal,
    onBreak: (at: number, cause?: Error) => void,
    from?: { readonly byte: number; readonly size: number },
  ): Promise<BlobBytes> {
    const { origin, registries } = this.#deps;
    const registry = registries.get(request.registry);
    if (registry === undefined) {
      throw new SeedError(
        'UNKNOWN_REGISTRY',
        400,
        `registry ${request.registry} is not configured`,
      );
    }
    const held = this.#rateLimits.held(this.#originLimited(request));
    if (held !== undefined) {
      // The registry asked to wait (a 429: its Retry-After, or a backoff): asking before then only spends more
      // of the seed server's allowance.
      throw new SeedError(
        'ORIGIN_ANSWER',
        502,
        `the registry rate-limited the seed server (429): not asking it again for ${held.retryAfterS} s (its Retry-After, or a backoff when it sent none)`,
      );
    }
    // Ends at the response headers; the body is read by the seed fetch span around it.
    const get = (byte: number | undefined): Promise<OpenedBlob> =>
      withSpan(
        'origin GET blob',
        {
          kind: SpanKind.CLIENT,
          attributes: {
            'oci.registry': registry.host,
            'oci.repository': request.repository,
            ...(byte === undefined ? {} : { 'shoal.resume_from': byte }),
          },
        },
        async (span) => {
          try {
            const answer = await origin.open(
              registry,
              request.repository,
              digest,
              signal,
              undefined,
              byte,
            );
            span.setAttribute('http.response.status_code', answer.status);
            return answer;
          } catch (error) {
            if (error instanceof RealmError) {
              // The realm failing is the registry failing: no credential would help.
              throw new SeedError('ORIGIN_ANSWER', 502, error.message, { cause: error });
            }
            throw error;
          }
        },
      );
    const response = await get(from?.byte);
    if (response.status === 401 || response.status === 403) {
      // The operator's fix, for the cause, in the failure every preheat report and log carries.
      // The answer's own challenge, else the one answered: a bare 403 to the retry says
      // nothing of why.
      const refusal = this.#deps.originAuth.refusal(
        registry,
        response.headers['www-authenticate'] ?? response.challenge,
      );
      throw new SeedError(
        'ORIGIN_ANSWER',
        502,
        `the registry refused the seed server (${response.status}) for ${request.repository}: ${refusalAdvice(registry.host, refusal, SEED_CREDENTIALS)}`,
      );
    }
    if (response.status === 429) {
      const ms = this.#rateLimits.noteAnswer(this.#originLimited(request), 429, response.headers);
      throw new SeedError(
        'ORIGIN_ANSWER',
        502,
        `the registry rate-limited the seed server (429)${ms === undefined ? '' : `: not asking it again for ${Math.ceil(ms / 1000)} s (its Retry-After, or a backoff when it sent none)`}`,
      );
    }
    if (response.status !== 200 && (from === undefined || response.status !== 206)) {
      throw new SeedError('ORIGIN_ANSWER', 502, `origin answered ${response.status}`);
    }
    if (response.size === undefined) {
      response.cancel(new Error('no Content-Length'));
      throw new SeedError('NO_SIZE', 502, 'origin sent no Content-Length');
    }
    // A transfer that breaks off goes on from where it stopped, rather than failing the seed
    // and sending every agent waiting on it to the origin.
    const body = resumingBody(response, {
      signal,
      ...(from === undefined ? {} : { from }),
      // Each resume request in a CLIENT span of its own, as the first GET.
      reopen: get,
      onResume: (at, cause) => {
        this.#deps.metrics.originResumes.inc();
        onBreak(at, cause);
        this.#deps.logger.warn(
          { blob: request.blob, at, err: cause },
          "the origin's blob transfer broke off: asked again from where it stopped",
        );
      },
    });
    return {
      chunks: body.blocks,
      lent: true,
      cancel: () => body.cancel(new Error('seeding stopped')),
      size: from?.size ?? response.size,
      source: 'origin',
    };
  }

  /**
   * Reads the blob in once: cuts it into pieces on disk, announcing them, streams it on to
   * the object gateway when that cannot take the local file (a blob from the origin only),
   * verifies it and commits it. On any failure nothing of it is left, locally or in the
   * gateway, and what was announced is withdrawn.
   */
  async #ingest(
    digest: Digest,
    bytes: BlobBytes,
    cleared: Promise<void>,
    notices: IntakeNotices,
    signal: AbortSignal,
  ): Promise<{ blob: SeedBlob; announcer: Announcer; upload: GatewayUpload | undefined }> {
    const { cacheDir, js, self, metrics, store } = this.#deps;
    const { chunks, lent, size, source } = bytes;
    const key = digest.toString();
    if (size > MAX_BLOB_BYTES) {
      // Past the largest blob Shoal moves: its piece hashes would be refused by every agent.
      bytes.cancel();
      throw new SeedError('TOO_LARGE', 502, `${key}: ${size} bytes, more than Shoal moves`);
    }
    await this.#makeRoom(size);
    try {
      await this.#makeDiskRoom(size);
    } catch (error) {
      // Not a byte read: the origin's answer is left unread.
      bytes.cancel();
      throw error;
    }
    this.#reserved += size;
    let blob: SeedBlob;
    try {
      const temp = join(cacheDir, 'tmp', `${digest.algorithm}-${digest.hex}`);
      blob = await SeedBlob.create(digest, size, temp);
    } catch (error) {
      // Not a byte read: the answer is left unread.
      bytes.cancel();
      throw error;
    } finally {
      // In the cache from here on, where its bytes still to come count as pending.
      this.#reserved -= size;
    }
    blob.stored = source === 'store' ? true : undefined;
    this.#cache.add(blob);
    this.#reportCache();
    const announcer = new Announcer(js, this.#deps.jsm, self, blob, this.#deps.recordKey);
    const cutter = new PieceCutter(blob, digest.algorithm);
    // No copy streamed to a gateway that failed lately (a later request makes it), nor past
    // the uploads' limit (the copy is owed, made from the file afterwards).
    const upload =
      source === 'origin' &&
      store.linkVerified === undefined &&
      this.#uploads < this.#deps.maxUploads &&
      !this.#gatewayBroken()
        ? this.#startUpload(blob, signal)
        : undefined;
    // A gateway read carried on from the origin counts its rest as the origin's.
    const ingested = {
      store: metrics.ingestedBytes.labels({ source: 'store' }),
      origin: metrics.ingestedBytes.labels({ source: 'origin' }),
    };
    /**
     * A write that failed for want of disk room: once per ingest, room is made (idle blobs
     * evicted) and `redo` writes again what failed; a second failure ends the seed.
     */
    let retried = false;
    const onDiskFull = async <T>(error: unknown, redo: () => Promise<T>): Promise<T> => {
      if (retried || !isDiskFull(error)) {
        throw error;
      }
      retried = true;
      this.#deps.logger.warn(
        { blob: key, received: cutter.received, size },
        'the cache disk filled during a seed: evicting idle blobs and writing again',
      );
      // The blob is in the cache, incomplete: what it still needs counts as pending.
      await this.#makeDiskRoom(0);
      return redo();
    };
    try {
      notices.follow(blob, () => cutter.received);
      await cleared;
      for await (const chunk of chunks) {
        if (cutter.received + chunk.length > size) {
          throw new SeedError('SIZE_MISMATCH', 502, `${key}: more than ${size} bytes`);
        }
        const ready = blob.ready;
        if (cutter.received === 0) {
          markSpan('first bytes in');
        }
        // A failed push keeps the chunk (hashed, held): flushing writes it again.
        await cutter.push(chunk).catch((error: unknown) => onDiskFull(error, () => cutter.flush()));
        if (lent) {
          // The block is the reader's again at the next turn: on disk before then.
          await cutter.flush().catch((error: unknown) => onDiskFull(error, () => cutter.flush()));
        }
        ingested[bytes.continued?.() === undefined ? source : 'origin'].inc(chunk.length);
        if (blob.ready !== ready) {
          // Pieces on disk: their hashes go out at once (cut-through: agents fetch them while
          // the rest streams in). A failed publication is redone by the next one.
          void announcer.progress().catch(() => undefined);
        }
      }
      const actual = await cutter
        .finish()
        .catch((error: unknown) => onDiskFull(error, () => cutter.finish()));
      if (cutter.received !== size) {
        throw new SeedError('SIZE_MISMATCH', 502, `${key}: ${cutter.received} of ${size} bytes`);
      }
      if (actual !== key) {
        throw new SeedError('DIGEST_MISMATCH', 502, `${key}: the bytes do not match the digest`);
      }
      notices.stop();
      announcer.stopPacing();
      announcer.verified();
      // Verified: the last pieces are announced before the commit's fsync, which agents need
      // not wait for (they read the pieces from this file, and verify them themselves).
      void announcer.flush().catch(() => undefined);
      // Verified: the local copy is committed (the gateway's goes on from its file).
      const finalPath = join(cacheDir, 'blobs', `${digest.algorithm}-${digest.hex}`);
      await blob
        .commit(finalPath)
        .catch((error: unknown) => onDiskFull(error, () => blob.commit(finalPath)));
      if (bytes.continued?.()?.short === true) {
        // The gateway's copy ended short of its size: written again from this verified one
        // (and not evicted until it is).
        blob.stored = false;
        this.#owe(blob);
      }
      return { blob, announcer, upload };
    } catch (error) {
      // Nothing verified: the gateway stores nothing, the swarm is told, the file goes.
      notices.stop();
      announcer.stopPacing();
      bytes.cancel();
      // The store completes nothing it has not verified; its abort is waited for a moment, so
      // that no upload is left open in the gateway either.
      await upload?.abort(
        error instanceof Error ? error : new Error(String(error)),
        this.#deps.gatewayIdleMs,
      );
      this.#cache.delete(blob);
      this.#reportCache();
      await announcer.withdraw().catch(() => undefined);
      await this.#forgetHashes(key);
      await blob.discard();
      throw error;
    }
  }

  /**
   * Removes the piece hashes a failed run published, so that no agent verifies pieces against
   * them (and penalises the good peers that send the real bytes) and the next run's hashes
   * are the only ones an agent reads.
   */
  async #forgetHashes(blob: string): Promise<void> {
    try {
      await this.#deps.jsm.streams.purge(STREAMS.pieces.name, {
        filter: pieceHashesSubject(blob),
      });
    } catch (error) {
      this.#deps.logger.warn(
        { err: error, blob },
        "could not remove the failed run's piece hashes",
      );
    }
  }

  /**
   * Tells the agents following the blob's hash subject that this seed gave it up, so they
   * stop waiting on it. A failure here is logged: they wait out their stall timeout instead.
   */
  async #tellFailed(blob: string, reason: SeedFailureReason): Promise<void> {
    const { js, self, logger } = this.#deps;
    try {
      // No message id: the notice of every failed run counts, however close together.
      await js.publish(
        pieceHashesSubject(blob),
        encodeMessage(seedFailed, { type: 'seed-failed', blob, seed: self.id, reason }),
      );
    } catch (error) {
      logger.warn({ err: error, blob }, 'could not tell the swarm that seeding failed');
    }
  }

  /**
   * Removes an earlier run's `seed-failed` notice (the only message a failed run leaves on
   * the hash subject), so that agents joining during this run do not give up on it.
   */
  async #clearFailure(blob: string): Promise<void> {
    let last;
    try {
      last = await this.#deps.jsm.streams.getMessage(STREAMS.pieces.name, {
        last_by_subj: pieceHashesSubject(blob),
      });
    } catch {
      // Nothing stored for the blob (or NATS trouble, which the first announcement meets).
      return;
    }
    if (last !== null && decodeMessage(seedFailed, last.data).ok) {
      await this.#forgetHashes(blob);
    }
  }

  /**
   * Makes room on the cache's disk for `incoming` more bytes, besides what the ingests under
   * way still have to write, with `cacheMinFreeBytes` to spare: least recently used idle blobs
   * the gateway keeps are evicted (only files that are their data's last link: one the
   * filesystem gateway shares frees nothing). Throws `NO_ROOM`, evicting nothing, when even
   * all of them would not do. A free-space reading that fails lets the ingest try.
   */
  #makeDiskRoom(incoming: number): Promise<void> {
    const run = this.#evicting.then(() => this.#evictForDisk(incoming));
    this.#evicting = run.catch(() => undefined);
    return run;
  }

  async #evictForDisk(incoming: number): Promise<void> {
    const { cacheDir, cacheMinFreeBytes, metrics } = this.#deps;
    const free = (): Promise<number | undefined> => freeDiskBytes(cacheDir).catch(() => undefined);
    let pending = this.#reserved;
    for (const blob of this.#cache.oldestFirst()) {
      if (!blob.complete) {
        pending += Math.max(0, blob.size - blob.ready * blob.pieceSize);
      }
    }
    const needed = incoming + pending + cacheMinFreeBytes;
    let available = await free();
    if (available === undefined || available >= needed) {
      return;
    }
    const candidates: SeedBlob[] = [];
    let reclaimable = 0;
    for (const blob of this.#cache.oldestFirst()) {
      const links = this.#evictable(blob)
        ? await stat(blob.path).then(
            (s) => s.nlink,
            () => 0,
          )
        : 0;
      if (links === 1) {
        candidates.push(blob);
        reclaimable += blob.size;
      }
    }
    const noRoom = (): SeedError => {
      metrics.noRoom.inc();
      return new SeedError(
        'NO_ROOM',
        507,
        `no room on the cache disk: ${needed} bytes needed (${incoming} for the blob, ${pending} for seeds under way, ${cacheMinFreeBytes} kept free), ${available ?? 0} free and ${reclaimable} in idle blobs`,
      );
    };
    if (available + reclaimable < needed) {
      throw noRoom();
    }
    for (const blob of candidates) {
      if (available >= needed) {
        return;
      }
      if (await this.#evictIfStored(blob)) {
        const now = await free();
        if (now === undefined) {
          return;
        }
        available = now;
      }
    }
    if (available < needed) {
      throw noRoom();
    }
  }

  /**
   * After a verified commit: the last announcement and, for a blob from the origin, the copy
   * in the object gateway (linked, or the upload streamed since the ingest began, which ends
   * in the background at the gateway's pace). A failure here (NATS, the gateway) leaves the
   * blob held and served; its copy is owed, and the next request for it tries the rest again.
   */
  async #announceAndStore(
    ingested: {
      blob: SeedBlob;
      announcer: Announcer;
      upload: GatewayUpload | undefined;
      source: 'store' | 'origin';
    },
    signal: AbortSignal,
  ): Promise<void> {
    const { blob, upload } = ingested;
    // The copy is handed on, or owed, first: whatever happens to the announcements, it is
    // accounted for.
    const fromOrigin = ingested.source === 'origin';
    if (fromOrigin && upload !== undefined) {
      this.#finishUpload(blob, upload, signal);
    } else if (
      fromOrigin &&
      (this.#gatewayBroken() || this.#deps.store.linkVerified === undefined)
    ) {
      // The gateway failed lately, or every upload was busy: the copy is made from the file
      // afterwards (once the break is over), in the background.
      blob.stored = false;
      this.#owe(blob);
    }
    // The filesystem gateway: the file linked (or copied, from another filesystem) after.
    const linkNow = fromOrigin && upload === undefined && blob.stored !== false;
    await ingested.announcer.flush();
    // The hashes of a complete blob in the fewest messages: one read for a node joining later.
    await ingested.announcer.consolidate().catch((error: unknown) => {
      this.#deps.logger.warn(
        { blob: ingested.blob.digest.toString(), err: error },
        'could not consolidate the piece hashes; they stay in their batches',
      );
    });
    if (linkNow) {
      try {
        await this.#store(blob, signal);
      } catch (error) {
        if (signal.aborted) {
          throw error;
        }
        this.#storeFailed(blob, error);
      }
    }
  }

  /** Streams the blob's copy to the gateway from its file as it is ingested (`GatewayUpload`). */
  #startUpload(blob: SeedBlob, signal: AbortSignal): GatewayUpload {
    const { store, metrics } = this.#deps;
    const upload = new GatewayUpload(store, blob, signal);
    this.#uploads += 1;
    metrics.gatewayUploads.set(this.#uploads);
    void upload
      .done()
      .catch(() => undefined)
      .finally(() => {
        this.#uploads -= 1;
        metrics.gatewayUploads.set(this.#uploads);
      });
    return upload;
  }

  /**
   * Waits in the background for the upload streamed during the ingest, then stores the piece
   * manifest beside it. The seed's outcome does not wait for it: the blob is seeded and served,
   * and a gateway that takes its time, or fails, holds up nobody (its copy is owed). The blob
   * stays in use (not evicted) until its copy and manifest are there.
   */
  #finishUpload(blob: SeedBlob, upload: GatewayUpload, signal: AbortSignal): void {
    const key = blob.digest.toString();
    this.#storing.add(key);
    const used = blob.acquire();
    void this.#store(blob, signal, upload)
      .catch((error: unknown) => {
        if (signal.aborted) {
          // Shutting down: the copy is made once the blob is found missing there (at the next
          // start, its manifest holding no note of it; a request for it; an eviction).
          blob.stored = false;
          return;
        }
        this.#storeFailed(blob, error);
      })
      .finally(() => {
        this.#storing.delete(key);
        if (used) {
          blob.release();
        }
      });
  }

  /**
   * A seeded blob's copy failed: counted and logged as a gateway write failure; the copy is
   * made a moment later from the local file, or once the break is over if this failure
   * opened the breaker.
   */
  #storeFailed(blob: SeedBlob, error: unknown): void {
    blob.stored = false;
    this.#gatewayFailed(
      'write',
      blob.digest.toString(),
      error,
      'could not store a seeded blob in the object gateway',
    );
    this.#owe(blob);
  }

  /** True while the breaker is open: the gateway is not to be asked (see `gatewayBreaker`). */
  #gatewayBroken(): boolean {
    const broken = Date.now() < this.#gatewayBrokenUntil;
    if (!broken && this.#gatewayBrokenUntil !== 0) {
      // Half-open: the next request is asked; its failure reopens, its success closes.
      this.#gatewayBrokenUntil = 0;
      this.#deps.metrics.gatewayBreakerOpen.set(0);
      this.#deps.logger.info(
        'object gateway breaker half-open: the gateway is asked again, one failure reopens it',
      );
    }
    return broken;
  }

  /**
   * A gateway request of this kind succeeded: the failures in a row of its kind start again
   * from none (a gateway that answers reads but refuses writes still opens the breaker), and a
   * half-open breaker opened by this kind of failure closes.
   */
  #gatewayAnswered(use: GatewayUse): void {
    if (this.#gatewayBroken()) {
      // A request sent before the breaker opened: it says nothing about the break's end.
      return;
    }
    this.#gatewayFailuresInRow[use] = 0;
    if (this.#gatewayOpenedBy === use) {
      this.#gatewayOpenedBy = undefined;
      this.#gatewayFailuresInRow.read = 0;
      this.#gatewayFailuresInRow.write = 0;
      this.#deps.logger.info('object gateway breaker closed: the gateway answered again');
    }
  }

  /**
   * Counts and logs a gateway failure. The breaker opens for `gatewayBreaker.breakMs` at the
   * `gatewayBreaker.failures`-th failure of one kind in a row, at the first failure once
   * half-open, and at once on an answer that will not change by itself (`gatewayRefusal`).
   * Failures while it is open (requests sent before) are counted but open nothing more.
   */
  #gatewayFailed(use: GatewayUse, blob: string, error: unknown, message: string): void {
    const { metrics, logger, gatewayBreaker } = this.#deps;
    metrics.gatewayFailures.inc();
    if (this.#gatewayBroken()) {
      logger.warn({ blob, err: error, use }, message);
      return;
    }
    this.#gatewayFailuresInRow[use] += 1;
    const failuresInRow = this.#gatewayFailuresInRow[use];
    const refusal = gatewayRefusal(error);
    logger.warn({ blob, err: error, use, failuresInRow, refusal }, message);
    const halfOpen = this.#gatewayOpenedBy !== undefined;
    if (refusal === undefined && !halfOpen && failuresInRow < gatewayBreaker.failures) {
      return;
    }
    this.#gatewayFailuresInRow.read = 0;
    this.#gatewayFailuresInRow.write = 0;
    this.#gatewayOpenedBy = use;
    this.#gatewayBrokenUntil = Date.now() + gatewayBreaker.breakMs;
    metrics.gatewayBreakerTrips.inc();
    metrics.gatewayBreakerOpen.set(1);
    logger.warn(
      {
        use,
        failuresInRow,
        refusal,
        reopened: halfOpen,
        breakMs: gatewayBreaker.breakMs,
      },
      'object gateway breaker open: seeds read the origin and leave the gateway alone for a while',
    );
  }

  /**
   * `blob` is owed its gateway copy, made by `#copyOwed`: `GATEWAY_RETRY_MS` after its first
   * failure, the wait doubling at each further failure of its copy up to the break time, and
   * never before the break is over.
   */
  #owe(blob: SeedBlob, lastRetryMs?: number): void {
    if (this.#closing.signal.aborted) {
      return;
    }
    const key = blob.digest.toString();
    const retryMs = Math.max(
      lastRetryMs === undefined
        ? GATEWAY_RETRY_MS
        : Math.min(lastRetryMs * 2, this.#deps.gatewayBreaker.breakMs),
      this.#owed.get(key)?.retryMs ?? 0,
    );
    const dueAt = Math.max(Date.now() + retryMs, this.#gatewayBrokenUntil + 1);
    this.#owed.set(key, { blob, retryMs, dueAt });
    this.#scheduleOwed();
  }

  /** The timer of `#copyOwed`, set for the earliest owed copy due (after the break, if any). */
  #scheduleOwed(): void {
    clearTimeout(this.#owedTimer);
    this.#owedTimer = undefined;
    if (this.#owed.size === 0 || this.#copyingOwed || this.#closing.signal.aborted) {
      return;
    }
    let dueAt = Infinity;
    for (const owed of this.#owed.values()) {
      dueAt = Math.min(dueAt, owed.dueAt);
    }
    const waitMs = Math.max(dueAt, this.#gatewayBrokenUntil + 1) - Date.now();
    this.#owedTimer = setTimeout(
      () => {
        this.#owedTimer = undefined;
        void this.#copyOwed();
      },
      Math.max(waitMs, 0),
    );
    this.#owedTimer.unref();
  }

  /**
   * Copies the owed blobs that are due and still held into the gateway, one at a time; a copy
   * that fails is owed again with a longer wait, and none goes while the breaker is open.
   */
  async #copyOwed(): Promise<void> {
    const signal = this.#closing.signal;
    this.#copyingOwed = true;
    try {
      for (const [key, owed] of [...this.#owed]) {
        if (signal.aborted || this.#gatewayBroken()) {
          // Broken (again): the rest wait for this break to end.
          return;
        }
        if (owed.dueAt > Date.now()) {
          continue;
        }
        this.#owed.delete(key);
        if (this.#cache.peek(key) !== owed.blob || this.#storing.has(key)) {
          continue;
        }
        this.#storing.add(key);
        try {
          await this.#ensureStored(owed.blob, signal);
        } catch {
          // Counted and logged by `#ensureStored`.
          this.#owe(owed.blob, owed.retryMs);
        } finally {
          this.#storing.delete(key);
        }
      }
    } finally {
      this.#copyingOwed = false;
      this.#scheduleOwed();
    }
  }

  /**
   * Makes sure a held blob has its gateway copy, without holding up its answer: one write at a
   * time per blob, none while the gateway is left alone after a failure; a copy that fails is
   * owed (made a moment later, or once the break is over).
   */
  #storeInBackground(blob: SeedBlob, signal: AbortSignal): void {
    const key = blob.digest.toString();
    if (this.#storing.has(key)) {
      return;
    }
    if (this.#gatewayBroken()) {
      if (blob.stored !== true) {
        this.#owe(blob);
      }
      return;
    }
    this.#storing.add(key);
    void this.#ensureStored(blob, signal)
      .catch(() => {
        // Counted and logged by `#ensureStored`; the request's end does not cancel the debt.
        this.#owe(blob);
      })
      .finally(() => this.#storing.delete(key));
  }

  /**
   * Stores a held blob in the object gateway if it is not there: a blob committed locally
   * whose upload failed is completed by the next request for it. A failure is counted (as a
   * read or a write) and logged here, then thrown.
   */
  async #ensureStored(blob: SeedBlob, signal: AbortSignal): Promise<void> {
    const key = blob.digest.toString();
    let use: GatewayUse = 'read';
    try {
      const stored = await this.#deps.store.stat(key, signal);
      this.#gatewayAnswered('read');
      if (stored?.size !== blob.size) {
        blob.stored = false;
        use = 'write';
        await this.#store(blob, signal);
      } else {
        await this.#markStored(blob);
      }
    } catch (error) {
      if (!signal.aborted) {
        this.#gatewayFailed(use, key, error, 'could not store a held blob in the object gateway');
      }
      throw error;
    }
  }

  /** Notes that the gateway holds `blob`, beside it too (a failure to write that is logged). */
  async #markStored(blob: SeedBlob): Promise<void> {
    await blob.markStored().catch((error: unknown) => {
      this.#deps.logger.warn(
        { blob: blob.digest.toString(), err: error },
        'could not note in the local manifest that the object gateway holds the blob',
      );
    });
  }

  /**
   * Writes a verified blob and its piece manifest to the object gateway: the upload streamed
   * since the ingest began (`upload`), else the committed file linked into the gateway, else
   * the file streamed to it (another filesystem, or the retry of a failed upload).
   */
  async #store(blob: SeedBlob, signal: AbortSignal, upload?: GatewayUpload): Promise<void> {
    const { store, metrics } = this.#deps;
    const key = blob.digest.toString();
    const { size } = blob;
    await withSpan(
      'gateway write',
      { kind: SpanKind.CLIENT, attributes: { 'oci.digest': key, 'shoal.size': size } },
      async (span) => {
        let how: 'streamed' | 'linked' | 'copied' = 'streamed';
        if (upload !== undefined) {
          await upload.done();
        } else if ((await store.linkVerified?.(key, blob.path, size, signal)) === true) {
          how = 'linked';
        } else {
          how = 'copied';
          await store.write(key, createReadStream(blob.path), size, signal);
        }
        span.setAttribute('shoal.store_write', how);
        await store.putMeta(key, PIECES_META, Buffer.from(JSON.stringify(blob.manifest)), signal);
      },
    );
    await this.#markStored(blob);
    this.#gatewayAnswered('write');
    metrics.storedBytes.inc(size);
  }

  /**
   * Evicts least recently used blobs until `incoming` more bytes fit under the quota. Only a
   * complete blob the gateway keeps goes, and never one being served or seeded; when nothing
   * more may go the cache stays over its quota (logged once) rather than fail a seed.
   */
  #makeRoom(incoming: number): Promise<void> {
    const run = this.#evicting.then(() => this.#evictFor(incoming));
    // The chain outlives a failed run; the caller still hears of it.
    this.#evicting = run.catch(() => undefined);
    return run.catch((error: unknown) => {
      this.#deps.logger.warn({ err: error }, 'cache eviction failed');
    });
  }

  async #evictFor(incoming: number): Promise<void> {
    const cache = this.#cache;
    const { logger } = this.#deps;
    for (const blob of cache.oldestFirst()) {
      if (cache.bytes + incoming <= cache.maxBytes) {
        break;
      }
      await this.#evictIfStored(blob);
    }
    const over = cache.bytes + incoming > cache.maxBytes;
    if (over && !this.#overQuotaLogged) {
      logger.warn(
        { bytes: cache.bytes, incoming, maxBytes: cache.maxBytes },
        'the local cache is over its quota: every blob in it is in use or not in the gateway yet',
      );
    }
    this.#overQuotaLogged = over;
  }

  /**
   * Evicts the blob if it is idle and the gateway keeps it (only that is dropped, so that it
   * can be brought back from there); true when it went.
   */
  async #evictIfStored(blob: SeedBlob): Promise<boolean> {
    const { store, logger, metrics } = this.#deps;
    if (!this.#evictable(blob)) {
      return false;
    }
    const key = blob.digest.toString();
    if (blob.stored !== true && (this.#owed.has(key) || this.#storing.has(key))) {
      // Its copy is owed or being made: not there yet, and not to be put off.
      return false;
    }
    if (blob.stored !== true) {
      // Unknown (undefined) while the gateway does not answer: asked again next time.
      blob.stored = await store.stat(key).then(
        (stored) => stored?.size === blob.size,
        () => undefined,
      );
      if (blob.stored === false && !this.#storing.has(key) && !this.#owed.has(key)) {
        // Not there (a copy cut short, say): made now, and evictable after.
        this.#owe(blob);
      }
      if (blob.stored !== true || !this.#evictable(blob)) {
        return false;
      }
    }
    // Synchronously after the check: no request can take the blob in between.
    this.#cache.delete(blob);
    this.#reportCache();
    metrics.evictedBytes.inc(blob.size);
    logger.info({ blob: key, size: blob.size }, 'evicted from the local cache');
    await new Announcer(this.#deps.js, this.#deps.jsm, this.#deps.self, blob, this.#deps.recordKey)
      .withdraw()
      .catch((error: unknown) => {
        logger.warn({ blob: key, err: error }, 'could not withdraw an evicted blob');
      });
    await blob.remove();
    return true;
  }

  /** A blob may be evicted: complete, held, and neither served nor seeded now. */
  #evictable(blob: SeedBlob): boolean {
    const key = blob.digest.toString();
    return (
      blob.complete && blob.users === 0 && !this.#running.has(key) && this.#cache.peek(key) === blob
    );
  }

  #reportCache(): void {
    this.#deps.metrics.cacheBytes.set(this.#cache.bytes);
    this.#deps.metrics.cacheBlobs.set(this.#cache.size);
  }

  /** Re-publishes a held blob's hashes if the hashes stream no longer has them. */
  async #ensureHashesPublished(blob: SeedBlob): Promise<void> {
    const announcer = new Announcer(
      this.#deps.js,
      this.#deps.jsm,
      this.#deps.self,
      blob,
      this.#deps.recordKey,
    );
    // The stream no longer has them (its age limit, a store lost: the client answers null,
    // older ones threw), or another replica's failed run removed them and left its
    // `seed-failed` notice, which agents would take for the blob's end: publish them again
    // (the notice removed first), then the have.
    const key = blob.digest.toString();
    const last = await this.#deps.jsm.streams
      .getMessage(STREAMS.pieces.name, { last_by_subj: pieceHashesSubject(key) })
      .catch(() => null);
    if (last === null || !decodeMessage(pieceHashes, last.data).ok) {
      if (last !== null) {
        await this.#forgetHashes(key);
      }
      await announcer.republish();
      return;
    }
    announcer.hashesAlreadyPublished();
    await announcer.flush();
  }

  async close(): Promise<void> {
    this.#closing.abort();
    clearTimeout(this.#owedTimer);
    this.#owed.clear();
    await Promise.allSettled(this.#running.values());
    await this.#evicting;
    for (const blob of this.#cache.oldestFirst()) {
      await blob.close();
    }
  }
}

/** A blob's bytes as they are read in, from the origin or the object gateway. */
interface BlobBytes {
  readonly chunks: AsyncIterable<Buffer>;
  /**
   * Each chunk is lent until the next is asked for (the origin reader's reused blocks): it
   * must be written, and copied where it is kept, before then.
   */
  readonly lent: boolean;
  /** Stops reading (on failure). */
  cancel(): void;
  readonly size: number;
  readonly source: 'store' | 'origin';
  /**
   * A read from the object gateway that broke off and goes on from the origin: from when it
   * did (the chunks from then on are the origin's), and whether the gateway's answer ended
   * short without an error (its copy taken to be damaged, and written again).
   */
  readonly continued?: () => { readonly short: boolean } | undefined;
}

/** The origin's read that carries on a gateway's broken one, once it started. */
interface ContinuedRead {
  rest: BlobBytes | undefined;
  /** The seed stopped reading the blob. */
  cancelled: boolean;
  /** Set when the gateway's read broke off: the bytes from here on are the origin's. */
  continued: { readonly short: boolean } | undefined;
}

/** Why a seed run failed, for the metric and the agents' notice. */
function failureReason(error: unknown): SeedFailureReason {
  if (isDiskFull(error) || (error instanceof SeedError && error.code === 'NO_ROOM')) {
    return 'disk-full';
  }
  if (error instanceof SeedError) {
    return error.code === 'DIGEST_MISMATCH' || error.code === 'SIZE_MISMATCH'
      ? 'verification'
      : 'origin';
  }
  // The registry refused the rest of the blob (a token that expired mid-transfer), as it
  // refuses one at the start.
  return error instanceof ResumeRefusedError ? 'origin' : 'other';
}

/** An error's message, for a report to the operator. */
function errorText(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).slice(0, 1024);
}
