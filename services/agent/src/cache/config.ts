/** Configuration of the agent's on-disk cache. */
import { envInt } from '@shoal/runtime';
import { z } from 'zod';

export const cacheConfig = z.object({
  /** Directory holding cached blobs and manifests; created when missing. */
  SHOAL_AGENT_CACHE_DIR: z.string().min(1).default('/var/lib/shoal/agent'),
  /** Size quota of the cache, in bytes; least recently used content is evicted past it. */
  SHOAL_AGENT_CACHE_MAX_BYTES: envInt(50 * 1024 ** 3),
  /**
   * Free bytes the cache leaves on its filesystem: below this, blobs are passed through from
   * the origin uncached (verified all the same) instead of downloaded into the cache. 0 turns
   * the check off; a write that fails with ENOSPC still switches to pass-through for a minute.
   */
  SHOAL_AGENT_CACHE_MIN_FREE_BYTES: envInt(1024 ** 3),
});
