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
});
