/**
 * Tracing (issue 5, acceptance 1): containerd pulls an image through agent node-a while a
 * second agent, node-b, fetches the image's big layer at the same time. Every process exports
 * to an OTLP receiver the test runs. The big layer's request on node-a is one trace that
 * crosses four processes: node-a's mirror request and swarm download, the tracker's answer to
 * its want (context in NATS headers), the seed server seeding the blob (the tracker's seed
 * request, again through NATS headers) and serving pieces, and node-b serving pieces (context
 * in HTTP headers).
 *
 * Determinism: node-b starts only once the tracker has published the seed request for
 * node-a's want, so node-a's trace is the one holding the seed's work. The seed serves each
 * piece once per window (fanout 1) at a limited rate, so node-a is sent to node-b for the
 * pieces node-b took from the seed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  formatTraceTree,
  startContainerd,
  startOtlpReceiver,
  traceView,
  writeMirrorHosts,
  type CollectedSpan,
  type Containerd,
  type OtlpReceiver,
} from '@shoal/testkit';

import { pieceSizeFor } from '@shoal/proto';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { startCluster, type Cluster } from '../src/swarm.js';

const instance = (span: CollectedSpan): unknown => span.resource['service.instance.id'];

describe('one pull through the swarm is one trace across agent, tracker, peer and seed', () => {
  const repository = 'shoal/traced';
  let receiver: OtlpReceiver;
  let cluster: Cluster;
  let containerd: Containerd;

  before(async () => {
    receiver = await startOtlpReceiver();
    cluster = await startCluster({
      layerSizes: [32 * MiB, 1 * MiB],
      seed: 'tracing',
      repository,
      trackers: 1,
      agents: ['node-a', 'node-b'].map((peerId) => ({
        peerId,
        env: { OTEL_RESOURCE_ATTRIBUTES: `service.instance.id=${peerId}` },
      })),
      env: receiver.env,
      seedEnv: {
        SHOAL_SEED_PIECE_FANOUT: '1',
        SHOAL_SEED_UPLOAD_RATE_BYTES: String(6 * MiB),
      },
    });
    containerd = await startContainerd();
  });

  after(async () => {
    await containerd.stop();
    await cluster.stop();
    await receiver.stop();
  });

  it('links the mirror request, download, tracker, seed request, seed and peer pieces in one trace', async (t) => {
    const { registry, image, agents } = cluster;
    const [nodeA, nodeB] = agents;
    const big = image.layers[0];
    assert.ok(nodeA !== undefined && nodeB !== undefined && big !== undefined);
    await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, nodeA.url);

    const pull = containerd.pull(`${registry.host}/${repository}:latest`);
    await receiver.waitFor('the seed request for node-a’s want', (spans) =>
      spans.some(
        (s) => s.name === 'seed-request publish' && s.attributes['shoal.blob'] === big.digest,
      ),
    );
    const peerPull = streamDigest(
      `${nodeB.url}/v2/${repository}/blobs/${big.digest}?ns=${registry.host}`,
    );
    await pull;
    const fromB = await peerPull;
    assert.equal(fromB.digest, big.digest);

    // The big layer's request on node-a, and its trace once every process has exported its part.
    const isRoot = (s: CollectedSpan): boolean =>
      s.name === 'mirror GET blob' &&
      instance(s) === 'node-a' &&
      s.attributes['oci.digest'] === big.digest;
    const complete = (spans: readonly CollectedSpan[]): boolean => {
      const root = spans.find(isRoot);
      if (root === undefined) {
        return false;
      }
      const names = new Set(
        spans.filter((s) => s.traceId === root.traceId).map((s) => `${s.service}/${s.name}`),
      );
      return [
        'agent/swarm download',
        'tracker/piece-want process',
        'seedserver/seed-request process',
        'seedserver/gateway write',
        'seedserver/piece serve',
        'agent/piece serve',
      ].every((name) => names.has(name));
    };
    await receiver.waitFor('the big layer’s whole trace', complete, 30_000);
    const root = receiver.spans().find(isRoot);
    assert.ok(root !== undefined);
    const spans = receiver.trace(root.traceId);
    const { parentOf, named, roots } = traceView(spans);
    t.diagnostic(`trace ${root.traceId}, ${spans.length} spans:\n${formatTraceTree(roots)}`);
    assert.equal(roots.length, 1, 'one root: every span has its parent in the trace');
    assert.equal(roots[0]?.span.spanId, root.spanId);
    assert.equal(root.kind, 'server');
    assert.equal(root.parentSpanId, undefined, 'containerd sent no trace context');
    assert.deepEqual(
      new Set(spans.map((s) => s.service)),
      new Set(['agent', 'tracker', 'seedserver']),
    );
    assert.deepEqual(
      new Set(spans.filter((s) => s.service === 'agent').map(instance)),
      new Set(['node-a', 'node-b']),
    );

    // Agent root → swarm download → the tracker's CONSUMER span, through NATS headers.
    const [download] = named('agent', 'swarm download');
    assert.ok(download !== undefined);
    assert.equal(parentOf(download), root);
    const wants = named('tracker', 'piece-want process');
    assert.ok(wants.length > 0);
    for (const want of wants) {
      assert.equal(want.kind, 'consumer');
      assert.equal(parentOf(want), download, 'a want is answered in the download’s trace');
    }
    for (const handout of named('tracker', 'handout publish')) {
      assert.ok(wants.includes(parentOf(handout) ?? root));
    }

    // The tracker's seed-request publish → the seed server's CONSUMER span → its fetch and write.
    const published = named('tracker', 'seed-request publish').filter(
      (s) => s.attributes['shoal.outcome'] === 'published',
    );
    assert.equal(published.length, 1, 'one seed request stored for this blob');
    const [publish] = published;
    assert.ok(publish !== undefined);
    assert.equal(publish.kind, 'producer');
    assert.ok(wants.includes(parentOf(publish) ?? root));
    const [consume] = named('seedserver', 'seed-request process');
    assert.ok(consume !== undefined);
    assert.equal(consume.kind, 'consumer');
    assert.equal(parentOf(consume), publish);
    const [fetch] = named('seedserver', 'seed fetch');
    assert.ok(fetch !== undefined);
    assert.equal(parentOf(fetch), consume);
    assert.equal(fetch.attributes['shoal.source'], 'origin');
    const [origin] = named('seedserver', 'origin GET blob');
    assert.ok(origin !== undefined);
    assert.equal(parentOf(origin), fetch);
    assert.equal(origin.kind, 'client');
    const [write] = named('seedserver', 'gateway write');
    assert.ok(write !== undefined);
    assert.equal(parentOf(write), consume);

    // node-a's piece CLIENT spans → SERVER spans on the seed server and on node-b (HTTP headers).
    const served = spans.filter((s) => s.name === 'piece serve');
    assert.ok(served.length > 0);
    for (const server of served) {
      const client = parentOf(server);
      assert.equal(server.kind, 'server');
      assert.equal(client?.name, 'piece GET');
      assert.equal(client.kind, 'client');
      assert.equal(instance(client), 'node-a');
      assert.equal(parentOf(client), download);
      const source = client.attributes['shoal.source'];
      if (server.service === 'seedserver') {
        assert.equal(source, 'seed');
      } else {
        assert.equal(source, 'peer');
        assert.equal(client.attributes['shoal.peer'], 'node-b');
        assert.equal(instance(server), 'node-b');
      }
    }
    assert.ok(served.some((s) => s.service === 'seedserver'));
    assert.ok(served.some((s) => s.service === 'agent' && instance(s) === 'node-b'));

    // Only the first two requests to each source have a span of their own (and a SERVER span
    // below it); after them a request gets one only when it fails. The layer has many more
    // pieces than that.
    const gets = named('agent', 'piece GET').filter((s) => parentOf(s) === download);
    const bySource = new Map<unknown, number>();
    for (const get of gets.filter((s) => !s.error)) {
      const source = get.attributes['shoal.peer'];
      bySource.set(source, (bySource.get(source) ?? 0) + 1);
    }
    assert.ok(bySource.size >= 2, 'the seed server and node-b');
    for (const [source, count] of bySource) {
      assert.ok(count <= 2, `${String(source)}: ${count} piece requests traced without failing`);
    }
    const pieces = Math.ceil(big.size / pieceSizeFor(big.size));
    assert.ok(pieces > 2 * bySource.size + gets.filter((s) => s.error).length);
    // A request not traced sends no trace context, and its server starts no trace for it.
    assert.deepEqual(
      receiver.spans().filter((s) => s.name === 'piece serve' && s.parentSpanId === undefined),
      [],
    );
  });
});
