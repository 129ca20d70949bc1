/**
 * `seed-failed`: the seed server gave up seeding a blob (no disk room for it, the origin
 * refused it, its bytes did not match the digest). Published on the blob's piece-hashes
 * subject, which every agent downloading the blob already follows, right after the failed
 * run's hashes were removed: an agent stops waiting on the seed at once and reads what no
 * peer holds from the origin, instead of waiting out its stall timeout. The seed server's
 * next run of the blob removes the notice before it publishes hashes.
 */
import { z } from 'zod';

import { digestText, peerId } from './common.js';

/** Why a seed run failed, as far as agents and operators care. */
export const SEED_FAILURE_REASONS = ['disk-full', 'origin', 'verification', 'other'] as const;
export type SeedFailureReason = (typeof SEED_FAILURE_REASONS)[number];

export const seedFailed = z.strictObject({
  type: z.literal('seed-failed'),
  blob: digestText,
  /** The seed server that gave up (its peer id). */
  seed: peerId,
  reason: z.enum(SEED_FAILURE_REASONS),
});
export type SeedFailed = z.infer<typeof seedFailed>;
