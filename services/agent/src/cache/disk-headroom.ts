/**
 * Whether the cache's disk has room for another download. When it has not, the mirror passes
 * blobs through from the origin uncached (see `mirror/pass-through.ts`) instead of failing the
 * pull: a full disk must never stop a node from pulling images.
 *
 * Two signals say the disk is tight: the free space under the cache directory (from statfs,
 * looked at most once per `statIntervalMs`) below `minFreeBytes`, or a write that failed with
 * ENOSPC or EDQUOT within the last `cooldownMs`. The second catches what the first cannot:
 * a quota, a blob larger than the free space, or another process filling the disk meanwhile.
 */
import { freeDiskBytes, isDiskFull } from '@shoal/pieces';

export { isDiskFull };

/** Free space of the filesystem holding `dir`, in bytes (for tests: a stand-in). */
export type FreeBytes = (dir: string) => Promise<number>;

export interface DiskHeadroomOptions {
  /** Below this many free bytes the disk counts as full. */
  readonly minFreeBytes: number;
  /** How long a disk-full write error keeps the disk counted as full, in ms. Default 60 s. */
  readonly cooldownMs?: number;
  /** How long a free-space reading is trusted, in ms. Default 1 s. */
  readonly statIntervalMs?: number;
  /** The clock, in ms. */
  readonly now?: () => number;
  readonly freeBytes?: FreeBytes;
}

export type TightReason = 'low-free-space' | 'write-failed';

export class DiskHeadroom {
  readonly #dir: string;
  readonly #minFree: number;
  readonly #cooldownMs: number;
  readonly #statIntervalMs: number;
  readonly #now: () => number;
  readonly #freeBytes: FreeBytes;
  #fullUntil = 0;
  #free: { bytes: number; at: number } | undefined;
  #reading: Promise<number> | undefined;

  constructor(dir: string, options: DiskHeadroomOptions) {
    this.#dir = dir;
    this.#minFree = options.minFreeBytes;
    this.#cooldownMs = options.cooldownMs ?? 60_000;
    this.#statIntervalMs = options.statIntervalMs ?? 1000;
    this.#now = options.now ?? Date.now;
    this.#freeBytes = options.freeBytes ?? freeDiskBytes;
  }

  /**
   * Why the disk cannot take another download now, or undefined when it can. A failed
   * free-space reading does not count as full: the write itself will tell.
   */
  async tight(): Promise<TightReason | undefined> {
    const now = this.#now();
    if (now < this.#fullUntil) {
      return 'write-failed';
    }
    if (this.#minFree <= 0) {
      return undefined;
    }
    let free = this.#free;
    if (free === undefined || now - free.at >= this.#statIntervalMs) {
      this.#reading ??= this.#freeBytes(this.#dir).finally(() => {
        this.#reading = undefined;
      });
      try {
        free = { bytes: await this.#reading, at: now };
        this.#free = free;
      } catch {
        return undefined;
      }
    }
    return free.bytes < this.#minFree ? 'low-free-space' : undefined;
  }

  /**
   * Looks at a failure: when it (or its cause) is a disk-full error, the disk counts as full
   * for the cooldown and this returns true.
   */
  noteFailure(error: unknown): boolean {
    if (!isDiskFull(error)) {
      return false;
    }
    this.#fullUntil = this.#now() + this.#cooldownMs;
    return true;
  }
}
