/** Preheat through a running watcher's API, as an operator would, for the tests. */
import assert from 'node:assert/strict';

import { waitFor, WATCHER_TOKEN } from '@shoal/testkit';

/** What the watcher reports about a preheat job (the fields the tests look at). */
export interface PreheatJobStatus {
  readonly state?: string;
  readonly nodesDone?: number;
  readonly blobsDone?: number;
}

/**
 * Asks the watcher at `watcherUrl` to preheat `image` (a full reference) with `scope`, and
 * waits up to a minute until the job is done or failed; returns its last status.
 */
export async function preheatAndWait(
  watcherUrl: string,
  image: string,
  scope: 'seed' | 'nodes',
): Promise<PreheatJobStatus> {
  const response = await fetch(`${watcherUrl}/preheat`, {
    method: 'POST',
    headers: { authorization: `Bearer ${WATCHER_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ image, scope }),
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(response.status, 202, await response.clone().text());
  const { id } = (await response.json()) as { id: string };
  let job: PreheatJobStatus = {};
  await waitFor(
    'the preheat to finish',
    async () => {
      const status = await fetch(`${watcherUrl}/preheat/${id}`, {
        headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
        signal: AbortSignal.timeout(5_000),
      });
      job = (await status.json()) as PreheatJobStatus;
      return job.state === 'done' || job.state === 'failed';
    },
    { timeoutMs: 60_000, intervalMs: 250 },
  );
  return job;
}
