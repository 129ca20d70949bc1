/**
 * NATS over TLS, with client certificates (mutual TLS) from a CA of the test's own: the
 * tracker, the seed server and the agents connect with it and a swarm pull completes; the
 * server shows every connection encrypted; an agent that does not speak TLS, or has no client
 * certificate, is refused by the server, and still serves its node as a plain mirror.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startAgent, waitFor } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const REPOSITORY = 'shoal/tls';

interface Connz {
  connections?: { name?: string; tls_version?: string; tls_cipher_suite?: string }[];
}

describe('NATS over mutual TLS', () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [12 * MiB, 2 * MiB],
      seed: 'nats-tls',
      repository: REPOSITORY,
      trackers: 1,
      agents: [{ peerId: 'tls-a' }, { peerId: 'tls-b' }],
      natsTls: { verifyClients: true },
    });
  });

  after(async () => {
    await cluster.stop();
  });

  it('carries a swarm pull, with every connection encrypted', async () => {
    const [first, second] = cluster.agents;
    assert.ok(first !== undefined && second !== undefined);
    for (const agent of [first, second]) {
      assert.equal(await agent.metric('shoal_agent_swarm_joined'), 1);
    }
    for (const agent of [first, second]) {
      const outcomes = await pullBlobs(agent, cluster, REPOSITORY);
      outcomes.forEach((outcome, i) => {
        assert.equal(outcome.status, 200);
        assert.equal(outcome.digest, cluster.image.blobs[i]?.digest);
      });
    }
    const total = cluster.image.blobs.reduce((sum, blob) => sum + blob.size, 0);
    for (const agent of [first, second]) {
      const bytes = await bytesBySource(agent);
      assert.equal(bytes.origin, 0, 'nothing from the origin: the swarm worked over TLS');
      assert.equal(bytes.seed + bytes.peer, total);
    }

    const connz = (await (await fetch(`${cluster.nats.monitorUrl}/connz`)).json()) as Connz;
    const connections = connz.connections ?? [];
    const names = connections.map((c) => c.name ?? '');
    for (const name of ['shoal-agent-tls-a', 'shoal-agent-tls-b']) {
      assert.ok(names.includes(name), `${name} is connected (${names.join(', ')})`);
    }
    assert.ok(connections.length >= 4, 'tracker, seed server and two agents');
    for (const connection of connections) {
      assert.match(
        connection.tls_version ?? '',
        /^1\.[23]$/,
        `${String(connection.name)} uses TLS`,
      );
    }
  });

  it('refuses a plain client and one without a certificate; both still serve their node', async () => {
    const registries = `${cluster.registry.host}=${cluster.registry.url}`;
    const clientEnv = await cluster.nats.clientEnv('unused');
    const [layer] = cluster.image.layers;
    assert.ok(layer !== undefined && cluster.ca !== undefined);
    for (const [peerId, env] of [
      ['plain', {}],
      ['no-cert', { SHOAL_NATS_TLS_CA_FILE: clientEnv.SHOAL_NATS_TLS_CA_FILE ?? '' }],
    ] as const) {
      const agent = await startAgent({
        registries,
        defaultRegistry: cluster.registry.host,
        natsUrl: cluster.nats.url,
        peerId,
        env: { ...cluster.agentEnv, ...env },
      });
      try {
        await waitFor(
          `${peerId}: refused by the server`,
          async () => (await agent.metric('shoal_agent_swarm_join_failures_total')) >= 1,
          { timeoutMs: 20_000 },
        );
        assert.equal(await agent.metric('shoal_agent_swarm_joined'), 0);
        const response = await fetch(
          `${agent.url}/v2/${REPOSITORY}/blobs/${layer.digest}?ns=${cluster.registry.host}`,
        );
        assert.equal(response.status, 200);
        assert.equal(Buffer.from(await response.arrayBuffer()).length, layer.size);
        assert.equal(
          await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
          layer.size,
        );
      } finally {
        await agent.stop();
      }
    }
  });
});
