/** `preheat-progress`: state changes and counts of a preheat job, for its status API. */
import { z } from 'zod';

export const preheatState = z.enum(['queued', 'running', 'done', 'failed']);

export const preheatProgress = z.strictObject({
  type: z.literal('preheat-progress'),
  id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  state: preheatState,
  blobsDone: z.int().nonnegative(),
  blobsTotal: z.int().nonnegative(),
  /** Why a job failed, for the operator. */
  error: z.string().max(1024).optional(),
});
export type PreheatProgress = z.infer<typeof preheatProgress>;

/** Subject of one job's progress events. */
export const preheatProgressSubject = (id: string): string => `shoal.preheat.v1.progress.${id}`;
