/**
 * `seed-request`: asks the seed server to bring a blob into the cluster (from the object
 * gateway, or once from the origin). Published with the blob digest as message id so
 * JetStream drops duplicates from agents asking at the same moment.
 */
import { z } from 'zod';

import { digestSubjectTokens, digestText, jobId, registryHost, repositoryName } from './common.js';

export const seedRequest = z.strictObject({
  type: z.literal('seed-request'),
  blob: digestText,
  registry: registryHost,
  repository: repositoryName,
  /** Why: a want nobody could answer, or a preheat job (its id). */
  reason: z.discriminatedUnion('kind', [
    z.strictObject({ kind: z.literal('want') }),
    z.strictObject({ kind: z.literal('preheat'), job: jobId }),
  ]),
});
export type SeedRequest = z.infer<typeof seedRequest>;

/** Subject of a blob's seed requests. */
export const seedRequestSubject = (blob: string): string =>
  `shoal.seed.v1.request.${digestSubjectTokens(blob)}`;
