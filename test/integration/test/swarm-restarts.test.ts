/**
 * The control plane and the seed server over a deployment's life, with real processes: the
 * NATS server restarted on its JetStream store (a StatefulSet pod restarted on its volume
 * claim), the tracker scaled from one replica to two and back to one (the first one gone),
 * and the seed server moved to another node (its cache gone, the object gateway kept). After
 * each, a new agent pulls the image from the swarm and the registry serves no blob again.
 * Across the NATS restart a node's pull ends while the server is down: the haves it could
 * not publish then reach the tracker once the server is back (with them dropped, as before,
 * the tracker never hears the node hold the image whole).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';

import {
  makeTempDir,
  startAgent,
  startSeedServer,
  startTracker,
  waitFor,
  type AgentProcess,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'shoal/restarts';

/** Streams and their message counts, from the server's monitoring endpoint. */
async function streams(monitorUrl: string): Promise<Map<string, number>> {
  const response = await fetch(`${monitorUrl}/jsz?streams=true`, {
    signal: AbortSignal.timeout(5000),
  });
  const body = (await response.json()) as {
    account_details?: { stream_detail?: { name: string; state: { messages: number } }[] }[];
  };
  return new Map(
    (body.account_details ?? [])
      .flatMap((a) => a.stream_detail ?? [])
      .map((s) => [s.name, s.state.messages]),
  );
}

/** Stops a service with SIGTERM, as the kubelet does, and checks it exits 0. */
async function terminate(service: ServiceProcess): Promise<void> {
  const exited = once(service.process.child, 'exit') as Promise<[number | null]>;
  service.process.child.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'exits 0 on SIGTERM');
  await service.stop();
}

describe('NATS, tracker and seed server restarts under a running swarm', () => {
  let cluster: Cluster;
  let storeDir: { path: string; remove(): Promise<void> };
  let originGets: () => Promise<number>;

  /** A new agent (a new node) pulls the image; it must come from the swarm, none from the origin. */
  async function newNodePulls(peerId: string): Promise<AgentProcess> {
    const before = await originGets();
    const agent = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      defaultRegistry: cluster.registry.host,
      natsUrl: cluster.nats.url,
      peerId,
      env: cluster.agentEnv,
    });
    cluster.agents.push(agent);
    for (const [i, outcome] of (await pullBlobs(agent, cluster, repository)).entries()) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, cluster.image.blobs[i]?.digest);
    }
    const bytes = await bytesBySource(agent);
    assert.equal(bytes.origin, 0, `${peerId} read nothing from the origin`);
    assert.ok(bytes.peer + bytes.seed > 0, `${peerId} pulled through the swarm`);
    assert.equal(await originGets(), before, 'the registry served no blob again');
    return agent;
  }

  before(async () => {
    storeDir = await makeTempDir('gateway');
    cluster = await startCluster({
      layerSizes: [16 * MiB, 1 * MiB],
      seed: 'restarts',
      repository,
      trackers: 1,
      agents: [{ peerId: 'node-1' }],
      // The object gateway as a directory the test keeps, to give a moved seed server.
      seedEnv: { SHOAL_STORE_KIND: 'fs', SHOAL_STORE_DIR: storeDir.path },
    });
    originGets = async () =>
      (await cluster.registry.requests()).filter(
        (r) => r.method === 'GET' && r.uri.includes('/blobs/'),
      ).length;
    const [first] = cluster.agents;
    assert.ok(first !== undefined);
    for (const outcome of await pullBlobs(first, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
  });

  after(async () => {
    await cluster.stop();
    await storeDir.remove();
  });

  it('NATS restarted on its store keeps the streams, and every service re-attaches', async () => {
    const kept = await streams(cluster.nats.monitorUrl);
    assert.ok(kept.size >= 3, `streams: ${[...kept.keys()].join(', ')}`);
    // A node pulling at 4 MiB/s as NATS goes away: its pull ends while the server is down,
    // so its last haves cannot be published then.
    const midway = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      defaultRegistry: cluster.registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'node-midway',
      env: { ...cluster.agentEnv, SHOAL_AGENT_DOWNLOAD_RATE_BYTES: String(4 * MiB) },
    });
    cluster.agents.push(midway);
    const pulled = pullBlobs(midway, cluster, repository);
    await waitFor(
      'node-midway pulling',
      async () => {
        const bytes = await bytesBySource(midway);
        return bytes.peer + bytes.seed + bytes.origin >= 2 * MiB;
      },
      { intervalMs: 50 },
    );
    // Raced against the restart: the pull must end while the server is down, else the haves
    // below were published as usual and nothing is shown to be sent again.
    let pullEnded: 'down' | 'after' | undefined;
    void pulled.then(
      () => (pullEnded ??= 'down'),
      () => (pullEnded ??= 'down'),
    );
    assert.equal(pullEnded, undefined, 'node-midway still pulling as NATS goes away');
    await cluster.nats.crashAndRestart(8000);
    pullEnded ??= 'after';
    assert.equal(pullEnded, 'down', "node-midway's pull ended while NATS was down");
    for (const outcome of await pulled) {
      assert.equal(outcome.error, undefined);
    }
    const after = await streams(cluster.nats.monitorUrl);
    for (const [name, messages] of kept) {
      // Work-queue streams may have had messages taken meanwhile; none may be gone wholesale.
      assert.ok(after.has(name), `stream ${name} survived the restart`);
      if (!/WANT|SEED|PREHEAT|TASK/i.test(name)) {
        assert.ok((after.get(name) ?? 0) >= messages, `${name}: ${String(messages)} messages kept`);
      }
    }
    // The tracker and the agents reconnected on their own, and the tracker knows node-1 and
    // node-midway hold every blob whole: the haves node-midway could not publish while the
    // server was down (its pull ended then) are sent again once it is back, not lost until
    // the next re-announcement minutes later.
    const [tracker] = cluster.trackers;
    assert.ok(tracker !== undefined);
    for (const peer of ['node-1', 'node-midway']) {
      for (const blob of cluster.image.blobs) {
        await waitFor(
          `${peer} complete in the tracker's view of ${blob.digest}`,
          async () =>
            (await trackerView(tracker, blob.digest)).some((m) => m.peer === peer && m.complete),
          { timeoutMs: 20_000 },
        );
      }
    }
    await newNodePulls('node-2');
  });

  it('tracker replicas 1 -> 2 -> 1: the new replica takes over from the one that left', async () => {
    const [first] = cluster.trackers;
    assert.ok(first !== undefined);
    const second = await startTracker({ natsUrl: cluster.nats.url });
    cluster.trackers.push(second);
    // The new replica rebuilt the swarm from the stream before the old one leaves.
    for (const blob of cluster.image.blobs) {
      await waitFor(`the second tracker's view of ${blob.digest}`, async () => {
        const members = await trackerView(second, blob.digest);
        return ['node-1', 'node-2'].every((peer) =>
          members.some((m) => m.peer === peer && m.complete),
        );
      });
    }
    cluster.trackers.splice(0, 1);
    await terminate(first);
    await newNodePulls('node-3');
  });

  it('a seed server moved to another node (cache gone, gateway kept) seeds from the gateway', async () => {
    // No agent holds the image any more: the next node's pull needs the seed server.
    while (cluster.agents.length > 0) {
      const agent = cluster.agents.pop();
      if (agent !== undefined) {
        await terminate(agent);
      }
    }
    const old = cluster.seed;
    await terminate(old);
    cluster.seed = await startSeedServer({
      natsUrl: cluster.nats.url,
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      // The same pod name and address (StatefulSet: the id follows the port here), and a
      // new cache directory.
      port: old.port,
      env: { SHOAL_STORE_KIND: 'fs', SHOAL_STORE_DIR: storeDir.path },
    });
    const agent = await newNodePulls('node-4');
    const bytes = await bytesBySource(agent);
    assert.ok(bytes.seed > 0, 'the seed server served it, read from the gateway');
  });
});
