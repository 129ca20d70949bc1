/** `preheat-progress`: state changes and counts of a preheat job, for its status API. */
import { z } from 'zod';

import { jobId } from './common.js';

export const preheatState = z.enum(['queued', 'running', 'done', 'failed']);

export const preheatProgress = z.strictObject({
  type: z.literal('preheat-progress'),
  id: jobId,
  state: preheatState,
  blobsDone: z.int().nonnegative(),
  blobsTotal: z.int().nonnegative(),
  /** Scope `nodes`: agents that finished every blob, and agents the job was handed to. */
  nodesDone: z.int().nonnegative().optional(),
  nodesTotal: z.int().nonnegative().optional(),
  /**
   * Bytes of the image's blobs, and of those the seed server holds (counted a blob at a time).
   * Added in v1 without a version bump: optional, absent from older watchers' events.
   */
  bytesDone: z.int().nonnegative().optional(),
  bytesTotal: z.int().nonnegative().optional(),
  /** Scope `nodes`: the image's bytes times the agents handed the job, and those warm on them. */
  nodeBytesDone: z.int().nonnegative().optional(),
  nodeBytesTotal: z.int().nonnegative().optional(),
  /** Why a job failed, for the operator. */
  error: z.string().max(1024).optional(),
});
export type PreheatProgress = z.infer<typeof preheatProgress>;

/** Subject of one job's progress events. */
export const preheatProgressSubject = (id: string): string => `shoal.preheat.v1.progress.${id}`;
