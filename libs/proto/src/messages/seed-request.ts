/**
 * `seed-request`: asks the seed server to bring a blob into the cluster (from the object
 * gateway, or once from the origin). Published with the blob digest as message id so
 * JetStream drops duplicates from agents asking at the same moment.
 */
import { z } from 'zod';

import { digestSubjectTokens, digestText } from './common.js';

export const seedRequest = z.strictObject({
  type: z.literal('seed-request'),
  blob: digestText,
  registry: z.string().min(1).max(255),
  repository: z.string().min(1).max(255),
  /** Why: a want nobody could answer, or a preheat job (its id). */
  reason: z.discriminatedUnion('kind', [
    z.strictObject({ kind: z.literal('want') }),
    z.strictObject({ kind: z.literal('preheat'), job: z.string().min(1).max(64) }),
  ]),
});
export type SeedRequest = z.infer<typeof seedRequest>;

/** Subject of a blob's seed requests. */
export const seedRequestSubject = (blob: string): string =>
  `shoal.seed.v1.request.${digestSubjectTokens(blob)}`;
