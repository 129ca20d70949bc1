/**
 * Registries that leave headers out of their manifest answers: no `Docker-Content-Digest`
 * (older Quay, some proxies), a HEAD without `Content-Length`, no `Content-Type`. The fault proxy drops them in
 * front of the real registry. The agent answers a GET by tag with the digest it computed from
 * the bytes, passes the HEAD on as the registry gave it, and containerd pulls.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { Teardown } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import {
  pullOnlyThroughMirror,
  startProxiedMirror,
  type ProxiedMirrorFixture,
} from '../src/mirror.js';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';

describe('manifest answers without Docker-Content-Digest or Content-Length', () => {
  const teardown = new Teardown();
  let mirror: ProxiedMirrorFixture;

  before(async () => {
    mirror = await startProxiedMirror({
      layerSizes: [1 * MiB],
      seed: 'registry-manifest-headers',
      repository: 'bare/app',
    });
    teardown.add('mirror', () => mirror.stop());
    mirror.proxy.set({ kind: 'drop-headers', names: ['docker-content-digest', 'content-length'] });
  });
  after(() => teardown.run());

  const ask = (method: 'GET' | 'HEAD'): Promise<Response> =>
    fetch(`${mirror.agent.url}/v2/bare/app/manifests/latest?ns=${mirror.registry.host}`, {
      method,
      headers: { accept: MANIFEST },
      signal: AbortSignal.timeout(30_000),
    });

  it('answers a GET by tag with the digest of the bytes it got', async () => {
    const answer = await ask('GET');
    assert.equal(answer.status, 200);
    const bytes = Buffer.from(await answer.arrayBuffer());
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    assert.equal(digest, mirror.image.manifest.digest);
    assert.equal(answer.headers.get('docker-content-digest'), digest);
    assert.equal(answer.headers.get('content-length'), String(bytes.length));
  });

  it('passes a HEAD by tag on as the registry gave it', async () => {
    const answer = await ask('HEAD');
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get('docker-content-digest'), null);
    assert.equal(answer.headers.get('content-type'), MANIFEST);
  });

  it('labels a manifest sent without a Content-Type by what it is: an index stays an index', async () => {
    // A multi-platform index over the pushed manifest, put straight into the real registry.
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: INDEX,
        manifests: [
          {
            mediaType: MANIFEST,
            digest: mirror.image.manifest.digest,
            size: mirror.image.manifest.size,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    );
    const indexDigest = `sha256:${createHash('sha256').update(index).digest('hex')}`;
    const put = await fetch(`${mirror.registry.url}/v2/bare/app/manifests/multi`, {
      method: 'PUT',
      headers: { 'content-type': INDEX },
      body: index,
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(put.status, 201);
    mirror.proxy.set({ kind: 'drop-headers', names: ['content-type'] });
    try {
      for (const reference of ['multi', indexDigest]) {
        const answer = await fetch(
          `${mirror.agent.url}/v2/bare/app/manifests/${reference}?ns=${mirror.registry.host}`,
          {
            headers: { accept: `${INDEX}, ${MANIFEST}` },
            signal: AbortSignal.timeout(30_000),
          },
        );
        assert.equal(answer.status, 200, reference);
        // Before: labelled an image manifest, which containerd would read as one.
        assert.equal(answer.headers.get('content-type'), INDEX, reference);
        assert.equal(answer.headers.get('docker-content-digest'), indexDigest, reference);
        assert.deepEqual(Buffer.from(await answer.arrayBuffer()), index, reference);
      }
    } finally {
      mirror.proxy.set({
        kind: 'drop-headers',
        names: ['docker-content-digest', 'content-length'],
      });
    }
  });

  it('lets containerd pull through the agent when only the Content-Type is left out', async () => {
    // The usual case of such a registry: digest and length sent, no type. containerd would
    // build its descriptor from the HEAD with an empty type and fail; the agent passes such a
    // HEAD on without digest and length, so containerd asks a GET, labelled by the agent.
    mirror.proxy.set({ kind: 'drop-headers', names: ['content-type'] });
    const head = await ask('HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('docker-content-digest'), null);
    const byDigest = `${mirror.ref.split(':').slice(0, -1).join(':')}@${mirror.image.manifest.digest}`;
    for (const ref of [mirror.ref, byDigest]) {
      await pullOnlyThroughMirror(teardown, {
        registryHost: mirror.registry.host,
        mirrorUrl: mirror.agent.url,
        ref,
        digests: [mirror.image.manifest.digest, ...mirror.image.blobs.map((blob) => blob.digest)],
      });
    }
  });

  it('lets containerd pull through the agent, Content-Type left out too', async () => {
    // The HEAD by tag then says neither digest nor type: containerd asks a GET, which the
    // agent labels by what the manifest is.
    mirror.proxy.set({
      kind: 'drop-headers',
      names: ['docker-content-digest', 'content-length', 'content-type'],
    });
    await pullOnlyThroughMirror(teardown, {
      registryHost: mirror.registry.host,
      mirrorUrl: mirror.agent.url,
      ref: mirror.ref,
      digests: [mirror.image.manifest.digest, ...mirror.image.blobs.map((blob) => blob.digest)],
    });
  });
});
