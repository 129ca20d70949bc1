/**
 * The agent's entry in the `shoal_agents` bucket: its labels and mode, refreshed at an
 * interval. The bucket's TTL removes the entry of an agent that stopped refreshing, so the
 * watcher waits only for agents that are alive.
 *
 * The watcher declares the bucket; the agent only binds to it and may not create it (a stream's
 * creator picks its subjects and republish rules, which would let an agent's puts land on
 * subjects it may not publish to). While the bucket is missing (a fresh install before the
 * watcher started, a NATS store lost until the watcher declares it again) the agent keeps
 * working without presence: preheats of scope `nodes` do not see it until its next put lands.
 */
import type { KV } from '@nats-io/kv';
import { agentPresence, encodeMessage, type AgentPresence } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { isMissingResource } from '@shoal/runtime/nats';

export class PresenceBeacon {
  readonly #kv: KV;
  readonly #entry: Omit<AgentPresence, 'at'>;
  readonly #logger: Logger;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Puts in a row that found the bucket missing; 0 while it is there. */
  #missing = 0;

  constructor(kv: KV, entry: Omit<AgentPresence, 'at'>, logger: Logger) {
    this.#kv = kv;
    this.#entry = entry;
    this.#logger = logger;
  }

  /**
   * Writes the entry now and then every `intervalMs`. While the bucket is missing the agent
   * tries again at the same interval, with jitter (half to one interval, so thousands of agents
   * do not all put in the same second): a put into a missing bucket costs no JetStream API call
   * (no responders), and a longer wait would outlast the entry's TTL and the watcher's grace
   * for agents, dropping the node out of preheats of scope `nodes` after the bucket came back.
   */
  async start(intervalMs: number): Promise<void> {
    const next = (): void => {
      if (this.#stopped) {
        return;
      }
      const waitMs = this.#missing === 0 ? intervalMs : intervalMs * (0.5 + Math.random() / 2);
      this.#timer = setTimeout(() => void this.#beat().then(next), waitMs);
      this.#timer.unref();
    };
    await this.#beat();
    next();
  }

  async #beat(): Promise<void> {
    try {
      await this.#kv.put(
        this.#entry.peer,
        encodeMessage(agentPresence, { ...this.#entry, at: Date.now() }),
      );
      if (this.#missing > 0) {
        this.#logger.info('presence bucket found: preheats of scope nodes see this node again');
      }
      this.#missing = 0;
    } catch (error) {
      if (!isMissingResource(error)) {
        this.#logger.warn({ err: error }, 'could not refresh the presence entry');
        return;
      }
      // Logged once per absence, not at every retry.
      if (this.#missing === 0) {
        this.#logger.warn(
          { err: error },
          'presence bucket shoal_agents missing (the watcher declares it): preheats of scope nodes do not see this node until it exists; retrying at the presence interval',
        );
      }
      this.#missing += 1;
    }
  }

  /** Stops refreshing and removes the entry, so preheats stop waiting for this agent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (this.#missing === 0) {
      await this.#kv.delete(this.#entry.peer).catch(() => undefined);
    }
  }
}
