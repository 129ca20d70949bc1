/**
 * Acceptance for the agent as a containerd mirror (issue 2, items 1-4): containerd and
 * skopeo pull through a real agent process from a real registry, and the registry's own log
 * says what it served.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  makeTempDir,
  skopeoCopy,
  startContainerd,
  writeMirrorHosts,
  type GeneratedImage,
  type Registry,
  type AgentProcess,
} from '@shoal/testkit';

import { fileDigest, MiB } from '../src/files.js';
import { startMirror, type MirrorFixture } from '../src/mirror.js';

/** Pulls `ref` with a fresh containerd whose hosts.toml points at `agent`; returns its content. */
async function pullWithFreshContainerd(
  registry: Registry,
  agent: AgentProcess,
  ref: string,
  user?: string,
): Promise<Set<string>> {
  const containerd = await startContainerd();
  const mark = (await registry.requests()).length;
  try {
    await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, agent.url);
    await containerd.pull(ref, user === undefined ? {} : { user });
    const pullTraffic = (await registry.requests()).slice(mark);
    assert.ok(pullTraffic.length > 0, 'the pull reached the registry (through the agent)');
    assert.deepEqual(
      pullTraffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'containerd never went around the mirror to the registry',
    );
    return await containerd.contentDigests();
  } finally {
    await containerd.stop();
  }
}

function assertHoldsImage(content: Set<string>, image: GeneratedImage): void {
  assert.ok(content.has(image.manifest.digest), 'manifest in the content store');
  for (const blob of image.blobs) {
    assert.ok(content.has(blob.digest), `${blob.digest} in the content store`);
  }
}

describe('containerd pulls through the agent', () => {
  let fixture: MirrorFixture;
  let registry: Registry;
  let agent: AgentProcess;
  let image: GeneratedImage;
  let ref: string;

  before(async () => {
    fixture = await startMirror({
      layerSizes: [256 * MiB, 8 * MiB, 512 * 1024],
      seed: 'mirror-containerd',
      repository: 'shoal/big',
    });
    ({ registry, agent, image, ref } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  it('pulls a 3-layer image with a 256 MiB layer, digests intact, every request through the agent', async () => {
    assert.ok(image.layers.length >= 3 && image.layers.some((l) => l.size >= 256 * MiB));
    const content = await pullWithFreshContainerd(registry, agent, ref);
    assertHoldsImage(content, image);

    for (const blob of image.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, `${blob.digest} fetched once`);
    }
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      image.blobs.reduce((s, b) => s + b.size, 0),
    );
  });

  it('serves a second pull with zero blob requests to the registry', async () => {
    const before = (await registry.blobGets()).length;
    const content = await pullWithFreshContainerd(registry, agent, ref);
    assertHoldsImage(content, image);
    assert.equal((await registry.blobGets()).length, before, 'no blob GET reached the registry');
    assert.ok(
      (await agent.metric('shoal_agent_served_bytes_total', { from: 'cache' })) >=
        image.blobs.reduce((s, b) => s + b.size, 0),
    );
  });

  it('lets skopeo copy the image through the mirror', async () => {
    const out = await makeTempDir('skopeo-out');
    try {
      await skopeoCopy(
        `docker://127.0.0.1:${agent.port}/shoal/big:latest`,
        `oci:${out.path}:copied`,
      );
      for (const blob of image.blobs) {
        const hex = blob.digest.slice('sha256:'.length);
        assert.equal(await fileDigest(join(out.path, 'blobs', 'sha256', hex)), blob.digest);
      }
    } finally {
      await out.remove();
    }
  });
});

describe('containerd pulls through the agent from an htpasswd-protected registry', () => {
  const auth = { username: 'puller', password: 'correct horse battery staple' };
  let fixture: MirrorFixture;
  let registry: Registry;
  let agent: AgentProcess;
  let image: GeneratedImage;
  let ref: string;

  before(async () => {
    fixture = await startMirror({
      layerSizes: [4 * MiB, 2 * MiB, 1 * MiB],
      seed: 'mirror-auth',
      repository: 'private/app',
      auth,
    });
    ({ registry, agent, image, ref } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  it('refuses a pull without credentials, passing the registry challenge through', async () => {
    const response = await fetch(
      `${agent.url}/v2/private/app/manifests/latest?ns=${registry.host}`,
    );
    assert.equal(response.status, 401);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/);
    const blob = await fetch(
      `${agent.url}/v2/private/app/blobs/${image.layers[0]?.digest ?? ''}?ns=${registry.host}`,
    );
    assert.equal(blob.status, 401);
    assert.equal(await agent.metric('shoal_agent_cache_size_bytes'), 0);
  });

  it('pulls with credentials given to containerd only', async () => {
    const content = await pullWithFreshContainerd(
      registry,
      agent,
      ref,
      `${auth.username}:${auth.password}`,
    );
    assertHoldsImage(content, image);
    for (const blob of image.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, `${blob.digest} fetched once`);
    }
  });
});
