/**
 * One watcher replica at a time runs the schedule: the one whose name is in the lock entry of
 * the `shoal_watcher_leader` bucket. The leader rewrites the entry well within the bucket's
 * TTL; a leader that dies stops rewriting it, the entry expires, and another replica takes it.
 * Writes are compare-and-set on the entry's revision, so two replicas never both lead.
 */
import type { KV } from '@nats-io/kv';
import type { Logger } from '@shoal/runtime';

const LOCK_KEY = 'schedule';

export class LeaderLock {
  readonly #kv: KV;
  readonly #self: string;
  readonly #logger: Logger;
  #revision: number | undefined;

  constructor(kv: KV, self: string, logger: Logger) {
    this.#kv = kv;
    this.#self = self;
    this.#logger = logger;
  }

  get isLeader(): boolean {
    return this.#revision !== undefined;
  }

  /** Takes or keeps the lock; true while this replica leads. Never throws. */
  async refresh(): Promise<boolean> {
    const value = JSON.stringify({ owner: this.#self, at: Date.now() });
    try {
      this.#revision =
        this.#revision === undefined
          ? await this.#takeOver(value)
          : await this.#kv.update(LOCK_KEY, value, this.#revision);
      return true;
    } catch (error) {
      if (this.#revision !== undefined) {
        this.#logger.warn({ err: error }, 'lost the schedule lock');
      }
      this.#revision = undefined;
      return false;
    }
  }

  /**
   * Creates the entry; or, when it is in this replica's own name (left from before a restart,
   * or a refresh that lost its revision), takes it over at its revision.
   */
  async #takeOver(value: string): Promise<number> {
    try {
      return await this.#kv.create(LOCK_KEY, value);
    } catch (error) {
      const held = await this.#kv.get(LOCK_KEY);
      if (held?.operation !== 'PUT' || held.json<{ owner?: unknown }>().owner !== this.#self) {
        throw error;
      }
      return this.#kv.update(LOCK_KEY, value, held.revision);
    }
  }

  /** Gives the lock up, so another replica need not wait for the TTL. */
  async release(): Promise<void> {
    if (this.#revision === undefined) {
      return;
    }
    const revision = this.#revision;
    this.#revision = undefined;
    await this.#kv.delete(LOCK_KEY, { previousSeq: revision }).catch(() => undefined);
  }
}
