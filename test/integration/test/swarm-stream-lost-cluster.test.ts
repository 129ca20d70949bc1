/**
 * A three-server JetStream cluster in which the server holding the R1 swarm stream comes back
 * with its volume lost, while the tracker, the seed server and the agents stay connected to
 * another server (nobody reconnects). The cluster re-creates the stream there empty, under the
 * same name and creation time, and the tracker's consumer with it, positioned past the new
 * stream's end: nothing ends, nothing errs. The tracker notices from the stream's last
 * sequence, below the last one it applied, rebases its view and follows the new stream from
 * its first message: a known peer leaving is dropped from the view. Before, it never heard
 * the departure. Real nats-server cluster, tracker, seed server, agents.
 */
import assert from 'node:assert/strict';
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
  Teardown,
  waitFor,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { FAST_SWARM_ENV, pullBlobs, trackerView } from '../src/swarm.js';

const repository = 'shoal/stream-lost-cluster';

/** Three servers n0, n1, n2 routed to each other, each tagged with its name. */
async function startNatsCluster(teardown: Teardown): Promise<NatsServer[]> {
  const routes = [await freePort(), await freePort(), await freePort()];
  const servers = await Promise.all(
    routes.map((port, i) =>
      startNats({
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

describe('the swarm stream lost with one server of a NATS cluster', () => {
  const teardown = new Teardown();
  let nats: NatsServer[];
  let registry: Registry;
  let image: GeneratedImage;
  let tracker: ServiceProcess;
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
            await jsm.streams.add({
              ...streamConfig(STREAMS.swarm, 1),
              placement: { cluster: 'shoal-test', tags: ['n2'] },
            });
            return true;
          } catch {
            return false;
          }
        },
        { timeoutMs: 30_000, intervalMs: 500 },
      );
      const { jsm } = await jetStreamFor(nc);
      assert.equal((await jsm.streams.info(STREAMS.swarm.name)).cluster?.leader, 'n2');
    } finally {
      await nc.close();
    }
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('stream-lost-cluster');
    teardown.add('image', () => layout.remove());
    image = await generateImage(layout.path, {
      layerSizes: [MiB, MiB],
      seed: 'stream-lost-cluster',
    });
    await pushImage(image, registry.host, repository);
    const registries = `${registry.host}=${registry.url}`;
    // Everyone on n0: a server that stays up.
    tracker = await startTracker({ natsUrl: n0.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: n0.url, registries });
    teardown.add('seed', () => seed.stop());
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
  });

  after(() => teardown.run());

  it('the tracker rebases on the stream made anew and hears a known peer leave', async () => {
    const [a, b] = agents;
    const n2 = nats[2];
    assert.ok(a !== undefined && b !== undefined && n2 !== undefined);
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

    const nc = await connect({ servers: nats[0]?.url ?? '' });
    try {
      const { jsm } = await jetStreamFor(nc);
      const before = (await jsm.streams.info(STREAMS.swarm.name)).state.last_seq;
      await n2.crashAndRestart(1000, { loseStore: true });
      await waitFor(
        'the swarm stream back on n2, its sequence started over',
        async () => {
          try {
            return (await jsm.streams.info(STREAMS.swarm.name)).state.last_seq < before;
          } catch {
            return false;
          }
        },
        { timeoutMs: 30_000, intervalMs: 250 },
      );
    } finally {
      await nc.close();
    }

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
});
