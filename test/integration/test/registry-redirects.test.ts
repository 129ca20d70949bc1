/**
 * Registries that send blob GETs to their storage (Docker Hub, ECR, GCR, ghcr answer 307 with
 * a signed S3 or CDN URL): the fault proxy's redirect fault does the same in front of a real
 * registry with Basic auth, its storage front on another origin checking the signature as S3
 * does (400 to a request that also carries Authorization, 403 to an expired signature). The
 * agent follows the redirect with the signed query intact and without the client's
 * credentials, goes back to the registry when the signed URL was refused, and resumes a cut
 * transfer with a Range on a fresh signed URL; containerd pulls through it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  Teardown,
  type StorageRequest,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import {
  pullOnlyThroughMirror,
  startProxiedMirror,
  type ProxiedMirrorFixture,
} from '../src/mirror.js';
import { pullBlobs, startCluster } from '../src/swarm.js';

const auth = { username: 'puller', password: 'redirect-password' };
const authorization = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;

describe('blob GETs redirected to signed storage URLs', () => {
  const teardown = new Teardown();
  let mirror: ProxiedMirrorFixture;

  before(async () => {
    mirror = await startProxiedMirror({
      layerSizes: [6 * MiB, 3 * MiB, 1 * MiB],
      seed: 'registry-redirects',
      repository: 'cdn/app',
      auth,
    });
    teardown.add('mirror', () => mirror.stop());
  });
  after(() => teardown.run());

  /** The storage front's requests since `from`. */
  const storageSince = (from: number): StorageRequest[] =>
    mirror.proxy.storageReceived().slice(from);
  const blobUrl = (digest: string): string =>
    `${mirror.agent.url}/v2/cdn/app/blobs/${digest}?ns=${mirror.registry.host}`;

  it('goes back to the registry for a fresh URL when the storage refuses an expired one', async () => {
    mirror.proxy.set({ kind: 'redirect', expired: 1 });
    const before = mirror.proxy.storageReceived().length;
    const blob = mirror.image.layers[1];
    assert.ok(blob !== undefined);
    const fetched = await streamDigest(blobUrl(blob.digest), { headers: { authorization } });
    assert.equal(fetched.status, 200);
    assert.equal(fetched.digest, blob.digest);
    assert.equal(fetched.error, undefined);
    const storage = storageSince(before);
    assert.deepEqual(
      storage.map((r) => r.status),
      [403, 200],
      'the expired URL refused, a fresh one from the registry served',
    );
  });

  it('resumes a transfer the storage cut, with a Range on a fresh signed URL', async () => {
    const blob = mirror.image.layers[0];
    assert.ok(blob !== undefined);
    const cutAt = 2 * MiB + 123;
    mirror.proxy.set({ kind: 'redirect', cutAtByte: cutAt });
    const before = mirror.proxy.storageReceived().length;
    const fetched = await streamDigest(blobUrl(blob.digest), { headers: { authorization } });
    assert.equal(fetched.status, 200);
    assert.equal(fetched.digest, blob.digest);
    assert.equal(fetched.error, undefined);
    assert.equal(fetched.bytes, blob.size);
    const storage = storageSince(before);
    assert.equal(storage.length, 2, 'the cut transfer and its resume');
    assert.equal(storage[0]?.range, undefined);
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(storage[1]?.range ?? '')?.[1]);
    assert.ok(resumedAt > 0 && resumedAt <= cutAt, `resumed at ${String(resumedAt)}`);
    assert.notEqual(storage[0]?.url, storage[1]?.url, 'a fresh signed URL for the resume');
    for (const request of storage) {
      assert.equal(request.authorization, undefined);
    }
  });

  it('lets containerd pull through the agent, no credential and the signature intact at the storage', async () => {
    mirror.proxy.set({ kind: 'redirect' });
    const before = mirror.proxy.storageReceived().length;
    await pullOnlyThroughMirror(teardown, {
      registryHost: mirror.registry.host,
      mirrorUrl: mirror.agent.url,
      ref: mirror.ref,
      digests: mirror.image.blobs.map((blob) => blob.digest),
      headers: { Authorization: authorization },
    });
    // The layers the cases above fetched are in the agent's cache; the others went to storage.
    const fetched = new Set(mirror.image.layers.slice(0, 2).map((layer) => layer.digest));
    const storage = storageSince(before);
    assert.equal(storage.length, mirror.image.blobs.length - fetched.size, 'one GET per blob');
    for (const request of storage) {
      assert.equal(request.authorization, undefined, 'no Authorization at the storage');
      assert.equal(request.status, 200, request.url);
      assert.match(request.url, /X-Amz-Signature=[0-9a-f]{32}/);
    }
  });
});

describe('a swarm behind a registry that redirects to signed storage', () => {
  const teardown = new Teardown();
  after(() => teardown.run());

  it('reads each blob from the storage once for the cluster, the first URL expired', async () => {
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('redirect-swarm');
    teardown.add('image', () => layout.remove());
    const image = await generateImage(layout.path, {
      layerSizes: [24 * MiB, 4 * MiB],
      seed: 'redirect-swarm',
    });
    await pushImage(image, registry.host, 'cdn/swarm');
    const proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());
    proxy.set({ kind: 'redirect', expired: 1 });
    const cluster = await startCluster({
      layerSizes: [],
      seed: 'redirect-swarm',
      repository: 'cdn/swarm',
      trackers: 1,
      agents: [1, 2, 3].map((n) => ({ peerId: `cdn-${n}` })),
      registry: { registry, image },
      upstreamUrl: proxy.url,
    });
    teardown.add('cluster', () => cluster.stop());
    const pulls = await Promise.all(
      cluster.agents.map((agent) => pullBlobs(agent, cluster, 'cdn/swarm')),
    );
    for (const outcomes of pulls) {
      assert.deepEqual(
        outcomes.map((o) => [o.status, o.digest, o.error]),
        image.blobs.map((blob) => [200, blob.digest, undefined]),
      );
    }
    const served = proxy.storageReceived().filter((r) => r.status === 200);
    for (const blob of image.blobs) {
      const reads = served.filter((r) => r.signedFor?.endsWith(blob.digest) === true);
      assert.equal(reads.length, 1, `${blob.digest} read from the storage once`);
    }
    assert.ok(proxy.storageReceived().every((r) => r.authorization === undefined));
  });
});
