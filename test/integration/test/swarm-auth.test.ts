/**
 * A private registry: the seed server authenticates with credentials from a docker config
 * JSON file (as a Kubernetes `dockerconfigjson` Secret provides them); the agents' clients send
 * their own, which the registry checks (swarm-authz.test covers the refusals), while the bytes
 * come from the seed and peers.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startRegistry,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster } from '../src/swarm.js';

const repository = 'private/app';
const auth = { username: 'seeder', password: 's3cret!' };
const basic = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;

describe('seeding from a registry that requires credentials', () => {
  let registry: Registry;
  let image: GeneratedImage;
  let configPath: string;
  const cleanup: (() => Promise<void>)[] = [];

  before(async () => {
    registry = await startRegistry({ auth });
    cleanup.push(() => registry.stop());
    const dir = await makeTempDir('private');
    cleanup.push(() => dir.remove());
    image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [6 * MiB, 1 * MiB],
      seed: 'swarm-auth',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `${auth.username}:${auth.password}`,
    });
    configPath = join(dir.path, 'config.json');
    const token = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    await writeFile(configPath, JSON.stringify({ auths: { [registry.host]: { auth: token } } }));
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step();
    }
  });

  it('seeds with the docker config credentials; clients pull with theirs, bytes from the swarm', async () => {
    const cluster = await startCluster({
      layerSizes: [],
      seed: 'unused',
      repository,
      trackers: 1,
      registry: { registry, image },
      seedEnv: { SHOAL_SEED_DOCKER_CONFIG: configPath },
      agents: [{ peerId: 'private-1' }, { peerId: 'private-2' }],
    });
    try {
      const outcomes = await Promise.all(
        cluster.agents.map((agent) => pullBlobs(agent, cluster, repository, basic)),
      );
      for (const perAgent of outcomes) {
        perAgent.forEach((outcome, i) => {
          assert.equal(outcome.error, undefined);
          assert.equal(outcome.digest, image.blobs[i]?.digest);
        });
      }
      for (const blob of image.blobs) {
        const gets = await registry.blobGets(blob.digest);
        assert.equal(gets.length, 1);
        assert.match(gets[0]?.userAgent ?? '', /^shoal-seedserver\//);
      }
      for (const agent of cluster.agents) {
        assert.equal(
          await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
          0,
        );
      }
    } finally {
      await cluster.stop();
    }
  });
});
