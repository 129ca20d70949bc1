/**
 * `preheat-report`: the seed server or an agent tells a preheat job that one blob is warm (or
 * could not be warmed) on it. The watcher running the job counts them; they live on a stream
 * so a restarted watcher replays what was reported while it was down.
 */
import { z } from 'zod';

import { digestText, jobId, peerId } from './common.js';

export const preheatReport = z.strictObject({
  type: z.literal('preheat-report'),
  job: jobId,
  /** Who reports: the seed server's or the agent's peer id. */
  peer: peerId,
  role: z.enum(['seed', 'agent']),
  blob: digestText,
  /** True when the blob is now held, verified (and, for the seed, in the object gateway). */
  ok: z.boolean(),
  /** Why it failed, for the operator. */
  error: z.string().max(1024).optional(),
});
export type PreheatReport = z.infer<typeof preheatReport>;

/**
 * Subject of one report: the role and peer are in it, so NATS permissions can keep agents from
 * reporting as the seed server, and a report whose body claims otherwise is refused.
 */
export const preheatReportSubject = (
  job: string,
  role: PreheatReport['role'],
  peer: string,
): string => `shoal.preheat.v1.report.${job}.${role}.${peer}`;

/** Subjects of every report of one job. */
export const preheatReportSubjects = (job: string): string => `shoal.preheat.v1.report.${job}.>`;
