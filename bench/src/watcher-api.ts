/** The watcher's preheat API as the benchmarks call it: submit a job, read its status. */
import { WATCHER_TOKEN, type ServiceProcess } from '@shoal/testkit';

/** Longest a single call to the watcher's API may take, in ms. */
const API_TIMEOUT_MS = 10_000;

/** A preheat job's status as `GET /preheat/<id>` returns it (the fields the bench reads). */
export interface JobStatus {
  readonly id: string;
  readonly state: string;
  readonly blobsTotal: number;
  readonly blobsDone: number;
  readonly nodesTotal?: number;
  readonly nodesDone?: number;
  readonly failures: readonly unknown[];
  readonly error?: string;
}

function isJobStatus(value: unknown): value is JobStatus {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const j = value as Record<string, unknown>;
  return (
    typeof j.id === 'string' &&
    typeof j.state === 'string' &&
    typeof j.blobsTotal === 'number' &&
    typeof j.blobsDone === 'number' &&
    Array.isArray(j.failures)
  );
}

/** Calls the watcher's API; throws on an error answer or a body that is not a job status. */
export async function watcherApi(
  watcher: ServiceProcess,
  path: string,
  init: { method: 'GET' } | { method: 'POST'; body: unknown },
): Promise<JobStatus> {
  const response = await fetch(`${watcher.url}${path}`, {
    method: init.method,
    headers: {
      authorization: `Bearer ${WATCHER_TOKEN}`,
      ...(init.method === 'POST' ? { 'content-type': 'application/json' } : {}),
    },
    ...(init.method === 'POST' ? { body: JSON.stringify(init.body) } : {}),
    signal: AbortSignal.timeout(API_TIMEOUT_MS),
  });
  const text = await response.text();
  if (response.status !== 200 && response.status !== 202) {
    throw new Error(`${init.method} ${path}: HTTP ${response.status}: ${text.slice(0, 300)}`);
  }
  const body: unknown = JSON.parse(text);
  if (!isJobStatus(body)) {
    throw new Error(`${init.method} ${path}: not a job status: ${text.slice(0, 300)}`);
  }
  return body;
}
