/**
 * Scheduled preheat: a JSON file of images, read again at every interval (so it can change
 * without a restart, e.g. a mounted ConfigMap). Each interval the leader looks up every
 * image's current digest; a digest not preheated yet becomes a job. Re-tagging an image to a
 * new digest is therefore preheated on the next interval.
 *
 * ```json
 * { "images": [{ "image": "registry.example.com/team/app:v1", "scope": "nodes",
 *                "selector": { "shoal.io/pool": "gpu" }, "platforms": ["linux/amd64"] }] }
 * ```
 */
import { readFile } from 'node:fs/promises';

import { labelSelector, preheatScope } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { z } from 'zod';

import type { WatcherMetrics } from '../metrics.js';
import type { PreheatRequests } from '../preheat/requests.js';
import type { ImageResolver } from '../preheat/resolve.js';
import type { LeaderLock } from './leader.js';

const scheduleFile = z.strictObject({
  images: z
    .array(
      z.strictObject({
        image: z.string().min(1).max(512),
        scope: preheatScope.default('seed'),
        selector: labelSelector.default({}),
        platforms: z.array(z.string().regex(/^[a-z0-9]+\/[a-z0-9]+(?:\/[a-z0-9]+)?$/)).optional(),
      }),
    )
    .max(1000),
});
export type ScheduleFile = z.infer<typeof scheduleFile>;

export interface SchedulerDeps {
  readonly file: string;
  readonly intervalMs: number;
  /** How often the lock is refreshed, in ms; well within the lock's TTL. */
  readonly lockRefreshMs: number;
  readonly defaultPlatforms: readonly string[];
  readonly lock: LeaderLock;
  readonly resolver: ImageResolver;
  readonly requests: PreheatRequests;
  readonly metrics: WatcherMetrics;
  readonly logger: Logger;
}

export class Scheduler {
  readonly #deps: SchedulerDeps;
  readonly #stopping = new AbortController();
  #lockTimer: NodeJS.Timeout | undefined;
  #checkTimer: NodeJS.Timeout | undefined;
  #checking: Promise<void> | undefined;
  #refreshing: Promise<void> | undefined;

  constructor(deps: SchedulerDeps) {
    this.#deps = deps;
  }

  start(): void {
    const { lock, metrics, logger } = this.#deps;
    const refresh = async (): Promise<void> => {
      const wasLeader = lock.isLeader;
      const leads = await lock.refresh();
      metrics.scheduleLeader.set(leads ? 1 : 0);
      if (leads && !wasLeader) {
        logger.info('took the schedule lock; checking scheduled images');
        this.#check();
      }
    };
    // One refresh at a time: two overlapping compare-and-set writes would lose the lock.
    const refreshOnce = (): void => {
      this.#refreshing ??= refresh().finally(() => (this.#refreshing = undefined));
    };
    refreshOnce();
    this.#lockTimer = setInterval(refreshOnce, this.#deps.lockRefreshMs);
    this.#checkTimer = setInterval(() => this.#check(), this.#deps.intervalMs);
  }

  #check(): void {
    // One check at a time; a slow registry makes intervals pass, not pile up.
    if (this.#checking !== undefined || !this.#deps.lock.isLeader) {
      return;
    }
    this.#checking = this.checkOnce().finally(() => (this.#checking = undefined));
  }

  /** Reads the file and queues a job for every image whose digest is new. Never throws. */
  async checkOnce(): Promise<void> {
    const { file, resolver, requests, metrics, logger, defaultPlatforms } = this.#deps;
    let schedule: ScheduleFile;
    try {
      schedule = scheduleFile.parse(JSON.parse(await readFile(file, 'utf8')));
    } catch (error) {
      metrics.scheduleChecks.inc({ result: 'failed' });
      logger.warn(
        { file, error: String(error).slice(0, 1024) },
        'schedule file unreadable; keeping to the last interval',
      );
      return;
    }
    for (const entry of schedule.images) {
      if (this.#stopping.signal.aborted || !this.#deps.lock.isLeader) {
        return;
      }
      try {
        const { reference, registry } = resolver.parse(entry.image);
        const digest = await resolver.currentDigest(registry, reference, this.#stopping.signal);
        const result = await requests.submit(
          {
            registry: registry.host,
            repository: reference.repository,
            digest: digest.toString(),
            scope: entry.scope,
            selector: entry.selector,
            platforms: entry.platforms ?? defaultPlatforms,
          },
          entry.image,
          'schedule',
        );
        metrics.scheduleChecks.inc({ result: result.duplicate ? 'unchanged' : 'queued' });
      } catch (error) {
        metrics.scheduleChecks.inc({ result: 'failed' });
        logger.warn({ image: entry.image, err: error }, 'scheduled image not checked');
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopping.abort();
    clearInterval(this.#lockTimer);
    clearInterval(this.#checkTimer);
    await this.#checking;
    await this.#refreshing;
    await this.#deps.lock.release();
    this.#deps.metrics.scheduleLeader.set(0);
  }
}
