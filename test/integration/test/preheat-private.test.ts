/**
 * Preheating a private image: the watcher reads manifests with its docker config
 * (`SHOAL_WATCHER_DOCKER_CONFIG`), the seed server fetches blobs with its own
 * (`SHOAL_SEED_DOCKER_CONFIG`), agents pull from the swarm with no credentials at all. Without
 * credentials the job fails at once with the setting to fix, and a counter says so; with them a
 * `nodes` preheat warms the node, whose cache still serves no one the registry would refuse.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  FAST_SWARM_ENV,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  Teardown,
  waitFor,
  WATCHER_TOKEN,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { ociCode, streamDigest } from '../src/http.js';
import { bytesBySource } from '../src/swarm.js';

const repository = 'private/app';
const auth = { username: 'puller', password: 'preheat-pw' };
const basic = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;

interface Job {
  readonly id: string;
  readonly state?: string;
  readonly error?: string;
  readonly failures?: { peer: string; blob: string; error: string }[];
}

describe('preheat of a private image', () => {
  const teardown = new Teardown();
  let nats: NatsServer;
  let registry: Registry;
  let registries: string;
  let image: GeneratedImage;
  let dockerConfig: string;
  let agent: AgentProcess;

  /** Asks `watcher` to preheat `image`; the API's status and answer. */
  const submit = async (
    watcher: ServiceProcess,
    ref: string,
    scope: 'seed' | 'nodes',
  ): Promise<{ status: number; body: Job }> => {
    const response = await fetch(`${watcher.url}/preheat`, {
      method: 'POST',
      headers: { authorization: `Bearer ${WATCHER_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ image: ref, scope }),
      signal: AbortSignal.timeout(10_000),
    });
    return { status: response.status, body: (await response.json()) as Job };
  };
  /** Waits up to `timeoutMs` for the job to end; its last status. */
  const finished = async (watcher: ServiceProcess, id: string, timeoutMs: number): Promise<Job> => {
    let job: Job = { id };
    await waitFor(
      `job ${id} to end`,
      async () => {
        const response = await fetch(`${watcher.url}/preheat/${id}`, {
          headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
          signal: AbortSignal.timeout(5_000),
        });
        job = (await response.json()) as Job;
        return job.state === 'done' || job.state === 'failed';
      },
      { timeoutMs, intervalMs: 200 },
    );
    return job;
  };
  const byDigest = (): string => `${registry.host}/${repository}@${image.manifest.digest}`;
  const seed = async (env: Record<string, string>): Promise<ServiceProcess> => {
    const started = await startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-private',
      env: { ...env, ...(await nats.clientEnv('seedserver')) },
    });
    teardown.add('seed', () => started.stop());
    return started;
  };
  const watcher = async (env: Record<string, string>): Promise<ServiceProcess> => {
    const started = await startWatcher({
      natsUrl: nats.url,
      registries,
      env: { SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS: '4000', ...env },
    });
    teardown.add('watcher', () => started.stop());
    return started;
  };

  before(async () => {
    nats = await startNats();
    teardown.add('nats', () => nats.stop());
    registry = await startRegistry({ auth });
    teardown.add('registry', () => registry.stop());
    registries = `${registry.host}=${registry.url}`;
    const dir = await makeTempDir('preheat-private');
    teardown.add('dir', () => dir.remove());
    image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [3 * MiB, 1 * MiB],
      seed: 'preheat-private',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `${auth.username}:${auth.password}`,
    });
    dockerConfig = join(dir.path, 'config.json');
    const token = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    await writeFile(dockerConfig, JSON.stringify({ auths: { [registry.host]: { auth: token } } }));
    const tracker = await startTracker({
      natsUrl: nats.url,
      env: await nats.clientEnv('tracker-0'),
    });
    teardown.add('tracker', () => tracker.stop());
    agent = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      peerId: 'preheat-private-node',
      env: { ...FAST_SWARM_ENV, ...(await nats.clientEnv('preheat-private-node')) },
    });
    teardown.add('agent', () => agent.stop());
  });

  after(async () => {
    await teardown.run();
  });

  it('fails at once, naming the watcher setting, when the watcher has no credentials', async () => {
    const bare = await watcher({});
    const byTag = await submit(bare, `${registry.host}/${repository}:${image.tag}`, 'seed');
    assert.equal(byTag.status, 502);
    assert.match(byTag.body.error ?? '', /refused the watcher \(401\)/);
    assert.match(byTag.body.error ?? '', /SHOAL_WATCHER_DOCKER_CONFIG/);

    const queued = await submit(bare, byDigest(), 'seed');
    assert.equal(queued.status, 202);
    // Not retried for minutes as if the registry were down: no retry brings credentials.
    const job = await finished(bare, queued.body.id, 15_000);
    assert.equal(job.state, 'failed');
    assert.match(job.error ?? '', /refused the watcher \(401\).*SHOAL_WATCHER_DOCKER_CONFIG/);
    assert.ok(
      (await bare.metric('shoal_watcher_registry_refusals_total', { status: '401' })) >= 2,
      'the refusals are counted',
    );
    await bare.stop();
  });

  it('fails the blobs, naming the seed server setting, when the seed server has none', async () => {
    const bareSeed = await seed({});
    const reader = await watcher({ SHOAL_WATCHER_DOCKER_CONFIG: dockerConfig });
    const queued = await submit(reader, byDigest(), 'seed');
    assert.equal(queued.status, 202);
    const job = await finished(reader, queued.body.id, 30_000);
    assert.equal(job.state, 'failed', JSON.stringify(job));
    assert.ok((job.failures ?? []).length > 0);
    for (const failure of job.failures ?? []) {
      assert.match(failure.error, /refused the seed server \(401\).*SHOAL_SEED_DOCKER_CONFIG/);
    }
    assert.ok(
      (await bareSeed.metric('shoal_seedserver_seeds_total', { outcome: 'failed' })) >= 1,
      'the failed seeds are counted',
    );
    assert.equal(await agent.metric('shoal_agent_cache_size_bytes'), 0);
    await bareSeed.stop();
    await reader.stop();
  });

  it('warms the node with both configured, and serves it no one the registry refuses', async () => {
    await seed({ SHOAL_SEED_DOCKER_CONFIG: dockerConfig });
    const reader = await watcher({ SHOAL_WATCHER_DOCKER_CONFIG: dockerConfig });
    const queued = await submit(reader, `${registry.host}/${repository}:${image.tag}`, 'nodes');
    assert.equal(queued.status, 202, JSON.stringify(queued.body));
    const job = await finished(reader, queued.body.id, 60_000);
    assert.equal(job.state, 'done', JSON.stringify(job));
    const all = image.blobs.reduce((sum, b) => sum + b.size, 0);
    await waitFor(
      'the node to hold the image',
      async () => (await agent.metric('shoal_agent_cache_size_bytes')) >= all,
    );
    const fetched = await bytesBySource(agent);
    assert.equal(fetched.origin, 0, 'the node read nothing from the registry itself');

    const wrong = `Basic ${Buffer.from(`${auth.username}:nope`).toString('base64')}`;
    for (const blob of image.blobs) {
      const url = `${agent.url}/v2/${repository}/blobs/${blob.digest}?ns=${registry.host}`;
      for (const authorization of [undefined, wrong]) {
        for (const range of [undefined, 'bytes=0-15']) {
          for (const method of ['GET', 'HEAD'] as const) {
            const response = await fetch(url, {
              method,
              headers: {
                ...(authorization === undefined ? {} : { authorization }),
                ...(range === undefined ? {} : { range }),
              },
            });
            const body = Buffer.from(await response.arrayBuffer());
            const what = `${method} ${blob.digest} ${authorization === undefined ? 'anonymous' : 'wrong'} ${range ?? ''}`;
            assert.equal(response.status, 401, what);
            assert.match(response.headers.get('www-authenticate') ?? '', /^Basic realm=/, what);
            if (method === 'GET') {
              assert.equal(ociCode(body), 'UNAUTHORIZED', what);
            }
          }
        }
      }
    }
    assert.equal(await agent.metric('shoal_agent_served_bytes_total'), 0, 'not a byte served');

    const gets = (await registry.blobGets()).length;
    for (const blob of image.blobs) {
      const outcome = await streamDigest(
        `${agent.url}/v2/${repository}/blobs/${blob.digest}?ns=${registry.host}`,
        { headers: { authorization: basic } },
      );
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, blob.digest);
    }
    assert.equal((await registry.blobGets()).length, gets, 'served from the preheated cache');
    assert.deepEqual(await bytesBySource(agent), fetched);
  });
});
