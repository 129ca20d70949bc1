/**
 * `agent-presence`: an agent's entry in the `shoal_agents` KV bucket, refreshed at an interval
 * and gone after the bucket's TTL once the agent stops. The watcher reads it to know which
 * agents a `nodes` preheat waits for.
 */
import { z } from 'zod';

import { labelSelector, peerId } from './common.js';

export const agentPresence = z.strictObject({
  type: z.literal('agent-presence'),
  peer: peerId,
  /** Labels preheat selectors match against (`SHOAL_AGENT_LABELS`). */
  labels: labelSelector,
  mode: z.enum(['mixed', 'seeder', 'leecher']),
  zone: z.string().max(63).optional(),
  /** When the entry was written, in ms since the epoch. */
  at: z.int().nonnegative(),
});
export type AgentPresence = z.infer<typeof agentPresence>;

/** True when every pair of `selector` is among `labels`. */
export function selectorMatches(
  selector: Readonly<Record<string, string>>,
  labels: Readonly<Record<string, string>>,
): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}
