/** Configuration of the swarm view. */
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

export const swarmConfig = z.object({
  /**
   * How long a piece-have counts after it was published, in ms (default 1 800 000, 30 min).
   * Agents re-announce well within it; a peer that stops announcing (crashed without a
   * peer-gone) drops out of hand-outs when it passes.
   */
  SHOAL_TRACKER_PEER_MAX_AGE_MS: envInt(30 * 60_000).refine((ms) => ms > 0, 'must be positive'),
  /**
   * Most (blob, peer) entries the swarm view holds, and most peer departures it remembers
   * (default 1 000 000: 10,000 nodes with 100 blobs each). Past it the entry updated longest
   * ago goes first, so a flood of haves cannot grow the tracker's memory without bound;
   * sizing in the README's "JetStream limits".
   */
  SHOAL_TRACKER_MAX_ENTRIES: envInt(1_000_000).refine((n) => n > 0, 'must be positive'),
  /**
   * The peer ids whose haves may say `seed: true`, comma-separated; an entry ending in `*`
   * is a prefix (e.g. `seed-shoal-seedserver-*`). Empty (the default): any peer. A seed is
   * handed out even without useful pieces and stops seed requests for its blob, so with
   * per-node NATS identity a node must not be able to claim to be one: a claim from another
   * peer is refused, logged and counted.
   */
  SHOAL_TRACKER_SEED_PEERS: z
    .string()
    .default('')
    .transform((text) =>
      text
        .split(',')
        .map((entry) => entry.trim())
        .filter((entry) => entry !== ''),
    )
    .pipe(
      z.array(
        z
          .string()
          .regex(/^[A-Za-z0-9_-]{1,64}\*?$/, 'each entry: a peer id, or a prefix ending in *'),
      ),
    ),
});

/** True when `peer` may announce itself as a seed under `SHOAL_TRACKER_SEED_PEERS`. */
export function seedPeerMatcher(entries: readonly string[]): (peer: string) => boolean {
  if (entries.length === 0) {
    return () => true;
  }
  return (peer) =>
    entries.some((entry) =>
      entry.endsWith('*') ? peer.startsWith(entry.slice(0, -1)) : peer === entry,
    );
}
