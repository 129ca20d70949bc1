/**
 * Turns "preheat this digest" (from a webhook, the schedule or the API) into a job: its status
 * entry, then its command on the SHOAL_PREHEAT work queue. A job that exists already is not
 * queued again, and the command's message id is the job id, so concurrent repeats collapse too.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import {
  encodeMessage,
  formatImageReference,
  parseDigest,
  PREHEAT_COMMAND_SUBJECT,
  preheatCommand,
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
      return { id, duplicate: true, status: existing };
    }
    const now = Date.now();
    const resolved = formatImageReference({
      registry: spec.registry,
      repository: spec.repository,
      digest: parseDigest(spec.digest),
    });
    const status: JobStatus = {
      id,
      image,
      resolved,
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
    if (existing === undefined) {
      if (!(await this.#jobs.create(status))) {
        // Another replica created it a moment ago.
        this.#metrics.duplicates.inc({ origin });
        return { id, duplicate: true, status: (await this.#jobs.get(id)) ?? status };
      }
    } else {
      await this.#jobs.put(status);
    }
    const ack = await this.#js.publish(
      PREHEAT_COMMAND_SUBJECT,
      encodeMessage(preheatCommand, {
        type: 'preheat',
        id,
        image: resolved,
        scope: spec.scope,
        selector: { ...spec.selector },
        platforms: [...spec.platforms],
        origin,
      }),
      // A failed job queued again needs a fresh message id.
      {
        msgID: existing === undefined ? id : `${id}-${now}`,
        timeout: PUBLISH_TIMEOUT_MS,
        // The preheat's trace starts at the webhook (or API call) that asked for it.
        ...optionalHeaders(),
      },
    );
    await publishProgress(this.#js, status, PUBLISH_TIMEOUT_MS);
    this.#metrics.commands.inc({ origin });
    this.#logger.info(
      { job: id, image: resolved, scope: spec.scope, origin, seq: ack.seq },
      'preheat queued',
    );
    return { id, duplicate: ack.duplicate, status };
  }
}

/** `{ headers }` carrying the active trace context, or nothing when there is none. */
export function optionalHeaders(): { headers?: NonNullable<ReturnType<typeof traceHeaders>> } {
  const headers = traceHeaders();
  return headers === undefined ? {} : { headers };
}
