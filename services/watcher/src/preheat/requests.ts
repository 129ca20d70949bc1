/**
 * Turns "preheat this digest" (from a webhook, the schedule or the API) into a job: its status
 * entry, then its command on the SHOAL_PREHEAT work queue. A job that exists already is not
 * queued again, and the command's message id is the job id, so concurrent repeats collapse too.
 */
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import {
  encodeMessage,
  formatImageReference,
  parseDigest,
  PREHEAT_COMMAND_SUBJECT,
  preheatCommand,
  STREAMS,
  type PreheatCommand,
} from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import { traceHeaders } from '@shoal/runtime/nats';

import type { WatcherMetrics } from '../metrics.js';
import { jobIdFor, type PreheatSpec } from './ids.js';
import { publishProgress, type JobStatus, type JobStore } from './jobs.js';

const PUBLISH_TIMEOUT_MS = 5_000;

export interface SubmitResult {
  readonly id: string;
  /** True when the job existed already: nothing new was queued. */
  readonly duplicate: boolean;
  readonly status: JobStatus;
}

export class PreheatRequests {
  readonly #js: JetStreamClient;
  readonly #jobs: JobStore;
  readonly #metrics: WatcherMetrics;
  readonly #logger: Logger;

  constructor(js: JetStreamClient, jobs: JobStore, metrics: WatcherMetrics, logger: Logger) {
    this.#js = js;
    this.#jobs = jobs;
    this.#metrics = metrics;
    this.#logger = logger;
  }

  /** Queues the job for `spec` unless it exists (a failed job is queued again). */
  async submit(
    spec: PreheatSpec,
    image: string,
    origin: PreheatCommand['origin'],
  ): Promise<SubmitResult> {
    const id = jobIdFor(spec);
    const existing = await this.#jobs.get(id);
    if (existing !== undefined && existing.state !== 'failed') {
      this.#metrics.duplicates.inc({ origin });
      if (
        existing.state === 'queued' &&
        Date.now() - existing.createdAt < STREAMS.preheat.duplicateWindowMs
      ) {
        // Its command may never have been published (the publish failed, or the watcher died
        // right after creating the job): publish it again. Within the stream's duplicate
        // window JetStream drops it if it was published, so this never queues a job twice.
        await this.#publishCommand(existing);
      }
      return { id, duplicate: true, status: existing };
    }
    const now = Date.now();
    const status: JobStatus = {
      id,
      image,
      resolved: formatImageReference({
        registry: spec.registry,
        repository: spec.repository,
        digest: parseDigest(spec.digest),
      }),
      scope: spec.scope,
      selector: { ...spec.selector },
      platforms: [...spec.platforms],
      origin,
      state: 'queued',
      blobsTotal: 0,
      blobsDone: 0,
      failures: [],
      createdAt: now,
      updatedAt: now,
    };
    // A failed job is queued again by replacing its entry at the revision read above, so of
    // two replicas re-queueing it at once, one does.
    const won =
      existing === undefined
        ? await this.#jobs.create(status)
        : await this.#jobs.replace(status, existing);
    if (!won) {
      this.#metrics.duplicates.inc({ origin });
      return { id, duplicate: true, status: (await this.#jobs.get(id)) ?? status };
    }
    const ack = await this.#publishCommand(status);
    await publishProgress(this.#js, status, PUBLISH_TIMEOUT_MS);
    this.#metrics.commands.inc({ origin });
    this.#logger.info(
      { job: id, image: status.resolved, scope: spec.scope, origin, seq: ack.seq },
      'preheat queued',
    );
    return { id, duplicate: ack.duplicate, status };
  }

  /** Publishes a job's command; its message id names this queueing of the job. */
  #publishCommand(status: JobStatus): Promise<PubAck> {
    return this.#js.publish(
      PREHEAT_COMMAND_SUBJECT,
      encodeMessage(preheatCommand, {
        type: 'preheat',
        id: status.id,
        image: status.resolved,
        scope: status.scope,
        selector: status.selector,
        platforms: status.platforms,
        origin: status.origin,
      }),
      {
        msgID: `${status.id}-${status.createdAt}`,
        timeout: PUBLISH_TIMEOUT_MS,
        // The preheat's trace starts at the webhook (or API call) that asked for it.
        ...optionalHeaders(),
      },
    );
  }
}

/** `{ headers }` carrying the active trace context, or nothing when there is none. */
export function optionalHeaders(): { headers?: NonNullable<ReturnType<typeof traceHeaders>> } {
  const headers = traceHeaders();
  return headers === undefined ? {} : { headers };
}
