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
  /** Why a job failed, for the operator. */
  error: z.string().max(1024).optional(),
});
export type PreheatProgress = z.infer<typeof preheatProgress>;

/** Subject of one job's progress events. */
export const preheatProgressSubject = (id: string): string => `shoal.preheat.v1.progress.${id}`;
