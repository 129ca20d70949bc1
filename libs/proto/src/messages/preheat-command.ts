/**
 * `preheat`: warm an image before the rollout that needs it. Issued by the watcher (webhook,
 * schedule) or an operator; lives on a work-queue stream so a restart loses none.
 */
import { z } from 'zod';

import { jobId, labelSelector } from './common.js';

export const preheatScope = z.enum(['seed', 'nodes']);

export const preheatCommand = z.strictObject({
  type: z.literal('preheat'),
  /** Job id, also the JetStream message id (duplicate deliveries collapse). */
  id: jobId,
  /** Full image reference, e.g. `registry.example.com/team/app:v1` or `...@sha256:...`. */
  image: z.string().min(1).max(512),
  /** `seed`: the seed server and object gateway; `nodes`: also the agents' caches. */
  scope: preheatScope,
  /** Label selector for `nodes` scope: only agents whose node labels match all pairs. */
  selector: labelSelector.default({}),
  /** Platforms (`os/arch[/variant]`) an index fans out to; empty means all. */
  platforms: z.array(z.string().regex(/^[a-z0-9]+\/[a-z0-9]+(?:\/[a-z0-9]+)?$/)).default([]),
  origin: z.enum(['webhook', 'schedule', 'api']),
});
export type PreheatCommand = z.infer<typeof preheatCommand>;

/** Subject on which preheat commands are queued. */
export const PREHEAT_COMMAND_SUBJECT = 'shoal.preheat.v1.command';
