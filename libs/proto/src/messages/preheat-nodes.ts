/**
 * `preheat-nodes`: the blobs of a preheat job with scope `nodes`, handed to every agent. Each
 * agent reads the stream with its own durable consumer, keeps the task if its labels match the
 * selector, pulls the blobs into its cache and reports each one.
 */
import { z } from 'zod';

import { digestText, jobId, labelSelector, registryHost, repositoryName } from './common.js';

export const preheatNodes = z.strictObject({
  type: z.literal('preheat-nodes'),
  job: jobId,
  /** The registry as agents name it (`ns=`), e.g. `registry.example.com`. */
  registry: registryHost,
  repository: repositoryName,
  blobs: z
    .array(z.strictObject({ digest: digestText, size: z.int().nonnegative() }))
    .min(1)
    .max(4096),
  /** Only agents whose labels include every pair take part (empty: all). */
  selector: labelSelector.default({}),
});
export type PreheatNodes = z.infer<typeof preheatNodes>;

/** Subject of node preheat tasks. */
export const PREHEAT_NODES_SUBJECT = 'shoal.preheat.v1.nodes';

/**
 * The durable consumer through which one agent reads node preheat tasks: the peer id itself.
 * Per-node NATS permissions allow an agent this consumer only, so no agent takes another's
 * tasks; nats-server 2.9 fills a permission template only as a whole subject token, which is
 * why the name has no `agent-preheat-` prefix (the stream has no other consumers).
 */
export const preheatNodesConsumer = (peer: string): string => peer;
