/**
 * A `nodes` preheat asked for the moment the watcher has declared the agents' presence bucket
 * (a fresh install where the agents started first, or a NATS store lost and declared again):
 * the agents found the bucket missing and put their entries only at their next try, up to one
 * presence interval later. The job must wait for them, not read an empty bucket and finish
 * "done" with no node warmed. Real nats-server, registry, tracker, seed server, agent, watcher.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
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
  type AgentProcess,
  type NatsServer,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { preheatFinished, queuePreheat } from '../src/preheat.js';
import { bytesBySource, FAST_SWARM_ENV } from '../src/swarm.js';

/**
 * Long enough that the agent's next put (half to one interval after its first, failed one)
 * lands well after the job would have read the bucket without waiting.
 */
const PRESENCE_INTERVAL_MS = 8000;

describe('a nodes preheat right after the presence bucket is declared', () => {
  const teardown = new Teardown();
  let nats: NatsServer;
  let registry: Registry;
  let registries: string;
  let agent: AgentProcess;

  before(async () => {
    nats = await startNats();
    teardown.add('nats', () => nats.stop());
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    registries = `${registry.host}=${registry.url}`;
    const tracker = await startTracker({ natsUrl: nats.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: nats.url, registries });
    teardown.add('seed', () => seed.stop());
    agent = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      peerId: 'presence-new-node',
      env: {
        ...FAST_SWARM_ENV,
        SHOAL_AGENT_PRESENCE_INTERVAL_MS: String(PRESENCE_INTERVAL_MS),
      },
    });
    teardown.add('agent', () => agent.stop());
  });

  after(() => teardown.run());

  it('waits for the agents that found the bucket missing, and warms them', async () => {
    // No watcher yet: the agent's first put found no bucket.
    await waitFor('the agent to find the presence bucket missing', async () =>
      /presence bucket shoal_agents missing/.test(
        await readFile(join(agent.dir, 'agent.log'), 'utf8'),
      ),
    );
    const dir = await makeTempDir('preheat-presence-new');
    teardown.add('images', () => dir.remove());
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [2 * MiB, 1 * MiB],
      seed: 'preheat-presence-new',
    });
    const ref = await pushImage(image, registry.host, 'team/presence-new');

    const watcher = await startWatcher({
      natsUrl: nats.url,
      registries,
      env: { SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS: String(PRESENCE_INTERVAL_MS) },
    });
    teardown.add('watcher', () => watcher.stop());
    const id = await queuePreheat(watcher.url, ref, 'nodes');
    const job = await preheatFinished(watcher.url, id);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.nodesTotal, 1, 'the node that joined the new bucket was counted');
    assert.equal(job.nodesDone, 1);
    assert.deepEqual(job.failures, []);

    const all = image.blobs.reduce((sum, b) => sum + b.size, 0);
    assert.ok((await agent.metric('shoal_agent_cache_size_bytes')) >= all, 'the node holds it');
    assert.equal((await bytesBySource(agent)).origin, 0, 'warmed through the swarm');
  });
});
