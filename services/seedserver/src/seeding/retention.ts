/**
 * Retention of the object gateway: without it the gateway keeps every blob the cluster ever
 * pulled. A sweep runs every `intervalMs` on one seed server at a time (a lock in the seed
 * lock bucket) and deletes, with their piece manifests:
 *
 * - blobs stored longer ago than `maxAgeMs` (0: no age limit), then
 * - the oldest blobs while the rest is over `maxBytes` (0: no size limit).
 *
 * Age is counted from when the blob was stored (file mtime; S3 LastModified), not from its
 * last use: a blob still pulled after it expires is fetched from its registry once more. A
 * blob being seeded is never deleted. The seed servers' local caches are not touched: they
 * have their own quota.
 */
import type { KV } from '@nats-io/kv';
import type { BlobStore, StoredBlob } from '@shoal/blobstore';
import type { Logger } from '@shoal/runtime';

import type { SeedMetrics } from '../metrics.js';

export interface RetentionPolicy {
  /** Blobs stored longer ago than this are deleted, in ms; 0 keeps them whatever their age. */
  readonly maxAgeMs: number;
  /** Past this many bytes the oldest blobs are deleted; 0 sets no limit. */
  readonly maxBytes: number;
}

/** The blobs a sweep deletes under `policy` at time `now` (ms): pure, for tests. */
export function expiredBlobs(
  blobs: readonly StoredBlob[],
  policy: RetentionPolicy,
  now: number,
): StoredBlob[] {
  const expired: StoredBlob[] = [];
  const kept: StoredBlob[] = [];
  for (const blob of blobs) {
    if (policy.maxAgeMs > 0 && now - blob.storedAt > policy.maxAgeMs) {
      expired.push(blob);
    } else {
      kept.push(blob);
    }
  }
  if (policy.maxBytes > 0) {
    kept.sort((a, b) => a.storedAt - b.storedAt || a.digest.localeCompare(b.digest));
    let bytes = kept.reduce((sum, blob) => sum + blob.size, 0);
    for (const blob of kept) {
      if (bytes <= policy.maxBytes) {
        break;
      }
      expired.push(blob);
      bytes -= blob.size;
    }
  }
  return expired;
}

export interface GatewayRetentionDeps {
  readonly store: BlobStore;
  readonly locks: KV;
  readonly policy: RetentionPolicy;
  /** Time between sweeps, in ms. */
  readonly intervalMs: number;
  /** This seed server's id, written in the lock. */
  readonly self: string;
  /** Whether a blob is being seeded now (never deleted then). */
  readonly busy: (digest: string) => boolean;
  readonly metrics: SeedMetrics;
  readonly logger: Logger;
  readonly now?: () => number;
}

/** The lock's key in the seed lock bucket; the bucket's TTL frees it if its holder dies. */
const LOCK_KEY = 'gateway-retention';
/** How often a long sweep refreshes its lock (the bucket's TTL is a minute), in ms. */
const LOCK_REFRESH_MS = 20_000;

export class GatewayRetention {
  readonly #deps: GatewayRetentionDeps;
  readonly #stop = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> = Promise.resolve();

  constructor(deps: GatewayRetentionDeps) {
    this.#deps = deps;
  }

  /** Whether the policy deletes anything at all. */
  get enabled(): boolean {
    const { maxAgeMs, maxBytes } = this.#deps.policy;
    return maxAgeMs > 0 || maxBytes > 0;
  }

  /** Sweeps now and then every interval; nothing when the policy is off. */
  start(): void {
    if (!this.enabled || this.#timer !== undefined) {
      return;
    }
    const tick = (): void => {
      this.#sweeping = this.sweep().then(
        () => undefined,
        () => undefined,
      );
    };
    tick();
    this.#timer = setInterval(tick, this.#deps.intervalMs);
    this.#timer.unref();
  }

  /** Stops sweeping; a sweep under way stops between deletions. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#stop.abort();
    await this.#sweeping;
  }

  /**
   * One sweep, when this seed server gets the lock: the number of blobs deleted, or
   * undefined when another seed server is sweeping.
   */
  async sweep(): Promise<number | undefined> {
    const { locks, logger, metrics } = this.#deps;
    const signal = this.#stop.signal;
    const lock = JSON.stringify({ owner: this.#deps.self, at: Date.now() });
    try {
      await locks.create(LOCK_KEY, lock);
    } catch {
      return undefined;
    }
    const refresh = setInterval(() => {
      locks.put(LOCK_KEY, lock).catch(() => undefined);
    }, LOCK_REFRESH_MS);
    const started = Date.now();
    try {
      const blobs: StoredBlob[] = [];
      for await (const blob of this.#deps.store.list(signal)) {
        blobs.push(blob);
      }
      const now = (this.#deps.now ?? Date.now)();
      const expired = expiredBlobs(blobs, this.#deps.policy, now);
      let deleted = 0;
      let freed = 0;
      for (const blob of expired) {
        if (signal.aborted) {
          break;
        }
        if (this.#deps.busy(blob.digest)) {
          continue;
        }
        await this.#deps.store.delete(blob.digest, signal);
        deleted += 1;
        freed += blob.size;
        metrics.gatewayDeleted.inc();
        metrics.gatewayDeletedBytes.inc(blob.size);
      }
      const total = blobs.reduce((sum, blob) => sum + blob.size, 0);
      metrics.gatewayBytes.set(total - freed);
      metrics.gatewayBlobs.set(blobs.length - deleted);
      logger.info(
        {
          blobs: blobs.length,
          deleted,
          freedBytes: freed,
          keptBytes: total - freed,
          ms: Date.now() - started,
        },
        'object gateway retention sweep',
      );
      return deleted;
    } catch (error) {
      metrics.gatewaySweepFailures.inc();
      logger.warn({ err: error }, 'object gateway retention sweep failed');
      throw error;
    } finally {
      clearInterval(refresh);
      await locks.delete(LOCK_KEY).catch(() => undefined);
    }
  }
}
