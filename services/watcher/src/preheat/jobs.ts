/**
 * Preheat job status, one entry per job in the `shoal_preheat_jobs` KV bucket: what the API
 * and the CLI show, and how a redelivered command knows its job already finished.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import {
  encodeMessage,
  jobId,
  labelSelector,
  preheatProgress,
  preheatProgressSubject,
  preheatScope,
  preheatState,
} from '@shoal/proto';
import { z } from 'zod';

export const jobStatus = z.strictObject({
  id: jobId,
  /** The image as requested, e.g. `registry.example.com/team/app:v1`. */
  image: z.string(),
  /** What is preheated: `registry/repository@digest` of the pushed or resolved manifest. */
  resolved: z.string(),
  scope: preheatScope,
  selector: labelSelector,
  platforms: z.array(z.string()),
  origin: z.enum(['webhook', 'schedule', 'api']),
  state: preheatState,
  /** Blobs (configs and layers) of the wanted platforms. */
  blobsTotal: z.int().nonnegative(),
  /** Blobs the seed server holds and has stored in the object gateway. */
  blobsDone: z.int().nonnegative(),
  /** Scope `nodes`: agents handed the job, and those done with every blob. */
  nodesTotal: z.int().nonnegative().optional(),
  nodesDone: z.int().nonnegative().optional(),
  /**
   * Bytes of those blobs, and bytes of the blobs the seed server holds. Progress is counted
   * a blob at a time, as the seed server reports blobs. Absent in entries of older watchers.
   */
  bytesTotal: z.int().nonnegative().optional(),
  bytesDone: z.int().nonnegative().optional(),
  /** Scope `nodes`: the image's bytes times the agents handed the job, and those reported warm. */
  nodeBytesTotal: z.int().nonnegative().optional(),
  nodeBytesDone: z.int().nonnegative().optional(),
  /** When the job first started running, and when its node phase began (ms since the epoch). */
  startedAt: z.int().optional(),
  nodesStartedAt: z.int().optional(),
  /** The first failures, for the operator (peer, blob, reason). */
  failures: z.array(z.strictObject({ peer: z.string(), blob: z.string(), error: z.string() })),
  /** Every failure of the run, of which `failures` keeps the first few. */
  failuresTotal: z.int().nonnegative().optional(),
  error: z.string().optional(),
  /** ms since the epoch. */
  createdAt: z.int(),
  updatedAt: z.int(),
});
export type JobStatus = z.infer<typeof jobStatus>;

export class JobStore {
  readonly #kv: KV;

  constructor(kv: KV) {
    this.#kv = kv;
  }

  async get(id: string): Promise<JobStatus | undefined> {
    return (await this.#entry(id))?.status;
  }

  async #entry(id: string): Promise<{ status: JobStatus; revision: number } | undefined> {
    const entry = await this.#kv.get(id);
    if (entry === null || entry.operation !== 'PUT' || entry.length === 0) {
      return undefined;
    }
    const parsed = jobStatus.safeParse(entry.json());
    return parsed.success ? { status: parsed.data, revision: entry.revision } : undefined;
  }

  /**
   * Replaces `previous` with `status` only if the entry is still what `previous` was read
   * as (same `updatedAt` and state); false when someone changed it meanwhile.
   */
  async replace(status: JobStatus, previous: JobStatus): Promise<boolean> {
    const current = await this.#entry(status.id);
    if (
      current === undefined ||
      current.status.updatedAt !== previous.updatedAt ||
      current.status.state !== previous.state
    ) {
      return false;
    }
    try {
      await this.#kv.update(status.id, JSON.stringify(status), current.revision);
      return true;
    } catch {
      return false;
    }
  }

  /** Creates the entry; false when the job exists already. */
  async create(status: JobStatus): Promise<boolean> {
    try {
      await this.#kv.create(status.id, JSON.stringify(status));
      return true;
    } catch (error) {
      if ((await this.get(status.id)) !== undefined) {
        return false;
      }
      throw error;
    }
  }

  async put(status: JobStatus): Promise<void> {
    await this.#kv.put(status.id, JSON.stringify(status));
  }

  /** The newest jobs first, at most `limit`. */
  async list(limit: number): Promise<JobStatus[]> {
    const jobs: JobStatus[] = [];
    for await (const key of await this.#kv.keys()) {
      const job = await this.get(key);
      if (job !== undefined) {
        jobs.push(job);
      }
    }
    return jobs.sort((a, b) => b.createdAt - a.createdAt).slice(0, limit);
  }
}

/** Publishes a job's state and counts as a progress event, for whoever follows the job. */
export async function publishProgress(
  js: JetStreamClient,
  status: JobStatus,
  timeoutMs: number,
): Promise<void> {
  await js.publish(
    preheatProgressSubject(status.id),
    encodeMessage(preheatProgress, {
      type: 'preheat-progress',
      id: status.id,
      state: status.state,
      blobsDone: status.blobsDone,
      blobsTotal: status.blobsTotal,
      ...(status.nodesTotal === undefined
        ? {}
        : { nodesDone: status.nodesDone ?? 0, nodesTotal: status.nodesTotal }),
      ...(status.bytesTotal === undefined
        ? {}
        : { bytesDone: status.bytesDone ?? 0, bytesTotal: status.bytesTotal }),
      ...(status.nodeBytesTotal === undefined
        ? {}
        : { nodeBytesDone: status.nodeBytesDone ?? 0, nodeBytesTotal: status.nodeBytesTotal }),
      ...(status.error === undefined ? {} : { error: status.error }),
    }),
    { timeout: timeoutMs },
  );
}

/**
 * Share of a phase's bytes done before an ETA is given: progress moves a blob at a time, and
 * the rate of a small first blob (a config of a few hundred bytes) says nothing of the rest.
 */
export const ETA_MIN_SHARE = 0.05;

/** Where a running job is: which phase, its bytes done and to do, and an estimate of the rest. */
export interface JobProgressView {
  readonly phase: 'seed' | 'nodes';
  readonly bytesDone: number;
  readonly bytesTotal: number;
  /**
   * ms until the phase ends at the rate it has kept so far; absent until ETA_MIN_SHARE of its
   * bytes are done.
   */
  readonly etaMs?: number;
}

/**
 * The progress of a running job at `nowMs`: the seed phase, then (scope `nodes`) the node
 * phase, each with its own rate (agents pull in parallel, far faster than the seed's one
 * copy). Undefined for a job not running or written by a watcher that kept no byte counts.
 */
export function progressOf(status: JobStatus, nowMs: number): JobProgressView | undefined {
  if (status.state !== 'running' || status.bytesTotal === undefined) {
    return undefined;
  }
  const nodes = status.nodesStartedAt !== undefined && status.nodeBytesTotal !== undefined;
  const phase = nodes
    ? {
        phase: 'nodes' as const,
        bytesDone: status.nodeBytesDone ?? 0,
        bytesTotal: status.nodeBytesTotal ?? 0,
        since: status.nodesStartedAt,
      }
    : {
        phase: 'seed' as const,
        bytesDone: status.bytesDone ?? 0,
        bytesTotal: status.bytesTotal,
        since: status.startedAt,
      };
  const { since, ...view } = phase;
  const elapsedMs = since === undefined ? 0 : nowMs - since;
  if (view.bytesDone < view.bytesTotal * ETA_MIN_SHARE || view.bytesDone === 0 || elapsedMs <= 0) {
    return view;
  }
  const remaining = Math.max(0, view.bytesTotal - view.bytesDone);
  return { ...view, etaMs: Math.round((remaining * elapsedMs) / view.bytesDone) };
}
