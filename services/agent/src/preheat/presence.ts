/**
 * The agent's entry in the `shoal_agents` bucket: its labels and mode, refreshed at an
 * interval. The bucket's TTL removes the entry of an agent that stopped refreshing, so the
 * watcher waits only for agents that are alive.
 */
import type { KV } from '@nats-io/kv';
import { agentPresence, encodeMessage, type AgentPresence } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { isMissingResource } from '@shoal/runtime/nats';

export class PresenceBeacon {
  readonly #kv: KV;
  readonly #entry: Omit<AgentPresence, 'at'>;
  readonly #logger: Logger;
  readonly #recreate: () => Promise<unknown>;
  #timer: NodeJS.Timeout | undefined;
  /** The last put found the bucket gone: the next beat creates it first. */
  #missing = false;

  /**
   * `recreate` declares the bucket again; it runs only after a put found the bucket gone (a
   * NATS server back with its store lost), never on a plain reconnect, and at most once a
   * beat: the beats of many agents are spread over the interval by their start times.
   */
  constructor(
    kv: KV,
    entry: Omit<AgentPresence, 'at'>,
    logger: Logger,
    recreate: () => Promise<unknown>,
  ) {
    this.#kv = kv;
    this.#entry = entry;
    this.#logger = logger;
    this.#recreate = recreate;
  }

  /** Writes the entry now and then every `intervalMs`. */
  async start(intervalMs: number): Promise<void> {
    await this.#beat();
    this.#timer = setInterval(() => void this.#beat(), intervalMs);
    this.#timer.unref();
  }

  async #beat(): Promise<void> {
    try {
      if (this.#missing) {
        await this.#recreate();
        this.#missing = false;
        this.#logger.info('presence bucket declared again (it was gone)');
      }
      await this.#kv.put(
        this.#entry.peer,
        encodeMessage(agentPresence, { ...this.#entry, at: Date.now() }),
      );
    } catch (error) {
      this.#missing = isMissingResource(error);
      this.#logger.warn({ err: error }, 'could not refresh the presence entry');
    }
  }

  /** Stops refreshing and removes the entry, so preheats stop waiting for this agent. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#kv.delete(this.#entry.peer).catch(() => undefined);
  }
}
