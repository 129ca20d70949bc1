/** Configuration of the agent's part in preheat: who it is to selectors, and how hard it pulls. */
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

/** `key=value,key=value` into a record; keys and values as Kubernetes labels allow. */
const labelList = z
  .string()
  .default('')
  .transform((text, ctx): Record<string, string> => {
    const labels: Record<string, string> = {};
    for (const pair of text
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '')) {
      const eq = pair.indexOf('=');
      const key = eq === -1 ? pair : pair.slice(0, eq);
      const value = eq === -1 ? '' : pair.slice(eq + 1);
      if (!/^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$/.test(key) || value.length > 63) {
        ctx.addIssue({ code: 'custom', message: `"${pair}" is not a key=value label` });
        continue;
      }
      labels[key] = value;
    }
    return labels;
  });

export const preheatConfig = z.object({
  /**
   * The node's labels for preheat selectors, as `key=value` pairs, comma-separated (default
   * none), e.g. `shoal.io/pool=gpu,topology.kubernetes.io/zone=eu-1a`.
   */
  SHOAL_AGENT_LABELS: labelList,
  /** Blobs a preheat pulls at once on this node (default 2). */
  SHOAL_AGENT_PREHEAT_CONCURRENCY: envInt(2),
  /** Download limit for preheat pulls, in bytes/s, on top of the agent's own limit; 0: none (default). */
  SHOAL_AGENT_PREHEAT_RATE_BYTES: envInt(0),
  /** How often the agent refreshes its presence entry for the watcher, in ms (default 10 000). */
  SHOAL_AGENT_PRESENCE_INTERVAL_MS: envInt(10_000),
  /**
   * After NATS comes back without this node's task consumer (its store lost), the agent
   * declares it again after a random wait below this, in ms (default 30 000), doubling while
   * that fails: thousands of agents do not hit the recovering cluster in the same second.
   */
  SHOAL_AGENT_NATS_RECOVERY_SPREAD_MS: envInt(30_000),
});

export type PreheatConfig = z.infer<typeof preheatConfig>;
