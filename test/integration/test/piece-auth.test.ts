/**
 * Members only: the agents' peer port and the seed server's piece endpoint serve a piece only
 * to a request carrying a hand-out token the tracker signed for that blob and that peer. The
 * test kit starts every cluster with a hand-out key, so every swarm test runs with tokens on;
 * here the refusals are checked one by one against real agents, a real seed server and a real
 * tracker on a real nats-server. Bad seed requests on NATS are terminated and counted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  piecePath,
  pieceAuthHeaders,
  PREHEAT_NODES_SUBJECT,
  seedRequestSubject,
  STREAMS,
} from '@shoal/proto';
import {
  freePort,
  generateHandoutKeys,
  signTestToken,
  waitFor,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { rawGet } from '../src/http.js';
import { bytesBySource, pullBlobs, startCluster, trackerView, type Cluster } from '../src/swarm.js';

const repository = 'team/members';

describe('piece endpoints serve cluster members only', () => {
  let cluster: Cluster;
  let peerUrl: string;
  let blob: string;

  before(async () => {
    const peerPort = await freePort();
    peerUrl = `http://127.0.0.1:${peerPort}`;
    cluster = await startCluster({
      layerSizes: [3 * MiB],
      seed: 'piece-auth',
      repository,
      trackers: 1,
      agents: [
        {
          peerId: 'first',
          env: {
            SHOAL_AGENT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
            SHOAL_AGENT_PEER_URL: peerUrl,
          },
        },
        { peerId: 'second' },
      ],
    });
    const layer = cluster.image.layers[0];
    assert.ok(layer !== undefined);
    blob = layer.digest;
  });

  after(async () => {
    await cluster.stop();
  });

  it('lets the swarm trade with tokens on: the second agent gets bytes from the first', async () => {
    const [first, second] = cluster.agents;
    assert.ok(first !== undefined && second !== undefined);
    for (const outcome of await pullBlobs(first, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
    // The tracker has heard that the first agent holds the blob (its haves are batched), so
    // the second agent's hand-out names it.
    const [tracker] = cluster.trackers;
    assert.ok(tracker !== undefined);
    await waitFor('the tracker to see the first agent holding the blob', async () =>
      (await trackerView(tracker, blob)).some((m) => m.peer === 'first' && m.complete),
    );
    for (const outcome of await pullBlobs(second, cluster, repository)) {
      assert.equal(outcome.error, undefined);
    }
    assert.ok((await bytesBySource(second)).peer > 0, 'the second agent read from a peer');
    for (const agent of [first, second]) {
      assert.equal(await agent.metric('shoal_agent_piece_auth_refused_total'), 0);
    }
    assert.equal(await cluster.seed.metric('shoal_seedserver_piece_auth_refused_total'), 0);
  });

  /** Every way to ask without a good token, with the status and the reason counted. */
  const refusals = (
    piece: string,
  ): { name: string; headers: Record<string, string>; status: number; reason: string }[] => {
    const exp = Date.now() + 60_000;
    const good = signTestToken({ blob: piece, peer: 'intruder', exp });
    const otherBlob = `sha256:${'0'.repeat(64)}`;
    return [
      { name: 'no token', headers: {}, status: 401, reason: 'missing' },
      {
        name: 'a malformed token',
        headers: pieceAuthHeaders('not-a-token', 'intruder'),
        status: 401,
        reason: 'malformed',
      },
      {
        name: 'another scheme',
        headers: { authorization: `Bearer ${good}`, 'shoal-peer': 'intruder' },
        status: 401,
        reason: 'malformed',
      },
      {
        name: 'an expired token',
        headers: pieceAuthHeaders(
          signTestToken({ blob: piece, peer: 'intruder', exp: Date.now() - 5 * 60_000 }),
          'intruder',
        ),
        status: 401,
        reason: 'expired',
      },
      {
        name: 'a token signed by another key',
        headers: pieceAuthHeaders(
          signTestToken({ blob: piece, peer: 'intruder', exp }, generateHandoutKeys()),
          'intruder',
        ),
        status: 401,
        reason: 'bad-signature',
      },
      {
        name: 'a token for another blob',
        headers: pieceAuthHeaders(
          signTestToken({ blob: otherBlob, peer: 'intruder', exp }),
          'intruder',
        ),
        status: 403,
        reason: 'wrong-blob',
      },
      {
        name: 'a token for another peer',
        headers: pieceAuthHeaders(good, 'someone-else'),
        status: 403,
        reason: 'wrong-peer',
      },
    ];
  };

  async function assertMembersOnly(
    name: string,
    baseUrl: string,
    service: ServiceProcess,
    metric: string,
  ): Promise<void> {
    const path = piecePath(blob, 0);
    for (const refusal of refusals(blob)) {
      const before = await service.metric(metric, { reason: refusal.reason });
      const response = await rawGet(baseUrl, path, refusal.headers);
      assert.equal(response.status, refusal.status, `${name}, ${refusal.name}`);
      assert.match(response.body.toString('utf8'), new RegExp(refusal.reason));
      assert.equal(
        await service.metric(metric, { reason: refusal.reason }),
        before + 1,
        `${name}, ${refusal.name}: counted as ${refusal.reason}`,
      );
    }
    // Refused before anything is looked up: a piece nobody holds gets the same answer.
    const unheld = await rawGet(baseUrl, piecePath(`sha256:${'1'.repeat(64)}`, 0));
    assert.equal(unheld.status, 401);

    // A valid token is served (the seed may ration a piece it served a moment ago: 429).
    const token = signTestToken({ blob, peer: 'member', exp: Date.now() + 60_000 });
    let served = await rawGet(baseUrl, path, pieceAuthHeaders(token, 'member'));
    await waitFor(
      `${name}: a valid token is served`,
      async () => {
        served = await rawGet(baseUrl, path, pieceAuthHeaders(token, 'member'));
        return served.status !== 429;
      },
      { timeoutMs: 10_000, intervalMs: 500 },
    );
    assert.equal(served.status, 200, `${name}: a valid token is served`);
    assert.ok(served.body.length > 0);
  }

  it("refuses the agent's peer port without a valid token, and serves with one", async () => {
    const [first] = cluster.agents;
    assert.ok(first !== undefined);
    await assertMembersOnly('peer port', peerUrl, first, 'shoal_agent_piece_auth_refused_total');
  });

  it('refuses the seed server without a valid token, and serves with one', async () => {
    await assertMembersOnly(
      'seed server',
      cluster.seed.url,
      cluster.seed,
      'shoal_seedserver_piece_auth_refused_total',
    );
  });

  it('never serves manifests or the registry API on the peer port', async () => {
    const manifest = cluster.image.manifest.digest;
    const token = signTestToken({ blob: manifest, peer: 'member', exp: Date.now() + 60_000 });
    for (const path of [
      '/v2/',
      `/v2/${repository}/manifests/${manifest}?ns=${cluster.registry.host}`,
      `/v2/${repository}/manifests/latest?ns=${cluster.registry.host}`,
      `/v2/${repository}/blobs/${blob}?ns=${cluster.registry.host}`,
    ]) {
      const response = await rawGet(peerUrl, path, pieceAuthHeaders(token, 'member'));
      assert.equal(response.status, 404, path);
    }
  });

  it('terminates and counts seed requests with bad names or unconfigured registries, and keeps seeding', async () => {
    const nc = await connect({ servers: cluster.nats.url, timeout: 5_000 });
    try {
      const js = jetstream(nc, { timeout: 5_000 });
      const digest = `sha256:${'2'.repeat(64)}`;
      const valid = {
        type: 'seed-request',
        blob: digest,
        registry: cluster.registry.host,
        repository,
        reason: { kind: 'want' },
      };
      const bad = [
        { ...valid, repository: '../../v2/_catalog' },
        { ...valid, repository: 'Team/Upper' },
        { ...valid, registry: 'evil.example.com' },
        { ...valid, registry: 'evil.example.com/x?y=' },
        { ...valid, blob: `sha256:${'3'.repeat(64)}` },
      ];
      const rejectedBefore = await cluster.seed.metric(
        'shoal_seedserver_seed_requests_rejected_total',
      );
      for (const [i, message] of bad.entries()) {
        await js.publish(seedRequestSubject(digest), Buffer.from(JSON.stringify(message)), {
          msgID: `bad-${i}`,
        });
      }
      await waitFor(
        'bad seed requests counted',
        async () =>
          (await cluster.seed.metric('shoal_seedserver_seed_requests_rejected_total')) ===
          rejectedBefore + bad.length,
        { timeoutMs: 15_000 },
      );
    } finally {
      await nc.close();
    }
    // Still running and ready.
    const readyz = await fetch(`${cluster.seed.url}/readyz`);
    assert.equal(readyz.status, 200);
  });

  it('terminates and counts node preheat tasks with bad names, and keeps serving', async () => {
    const [first] = cluster.agents;
    assert.ok(first !== undefined);
    const nc = await connect({ servers: cluster.nats.url, timeout: 5_000 });
    try {
      // The watcher owns this stream; none runs here, so the test declares it.
      const jsm = await jetstreamManager(nc, { timeout: 5_000 });
      await jsm.streams.add({
        name: STREAMS.preheatNodes.name,
        subjects: [...STREAMS.preheatNodes.subjects],
      });
      const js = jetstream(nc, { timeout: 5_000 });
      const valid = {
        type: 'preheat-nodes',
        job: 'bad-names',
        registry: cluster.registry.host,
        repository,
        blobs: [{ digest: blob, size: 1 }],
        selector: {},
      };
      const bad = [
        { ...valid, repository: '../../v2/_catalog' },
        { ...valid, registry: 'evil.example.com/x?y=' },
        { ...valid, blobs: [{ digest: 'sha256:abc', size: 1 }] },
      ];
      for (const message of bad) {
        await js.publish(PREHEAT_NODES_SUBJECT, Buffer.from(JSON.stringify(message)));
      }
      await waitFor(
        'bad node preheat tasks counted',
        async () =>
          (await first.metric('shoal_agent_events_rejected_total', { type: 'preheat-nodes' })) ===
          bad.length,
        { timeoutMs: 30_000 },
      );
    } finally {
      await nc.close();
    }
    assert.equal((await fetch(`${first.url}/readyz`)).status, 200);
  });
});
