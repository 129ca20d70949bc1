/**
 * An agent never blocks its node: started while NATS is out of reach it serves as a plain
 * verifying mirror of the origin, reports that it is joining, and joins the swarm by itself
 * once NATS answers, after which misses come through the swarm. A leecher opens its peer
 * listener for probes and metrics only: it never serves pieces.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startSeedServer,
  startTracker,
  waitFor,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
} from '@shoal/testkit';
import { startRegistry } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { FAST_SWARM_ENV } from '../src/swarm.js';

interface ReadyBody {
  status?: string;
  swarm?: string;
}

async function readyBody(url: string): Promise<{ status: number; body: ReadyBody }> {
  const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5_000) });
  return { status: response.status, body: (await response.json()) as ReadyBody };
}

describe('agent without NATS', () => {
  let registry: Registry;
  let image: GeneratedImage;
  let workDir: { path: string; remove(): Promise<void> };
  const cleanup: (() => Promise<void>)[] = [];

  before(async () => {
    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    workDir = await makeTempDir('no-nats');
    cleanup.push(() => workDir.remove());
    image = await generateImage(join(workDir.path, 'image'), {
      layerSizes: [4 * MiB, 3 * MiB],
      seed: 'no-nats',
    });
    await pushImage(image, registry.host, 'shoal/no-nats');
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step();
    }
  });

  it('serves from the origin while NATS is down, then joins the swarm when it comes up', async () => {
    const natsPort = await freePort();
    const natsUrl = `nats://127.0.0.1:${String(natsPort)}`;
    const [first, second] = image.layers;
    assert.ok(first !== undefined && second !== undefined);

    // Started with nothing listening at its NATS address: it must start, not exit.
    const agent: AgentProcess = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl,
      env: { ...FAST_SWARM_ENV },
    });
    cleanup.push(() => agent.stop());
    const before = await readyBody(agent.url);
    assert.equal(before.status, 200);
    assert.deepEqual(before.body, { status: 'ready', swarm: 'joining' });
    assert.equal(await agent.metric('shoal_agent_swarm_joined'), 0);
    assert.ok((await agent.metric('shoal_agent_swarm_join_failures_total')) >= 1);

    // A plain verifying mirror meanwhile: the bytes come from the origin.
    const pulled = await streamDigest(`${agent.url}/v2/shoal/no-nats/blobs/${first.digest}`);
    assert.equal(pulled.status, 200);
    assert.equal(pulled.digest, first.digest);
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      first.size,
    );

    // NATS comes up at that address, with a tracker and a seed server: the agent joins.
    const nats: NatsServer = await startNats({ port: natsPort });
    cleanup.push(() => nats.stop());
    const tracker = await startTracker({ natsUrl });
    cleanup.push(() => tracker.stop());
    const seed = await startSeedServer({
      natsUrl,
      registries: `${registry.host}=${registry.url}`,
    });
    cleanup.push(() => seed.stop());
    await waitFor(
      'the agent to join the swarm',
      async () => (await agent.metric('shoal_agent_swarm_joined')) === 1,
      { timeoutMs: 40_000 },
    );
    assert.deepEqual((await readyBody(agent.url)).body, { status: 'ready', swarm: 'joined' });

    // The next miss goes through the swarm: the seed server serves it, not the origin.
    const swarmPulled = await streamDigest(`${agent.url}/v2/shoal/no-nats/blobs/${second.digest}`);
    assert.equal(swarmPulled.status, 200);
    assert.equal(swarmPulled.digest, second.digest);
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'seed' }),
      second.size,
    );
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      first.size,
    );
  });

  it('a leecher answers probes and metrics on its peer port, and serves no pieces there', async () => {
    const nats = await startNats();
    cleanup.push(() => nats.stop());
    const peerPort = await freePort();
    const leecher = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      env: {
        SHOAL_AGENT_MODE: 'leecher',
        SHOAL_AGENT_PEER_LISTEN: `127.0.0.1:${String(peerPort)}`,
        SHOAL_AGENT_PEER_URL: `http://127.0.0.1:${String(peerPort)}`,
      },
    });
    cleanup.push(() => leecher.stop());
    const [layer] = image.layers;
    assert.ok(layer !== undefined);
    // Cached on the leecher, so a piece server would have something to serve.
    const pulled = await streamDigest(`${leecher.url}/v2/shoal/no-nats/blobs/${layer.digest}`);
    assert.equal(pulled.digest, layer.digest);

    const peerUrl = `http://127.0.0.1:${String(peerPort)}`;
    assert.equal((await fetch(`${peerUrl}/healthz`)).status, 200);
    assert.equal((await readyBody(peerUrl)).status, 200);
    const metrics = await fetch(`${peerUrl}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^shoal_agent_swarm_joined{service="agent"} 1$/m);
    const [algorithm, hex] = layer.digest.split(':');
    const piece = await fetch(`${peerUrl}/pieces/${String(algorithm)}/${String(hex)}/0`);
    assert.equal(piece.status, 404);
    await piece.arrayBuffer();
  });
});
