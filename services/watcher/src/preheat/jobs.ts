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
  /** The first failures, for the operator (peer, blob, reason). */
  failures: z.array(z.strictObject({ peer: z.string(), blob: z.string(), error: z.string() })),
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
      ...(status.error === undefined ? {} : { error: status.error }),
    }),
    { timeout: timeoutMs },
  );
}
