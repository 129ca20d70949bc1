/** Configuration of the want queue. */
import { envBool, envInt } from '@shoal/runtime';
import { z } from 'zod';

export const wantsConfig = z.object({
  /**
   * Most wants one replica holds pulled and unanswered, at most one per (blob, asker)
   * (default 10 000). A newer want of the same asker for the same blob replaces the waiting
   * one; a full queue stops pulling until it has room. Wants sit in it at most about this
   * many divided by the replica's answers per second, which must stay well under the want
   * consumer's 10 s acknowledgement wait; two replicas' queues together should hold a want
   * for every download in progress at once.
   */
  SHOAL_TRACKER_WANT_QUEUE_MAX: envInt(10_000).refine(
    (n) => n >= 1 && n <= 20_000,
    'must be from 1 to 20 000 (the want consumer’s acknowledgement limit)',
  ),
  /**
   * Answer the haves of a download this replica answered with a fresh hand-out for the
   * pieces it still lacks, until the download completes (default true): a download in
   * progress then learns of new holders without asking, and agents ask again only when they
   * know nobody holding a piece they lack. Off: new holders come with answers to wants only.
   */
  SHOAL_TRACKER_PUSH_ON_HAVE: envBool(true),
});
