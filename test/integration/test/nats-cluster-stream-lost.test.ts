/**
 * A three-server JetStream cluster in which the server holding the R1 swarm and preheat
 * report streams comes back with its volume lost, while the tracker, the seed server, the
 * watcher and the agents stay connected to another server (nobody reconnects). The cluster
 * re-creates the streams there empty, under the same name and creation time, and the
 * consumers with them, positioned past the new streams' end: nothing ends, nothing errs.
 * The tracker notices from the stream's last sequence, below the last one it applied,
 * rebases its view and follows the new stream from its first message: a known peer leaving
 * is dropped from the view. A preheat job waiting for an agent's reports likewise reads the
 * new report stream from its start and finishes. Before, the tracker never heard the
 * departure and the job waited for ever. Real nats-server cluster, tracker, seed server,
 * watcher, agents. n2 has room for those two streams only, so every other stream and bucket
 * is placed on n0 or n1 and outlives the loss.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { jetStreamFor, streamConfig } from '@shoal/runtime/nats';
import {
  freePort,
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
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { preheatFinished, preheatStatus, queuePreheat } from '../src/preheat.js';
import { FAST_SWARM_ENV, pullBlobs, trackerView } from '../src/swarm.js';

const repository = 'shoal/stream-lost-cluster';

/** n2's room: the swarm and preheat report streams' byte limits (README's table). */
const N2_FILE_STORE_BYTES = 2 * 1024 * MiB + 512 * MiB;

/** Three servers n0, n1, n2 routed to each other, each tagged with its name. */
async function startNatsCluster(teardown: Teardown): Promise<NatsServer[]> {
  const routes = [await freePort(), await freePort(), await freePort()];
  const servers = await Promise.all(
    routes.map((port, i) =>
      startNats({
        ...(i === 2 ? { jetStreamMaxFileBytes: N2_FILE_STORE_BYTES } : {}),
        config: [
          `server_name: n${String(i)}`,
          `server_tags: ["n${String(i)}"]`,
          'cluster {',
          '  name: shoal-test',
          `  listen: 127.0.0.1:${String(port)}`,
          `  routes: [${routes.map((p) => `nats://127.0.0.1:${String(p)}`).join(', ')}]`,
          '}',
        ].join('\n'),
      }),
    ),
  );
  for (const server of servers) {
    teardown.add('nats', () => server.stop());
  }
  return servers;
}

describe('streams lost with one server of a NATS cluster', () => {
  const teardown = new Teardown();
  let nats: NatsServer[];
  let registry: Registry;
  let image: GeneratedImage;
  let tracker: ServiceProcess;
  let watcher: ServiceProcess;
  let preheated: string;
  const agents: AgentProcess[] = [];

  before(async () => {
    nats = await startNatsCluster(teardown);
    const [n0] = nats;
    assert.ok(n0 !== undefined);
    // The swarm stream on n2 alone (R1), declared as the tracker would, before anyone starts.
    const nc = await connect({ servers: n0.url });
    try {
      // The cluster answers JetStream requests once it has elected its meta leader.
      await waitFor(
        'the cluster placing a stream on n2',
        async () => {
          try {
            const { jsm } = await jetStreamFor(nc);
            for (const spec of [STREAMS.swarm, STREAMS.preheatEvents]) {
              await jsm.streams.add({
                ...streamConfig(spec, 1),
                placement: { cluster: 'shoal-test', tags: ['n2'] },
              });
            }
            return true;
          } catch {
            return false;
          }
        },
        { timeoutMs: 30_000, intervalMs: 500 },
      );
      const { jsm } = await jetStreamFor(nc);
      assert.equal((await jsm.streams.info(STREAMS.swarm.name)).cluster?.leader, 'n2');
      assert.equal((await jsm.streams.info(STREAMS.preheatEvents.name)).cluster?.leader, 'n2');
    } finally {
      await nc.close();
    }
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('nats-cluster-stream-lost');
    teardown.add('image', () => layout.remove());
    image = await generateImage(layout.path, {
      layerSizes: [MiB, MiB],
      seed: 'stream-lost-cluster',
    });
    await pushImage(image, registry.host, repository);
    const second = await generateImage(`${layout.path}-preheat`, {
      layerSizes: [4 * MiB, 4 * MiB],
      seed: 'stream-lost-cluster-preheat',
    });
    teardown.add('second image', () =>
      rm(`${layout.path}-preheat`, { recursive: true, force: true }),
    );
    preheated = await pushImage(second, registry.host, `${repository}-preheat`);
    const registries = `${registry.host}=${registry.url}`;
    // Everyone on n0: a server that stays up.
    tracker = await startTracker({ natsUrl: n0.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: n0.url, registries });
    teardown.add('seed', () => seed.stop());
    // The watcher before the agents: it declares their presence bucket, which they join at
    // once rather than after their backoff.
    watcher = await startWatcher({ natsUrl: n0.url, registries });
    teardown.add('watcher', () => watcher.stop());
    for (const peerId of ['agent-a', 'agent-b']) {
      const agent = await startAgent({
        registries,
        defaultRegistry: registry.host,
        natsUrl: n0.url,
        peerId,
        env: FAST_SWARM_ENV,
      });
      teardown.add(peerId, () => agent.stop());
      agents.push(agent);
    }
    // Its preheat pulls take seconds: it reports after the loss.
    const slow = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: n0.url,
      peerId: 'agent-slow',
      env: { ...FAST_SWARM_ENV, SHOAL_AGENT_PREHEAT_RATE_BYTES: String(MiB) },
    });
    teardown.add('agent-slow', () => slow.stop());
  });

  /** Kills n2, brings it back with an empty store, and waits until `stream` started over. */
  async function loseN2(stream: string): Promise<void> {
    const n2 = nats[2];
    assert.ok(n2 !== undefined);
    const nc = await connect({ servers: nats[0]?.url ?? '' });
    try {
      const { jsm } = await jetStreamFor(nc);
      const before = (await jsm.streams.info(stream)).state.last_seq;
      assert.ok(before > 0);
      await n2.crashAndRestart(1000, { loseStore: true });
      await waitFor(
        `${stream} back on n2, its sequence started over`,
        async () => {
          try {
            return (await jsm.streams.info(stream)).state.last_seq < before;
          } catch {
            return false;
          }
        },
        { timeoutMs: 30_000, intervalMs: 250 },
      );
    } finally {
      await nc.close();
    }
  }

  after(() => teardown.run());

  it('the tracker rebases on the stream made anew and hears a known peer leave', async () => {
    const [a, b] = agents;
    assert.ok(a !== undefined && b !== undefined);
    const blobs = image.blobs.map((blob) => blob.digest);
    const listed = async (peer: string): Promise<boolean[]> =>
      Promise.all(
        blobs.map(async (blob) =>
          (await trackerView(tracker, blob)).some((member) => member.peer === peer),
        ),
      );
    for (const agent of [a, b]) {
      for (const outcome of await pullBlobs(agent, { image, registry }, repository)) {
        assert.equal(outcome.error, undefined);
      }
    }
    await waitFor(
      'agent-b listed for every blob',
      async () => (await listed('agent-b')).every(Boolean),
      {
        timeoutMs: 15_000,
      },
    );

    await loseN2(STREAMS.swarm.name);

    // agent-b leaves: its peer-gone is among the new stream's first messages.
    await b.stop();
    await waitFor(
      'agent-b gone from the view',
      async () => !(await listed('agent-b')).some(Boolean),
      {
        timeoutMs: 30_000,
      },
    );
    assert.ok((await listed('agent-a')).every(Boolean), 'agent-a, which stayed, still listed');
  });

  it('a preheat job reads the report stream made anew and finishes', async () => {
    const id = await queuePreheat(watcher.url, preheated, 'nodes');
    // The seed's part done and read, the job now waits for the agents' reports.
    await waitFor(
      'the job handed to the agents',
      async () => (await preheatStatus(watcher.url, id)).nodesTotal === 2,
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    await loseN2(STREAMS.preheatEvents.name);
    const job = await preheatFinished(watcher.url, id);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.nodesDone, 2);
    assert.deepEqual(job.failures, []);
  });
});
