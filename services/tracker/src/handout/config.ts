/** Configuration of the hand-out policy. */
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

export const handoutConfig = z.object({
  /**
   * Window over which hand-outs per peer are counted to balance upload load, in ms
   * (default 10 000). Longer spreads load more evenly; shorter forgets a burst sooner.
   */
  SHOAL_TRACKER_LOAD_WINDOW_MS: envInt(10_000).refine((ms) => ms > 0, 'must be positive'),
});
