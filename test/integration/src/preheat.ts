/** Preheat through a running watcher's API, as an operator would, for the tests. */
import assert from 'node:assert/strict';

import {
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  waitFor,
  WATCHER_TOKEN,
  type NatsServer,
  type Registry,
  type ServiceProcess,
  type Teardown,
} from '@shoal/testkit';

/** What the watcher reports about a preheat job (the fields the tests look at). */
export interface PreheatJobStatus {
  readonly state?: string;
  readonly nodesTotal?: number;
  readonly nodesDone?: number;
  readonly blobsDone?: number;
  readonly failures?: unknown[];
}

/** Asks the watcher at `watcherUrl` to preheat `image` (a full reference); the job's id. */
export async function queuePreheat(
  watcherUrl: string,
  image: string,
  scope: 'seed' | 'nodes',
): Promise<string> {
  const response = await fetch(`${watcherUrl}/preheat`, {
    method: 'POST',
    headers: { authorization: `Bearer ${WATCHER_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ image, scope }),
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(response.status, 202, await response.clone().text());
  const { id } = (await response.json()) as { id: string };
  return id;
}

/** The job's status as the watcher at `watcherUrl` reports it now. */
export async function preheatStatus(watcherUrl: string, id: string): Promise<PreheatJobStatus> {
  const status = await fetch(`${watcherUrl}/preheat/${id}`, {
    headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
    signal: AbortSignal.timeout(5_000),
  });
  return (await status.json()) as PreheatJobStatus;
}

/** Waits up to `timeoutMs` (default a minute) until the job is done or failed; its last status. */
export async function preheatFinished(
  watcherUrl: string,
  id: string,
  timeoutMs = 60_000,
): Promise<PreheatJobStatus> {
  let job: PreheatJobStatus = {};
  await waitFor(
    'the preheat to finish',
    async () => {
      job = await preheatStatus(watcherUrl, id);
      return job.state === 'done' || job.state === 'failed';
    },
    { timeoutMs, intervalMs: 250 },
  );
  return job;
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
  return preheatFinished(watcherUrl, await queuePreheat(watcherUrl, image, scope));
}

/** The services a preheat needs, each stopped by `teardown`; agents are the test's own. */
export interface PreheatStack {
  readonly nats: NatsServer;
  readonly registry: Registry;
  readonly watcher: ServiceProcess;
  /** `SHOAL_*_REGISTRIES` for the registry. */
  readonly registries: string;
}

/** nats-server, a registry, a tracker, a seed server and a watcher. */
export async function startPreheatStack(teardown: Teardown): Promise<PreheatStack> {
  const nats = await startNats();
  teardown.add('nats', () => nats.stop());
  const registry = await startRegistry();
  teardown.add('registry', () => registry.stop());
  const registries = `${registry.host}=${registry.url}`;
  const tracker = await startTracker({ natsUrl: nats.url });
  teardown.add('tracker', () => tracker.stop());
  const seed = await startSeedServer({ natsUrl: nats.url, registries });
  teardown.add('seed', () => seed.stop());
  const watcher = await startWatcher({ natsUrl: nats.url, registries });
  teardown.add('watcher', () => watcher.stop());
  return { nats, registry, watcher, registries };
}
