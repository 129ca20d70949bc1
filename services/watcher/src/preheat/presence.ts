/**
 * The watcher's view of the agents' presence bucket (`shoal_agents`).
 *
 * The watcher declares the bucket; agents only put their entries into it. An agent that found
 * the bucket missing (started before the watcher on a fresh install, or after a NATS store was
 * lost) puts its entry at its next try, up to one presence interval later. Until then the
 * bucket exists but does not list every live agent, and a preheat of scope `nodes` that read it
 * at once would leave those nodes out without a word. So a bucket younger than one agent
 * presence interval (plus a margin for the put itself) is not yet trusted: `settled` waits
 * until it is old enough, or until the bucket is declared at all.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import type { KV } from '@nats-io/kv';
import { agentPresence, decodeMessage, type AgentPresence } from '@shoal/proto';

/** Added to the agents' interval for their put to land, in ms. */
const PUT_MARGIN_MS = 2_000;
/** How often `settled` looks again while the bucket is not declared, in ms. */
const UNDECLARED_POLL_MS = 500;

export interface AgentsView {
  /** The agents alive now ([] while the bucket is not declared). */
  live(): Promise<AgentPresence[]>;
  /**
   * Resolves once the bucket lists every live agent: it is declared and older than one agent
   * presence interval. Rejects when it is still not declared after `maxWaitMs`, or on `signal`.
   */
  settled(signal: AbortSignal, maxWaitMs: number): Promise<void>;
}

export class AgentPresenceView implements AgentsView {
  readonly #intervalMs: number;
  readonly #now: () => number;
  #kv: KV | undefined;
  /** From this time on the bucket lists every live agent, in ms since the epoch. */
  #completeAt = 0;

  /** `intervalMs`: the agents' `SHOAL_AGENT_PRESENCE_INTERVAL_MS`. */
  constructor(intervalMs: number, now: () => number = Date.now) {
    this.#intervalMs = intervalMs;
    this.#now = now;
  }

  /**
   * Uses `kv`, created at `createdMs` by the NATS server's clock. The wait is bounded by one
   * interval from now too, so a server clock ahead of ours cannot hold preheats longer.
   */
  bind(kv: KV, createdMs: number): void {
    this.#kv = kv;
    const settleMs = this.#intervalMs + PUT_MARGIN_MS;
    const createdAt = Number.isFinite(createdMs) ? createdMs : this.#now();
    this.#completeAt = Math.min(createdAt + settleMs, this.#now() + settleMs);
  }

  async live(): Promise<AgentPresence[]> {
    const kv = this.#kv;
    if (kv === undefined) {
      return [];
    }
    const found: AgentPresence[] = [];
    for await (const key of await kv.keys()) {
      const entry = await kv.get(key);
      if (entry?.operation !== 'PUT') {
        continue;
      }
      const decoded = decodeMessage(agentPresence, entry.value);
      if (decoded.ok) {
        found.push(decoded.value);
      }
    }
    return found;
  }

  async settled(signal: AbortSignal, maxWaitMs: number): Promise<void> {
    const giveUpAt = this.#now() + maxWaitMs;
    while (this.#kv === undefined) {
      if (this.#now() >= giveUpAt) {
        throw new Error(
          "the agents' presence bucket shoal_agents is not declared (check the watcher's NATS permissions): the nodes are not known yet",
        );
      }
      await sleep(UNDECLARED_POLL_MS, undefined, { signal });
    }
    const waitMs = this.#completeAt - this.#now();
    if (waitMs > 0) {
      await sleep(waitMs, undefined, { signal });
    }
  }
}
