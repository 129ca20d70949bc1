/**
 * The swarm with TLS wherever bytes cross a node (issue 10, item 4): NATS over mutual TLS,
 * and pieces over HTTPS with mutual TLS on every agent's peer port and on the seed server,
 * all from a CA of the test's own. Six agents pull one image at once: every layer verifies,
 * and agents trade pieces over TLS. Then, against the same servers: plain HTTP to a TLS piece
 * port gets nothing; a client whose certificate is not from the cluster CA is refused even with
 * a valid hand-out token; and an agent whose piece client trusts another CA refuses the peers
 * and the seed server, and still serves its node from the origin.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import { pieceAuthHeaders, pieceBounds, piecePath, pieceSizeFor } from '@shoal/proto';
import {
  getText,
  makeTestCa,
  signTestToken,
  startAgent,
  waitFor,
  type IssuedCert,
  type TestCa,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const REPOSITORY = 'shoal/tls-swarm';

interface Connz {
  connections?: { name?: string; tls_version?: string }[];
}

describe('six agents pull through a swarm with TLS on NATS and on pieces', () => {
  let cluster: Cluster;
  let ca: TestCa;
  let caPem: Buffer;
  let otherCa: TestCa;
  let member: IssuedCert;
  let stranger: IssuedCert;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [64 * MiB, 8 * MiB, 1 * MiB],
      seed: 'swarm-tls',
      repository: REPOSITORY,
      trackers: 1,
      // A longer stall timeout than the tests' 4 s: on a loaded machine hand-outs can take
      // seconds, and this test is about pieces crossing TLS, not about the origin fallback.
      agents: [1, 2, 3, 4, 5, 6].map((n) => ({
        peerId: `tls-node-${n}`,
        env: { SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: '15000' },
      })),
      natsTls: { verifyClients: true },
      pieceTls: { verifyClients: true },
    });
    assert.ok(cluster.ca !== undefined);
    ca = cluster.ca;
    caPem = await readFile(ca.caFile);
    otherCa = await makeTestCa('not-the-cluster-ca');
    member = await ca.issue('member-client');
    stranger = await otherCa.issue('stranger-client');
  });

  after(async () => {
    await cluster.stop();
    await otherCa.remove();
  });

  it('delivers verified layers, with pieces traded between agents over TLS', async (t) => {
    const { image, agents } = cluster;
    const started = Date.now();
    const outcomes = await Promise.all(
      agents.map((agent) => pullBlobs(agent, cluster, REPOSITORY)),
    );
    const elapsed = (Date.now() - started) / 1000;
    for (const [i, list] of outcomes.entries()) {
      list.forEach((outcome, b) => {
        assert.equal(outcome.status, 200, `agent ${i}, blob ${b}`);
        assert.equal(outcome.digest, image.blobs[b]?.digest, `agent ${i}, blob ${b} verifies`);
      });
    }
    const total = image.blobs.reduce((sum, b) => sum + b.size, 0);
    const sources = await Promise.all(agents.map((agent) => bytesBySource(agent)));
    for (const [i, s] of sources.entries()) {
      assert.equal(s.origin + s.seed + s.peer, total, `${agents[i]?.peerId ?? i}: every byte once`);
    }
    const fromPeers = sources.reduce((sum, s) => sum + s.peer, 0);
    const fromSeed = sources.reduce((sum, s) => sum + s.seed, 0);
    const fromOrigin = sources.reduce((sum, s) => sum + s.origin, 0);
    t.diagnostic(
      `${agents.length} agents × ${(total / MiB).toFixed(0)} MiB in ${elapsed.toFixed(1)} s over TLS: ` +
        `${(fromPeers / MiB).toFixed(1)} MiB from peers, ${(fromSeed / MiB).toFixed(1)} MiB from the seed, ` +
        `${(fromOrigin / MiB).toFixed(1)} MiB from the origin`,
    );
    assert.ok(fromPeers > 0, 'agents fetched pieces from each other over HTTPS');
    assert.ok(fromSeed > 0, 'and from the seed server over HTTPS');
    // The origin is only the fallback of a stalled swarm: most bytes crossed TLS piece ports.
    assert.ok(
      fromPeers + fromSeed > (total * agents.length) / 2,
      `${fromPeers + fromSeed} of ${total * agents.length} bytes from the swarm`,
    );
    for (const agent of agents) {
      assert.match(agent.peerUrl ?? '', /^https:/);
    }
    assert.match(cluster.seed.url, /^https:/);
    // Every NATS connection is encrypted too.
    const connz = (await (await fetch(`${cluster.nats.monitorUrl}/connz`)).json()) as Connz;
    const connections = connz.connections ?? [];
    assert.ok(connections.length >= 8, 'tracker, seed server and six agents');
    for (const connection of connections) {
      assert.match(connection.tls_version ?? '', /^1\.[23]$/, String(connection.name));
    }
  });

  /** A piece of the big layer: its URL on `base` and its length. */
  function bigPiece(base: string): { url: string; blob: string; length: number } {
    const layer = cluster.image.layers[0];
    assert.ok(layer !== undefined);
    const { start, end } = pieceBounds(0, layer.size, pieceSizeFor(layer.size));
    return {
      url: new URL(piecePath(layer.digest, 0), base).toString(),
      blob: layer.digest,
      length: end - start,
    };
  }

  it('refuses plain HTTP on the TLS peer and seed ports', async () => {
    const agent = cluster.agents[0];
    assert.ok(agent?.peerUrl !== undefined);
    for (const base of [agent.peerUrl, cluster.seed.url]) {
      const { url, blob } = bigPiece(base.replace(/^https:/, 'http:'));
      const token = pieceAuthHeaders(
        signTestToken({ blob, peer: 'plain', exp: Date.now() + 60_000 }),
        'plain',
      );
      const answer = await getText(url, { headers: token, timeoutMs: 5_000 }).catch(
        (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
      );
      assert.ok(
        answer instanceof Error || answer.status >= 400,
        `${url}: plain HTTP got ${JSON.stringify(answer)}`,
      );
    }
  });

  it('serves pieces only to clients with a certificate of the cluster CA, and a token', async () => {
    const agent = cluster.agents[1];
    assert.ok(agent?.peerUrl !== undefined);
    const cases = [
      { where: 'peer', base: agent.peerUrl, count: () => agent.metric(REFUSED, CERT) },
      {
        where: 'seed',
        base: cluster.seed.url,
        count: () => cluster.seed.metric(SEED_REFUSED, CERT),
      },
    ];
    for (const { where, base, count } of cases) {
      const { url, blob, length } = bigPiece(base);
      const headers = pieceAuthHeaders(
        signTestToken({ blob, peer: 'checker', exp: Date.now() + 60_000 }),
        'checker',
      );
      const before = await count();
      const foreign = await getText(url, {
        ca: caPem,
        cert: await readFile(stranger.certFile),
        key: await readFile(stranger.keyFile),
        headers,
      });
      assert.equal(foreign.status, 403, `${where}: a certificate of another CA`);
      assert.match(foreign.body, /client certificate/);
      const none = await getText(url, { ca: caPem, headers });
      assert.equal(none.status, 403, `${where}: no client certificate`);
      assert.equal(await count(), before + 2, `${where}: both refusals counted`);

      const memberTls = {
        ca: caPem,
        cert: await readFile(member.certFile),
        key: await readFile(member.keyFile),
      };
      const noToken = await getText(url, memberTls);
      assert.equal(noToken.status, 401, `${where}: a member's certificate without a token`);
      // The seed server may ration a piece it sent during the pull a moment ago (429, come back
      // after `retry-after`): a member comes back, as agents do.
      let served = await getText(url, { ...memberTls, headers });
      await waitFor(
        `${where}: a member with a token is served`,
        async () => {
          served = await getText(url, { ...memberTls, headers });
          return served.status !== 429;
        },
        { timeoutMs: 10_000, intervalMs: 500 },
      );
      assert.equal(served.status, 200, `${where}: a member with a token`);
      assert.equal(served.bytes.length, length);
      // Probes and metrics answer without a client certificate.
      assert.equal((await getText(`${base}/readyz`, { ca: caPem })).status, 200);
    }
  });

  it('an agent whose piece client trusts another CA fetches no piece, and serves from the origin', async () => {
    const layer = cluster.image.layers[1];
    assert.ok(layer !== undefined && cluster.pieceTls !== undefined);
    const agent = await startAgent({
      registries: `${cluster.registry.host}=${cluster.registry.url}`,
      defaultRegistry: cluster.registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'tls-wrong-ca',
      pieceTls: cluster.pieceTls,
      env: {
        ...cluster.agentEnv,
        ...(await cluster.nats.clientEnv('tls-wrong-ca')),
        SHOAL_AGENT_PIECE_TLS_CA_FILE: otherCa.caFile,
      },
    });
    try {
      assert.equal(await agent.metric('shoal_agent_swarm_joined'), 1);
      const [outcome] = await pullBlobs(
        agent,
        { registry: cluster.registry, image: { ...cluster.image, blobs: [layer] } },
        REPOSITORY,
      );
      assert.ok(outcome !== undefined);
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, layer.digest);
      const bytes = await bytesBySource(agent);
      assert.deepEqual(bytes, { origin: layer.size, seed: 0, peer: 0 });
    } finally {
      await agent.stop();
    }
  });
});

const REFUSED = 'shoal_agent_piece_auth_refused_total';
const SEED_REFUSED = 'shoal_seedserver_piece_auth_refused_total';
const CERT = { reason: 'client-certificate' };
