/**
 * The NATS users of deploy/k8s are enough for Shoal to work and keep the roles apart: a real
 * nats-server runs the rendered authorization block, the real tracker, seed server and agents
 * log in as their own users and pull an image through the swarm, the watcher preheats an image
 * onto the agents, and an agent cannot publish piece hashes.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection } from '@nats-io/transport-node';
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
  waitFor,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { find, renderOverlay } from '../src/deploy.js';
import { MiB } from '../src/files.js';
import { preheatAndWait } from '../src/preheat.js';
import { FAST_SWARM_ENV, bytesBySource, pullBlobs } from '../src/swarm.js';

const PASSWORDS = {
  agent: 'agent-test-pw',
  tracker: 'tracker-test-pw',
  seedserver: 'seedserver-test-pw',
  watcher: 'watcher-test-pw',
} as const;

const repository = 'deploy/nats-users';

describe('NATS users of deploy/k8s', () => {
  const cleanup: (() => Promise<void>)[] = [];
  let hostPort = '';
  let registry: Registry;
  let image: GeneratedImage;
  let preheated: GeneratedImage;

  const urlFor = (user: keyof typeof PASSWORDS): string =>
    `nats://${user}:${PASSWORDS[user]}@${hostPort}`;

  before(async () => {
    // The authorization block exactly as the overlay renders it, in a one-server config.
    const objects = await renderOverlay('mixed');
    const configMap = objects.find(
      (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
    );
    assert.ok(configMap !== undefined);
    find(objects, 'StatefulSet', 'shoal-nats');
    const auth = (configMap.data as Record<string, string>)['auth.conf'] ?? '';
    const nats = await startNats({
      config: 'include ./auth.conf',
      files: { 'auth.conf': auth },
      env: {
        NATS_AGENT_PASSWORD: PASSWORDS.agent,
        NATS_TRACKER_PASSWORD: PASSWORDS.tracker,
        NATS_SEEDSERVER_PASSWORD: PASSWORDS.seedserver,
        NATS_WATCHER_PASSWORD: PASSWORDS.watcher,
      },
    });
    cleanup.push(() => nats.stop());
    hostPort = new URL(nats.url).host;

    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    const layout = await makeTempDir('image');
    cleanup.push(() => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [3 * MiB, 1 * MiB], seed: 'users' });
    await pushImage(image, registry.host, repository);
    preheated = await generateImage(join(layout.path, 'preheated'), {
      layerSizes: [2 * MiB],
      seed: 'users-preheat',
    });
    await pushImage(preheated, registry.host, `${repository}-preheat`);
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step().catch(() => undefined);
    }
  });

  it('lets the services pull through the swarm, each as its own user', async () => {
    const registries = `${registry.host}=${registry.url}`;
    const stops: ServiceProcess[] = [];
    try {
      stops.push(await startTracker({ natsUrl: urlFor('tracker') }));
      stops.push(await startSeedServer({ natsUrl: urlFor('seedserver'), registries }));
      const agents: AgentProcess[] = [];
      for (const peerId of ['users-1', 'users-2']) {
        const agent = await startAgent({
          registries,
          defaultRegistry: registry.host,
          natsUrl: urlFor('agent'),
          peerId,
          env: FAST_SWARM_ENV,
        });
        agents.push(agent);
        stops.push(agent);
      }
      for (const agent of agents) {
        const outcomes = await pullBlobs(agent, { image, registry }, repository);
        outcomes.forEach((outcome, i) => {
          assert.equal(outcome.error, undefined);
          assert.equal(outcome.digest, image.blobs[i]?.digest);
        });
        // Every byte came from the seed or a peer: the swarm worked under these permissions,
        // the piece hashes by direct get and subscription (no consumer per download).
        assert.equal((await bytesBySource(agent)).origin, 0);
        assert.equal(
          await agent.metric('shoal_agent_piece_hash_reads_total', { path: 'consumer' }),
          0,
        );
      }

      // Preheat onto every agent, the watcher and the agents as their own users.
      const watcher = await startWatcher({ natsUrl: urlFor('watcher'), registries });
      stops.push(watcher);
      const job = await preheatAndWait(
        watcher.url,
        `${registry.host}/${repository}-preheat:${preheated.tag}`,
        'nodes',
      );
      assert.equal(job.state, 'done', JSON.stringify(job));
      assert.equal(job.blobsDone, preheated.blobs.length);
      assert.equal(job.nodesDone, agents.length);
    } finally {
      for (const service of stops.reverse()) {
        await service.stop();
      }
    }
  });

  it('refuses piece hashes and seed reports published by an agent', async () => {
    const nc: NatsConnection = await connect({
      servers: [`nats://${hostPort}`],
      user: 'agent',
      pass: PASSWORDS.agent,
    });
    try {
      const errors: string[] = [];
      void (async () => {
        for await (const status of nc.status()) {
          if (status.type === 'error') {
            errors.push(String(status.error));
          }
        }
      })();
      nc.publish('shoal.pieces.v1.hashes.sha256.' + 'a'.repeat(64), 'forged');
      await nc.flush();
      await waitFor('a permissions violation', () => Promise.resolve(errors.length > 0), {
        timeoutMs: 5000,
      });
      assert.match(errors.join('\n'), /permissions violation/i);
      // Nor a preheat report in the seed server's name.
      nc.publish('shoal.preheat.v1.report.p-1.seed.seed-a', 'forged');
      await nc.flush();
      await waitFor('a second violation', () => Promise.resolve(errors.length > 1), {
        timeoutMs: 5000,
      });
      assert.match(errors[1] ?? '', /shoal\.preheat\.v1\.report\.p-1\.seed\.seed-a/);
    } finally {
      await nc.close();
    }
  });

  it('refuses a wrong password', async () => {
    await assert.rejects(
      connect({ servers: [`nats://${hostPort}`], user: 'agent', pass: 'wrong' }),
      /authorization/i,
    );
  });
});
