/**
 * Authorization before bytes (issue 10, item 1): a registry behind htpasswd, a seed server
 * holding the registry's credentials, two agents in a swarm. A client without credentials (or
 * with wrong ones) gets the registry's 401 challenge and not one byte of private content, in
 * every state the content can be in: never pulled, in flight on its node, cached on its node,
 * cached on a peer; and a manifest by digest likewise. containerd with the right credentials
 * pulls through the swarm.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  skopeoCopy,
  startAgent,
  startContainerd,
  startRegistry,
  Teardown,
  waitFor,
  writeMirrorHosts,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { ociCode, streamDigest } from '../src/http.js';
import { answerSignIn } from '../src/sign-in.js';
import { bytesBySource, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'private/app';
const auth = { username: 'puller', password: 'pull-me-if-you-can' };
const basic = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
const wrongBasic = `Basic ${Buffer.from(`${auth.username}:not-the-password`).toString('base64')}`;

/** A request for `path` at `agent`, with or without an Authorization header. */
function mirrorUrl(agent: AgentProcess, registry: Registry, path: string): string {
  return `${agent.url}/v2/${repository}/${path}?ns=${registry.host}`;
}

/**
 * Asserts that `agent` refuses the content at `path` to a client sending `authorization`
 * (none when undefined), asked with GET, HEAD and a ranged GET: the registry's own Basic
 * challenge, an OCI error body, no content.
 */
async function assertRefused(
  agent: AgentProcess,
  registry: Registry,
  path: string,
  authorization: string | undefined,
  what: string,
): Promise<void> {
  const asks: ['GET' | 'HEAD', Record<string, string>][] = [
    ['GET', {}],
    ['HEAD', {}],
    ['GET', { range: 'bytes=0-1023' }],
  ];
  for (const [method, extra] of asks) {
    const headers: Record<string, string> = {
      ...extra,
      ...(authorization === undefined ? {} : { authorization }),
    };
    const response = await fetch(mirrorUrl(agent, registry, path), {
      method,
      headers,
      signal: AbortSignal.timeout(30_000),
    });
    const body = Buffer.from(await response.arrayBuffer());
    assert.equal(response.status, 401, `${method} ${what}: 401`);
    assert.equal(response.headers.get('content-range'), null, `${what}: no range of content`);
    assert.match(
      response.headers.get('www-authenticate') ?? '',
      /^Basic realm="shoal-test"/,
      `${method} ${what}: the registry's challenge`,
    );
    assert.equal(response.headers.get('docker-content-digest'), null, `${what}: no digest`);
    if (method === 'GET') {
      assert.ok(body.length < 1024, `${what}: ${body.length} bytes of body, not content`);
      assert.equal(ociCode(body), 'UNAUTHORIZED', `${what}: an OCI error body`);
    }
  }
}

describe('authorization before bytes, with a private registry and a swarm', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let image: GeneratedImage;
  let cluster: Cluster;
  let slow: AgentProcess;
  let other: AgentProcess;
  let layouts: string;
  /** A node started late, with a long stall timeout. */
  let patient: AgentProcess;

  before(async () => {
    registry = await startRegistry({ auth });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('authz');
    teardown.add('dir', () => dir.remove());
    layouts = dir.path;
    image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [24 * MiB, 2 * MiB],
      seed: 'swarm-authz',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `${auth.username}:${auth.password}`,
    });
    const configPath = join(dir.path, 'config.json');
    const token = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    await writeFile(configPath, JSON.stringify({ auths: { [registry.host]: { auth: token } } }));
    cluster = await startCluster({
      layerSizes: [],
      seed: 'unused',
      repository,
      trackers: 1,
      registry: { registry, image },
      // A slow seed, so that a swarm pull takes pieces from the peer that holds them.
      seedEnv: {
        SHOAL_SEED_DOCKER_CONFIG: configPath,
        SHOAL_SEED_UPLOAD_RATE_BYTES: String(4 * MiB),
      },
      agents: [
        // Downloads slowly, so that its pull is still in flight while another client asks.
        { peerId: 'authz-slow', env: { SHOAL_AGENT_DOWNLOAD_RATE_BYTES: String(6 * MiB) } },
        { peerId: 'authz-other' },
      ],
    });
    teardown.add('cluster', () => cluster.stop());
    [slow, other] = cluster.agents as [AgentProcess, AgentProcess];
  });

  after(async () => {
    await teardown.run();
  });

  it('refuses content never pulled, and the seed fetches nothing for it', async () => {
    for (const blob of image.blobs) {
      await assertRefused(
        other,
        registry,
        `blobs/${blob.digest}`,
        undefined,
        `never pulled ${blob.digest}`,
      );
      await assertRefused(other, registry, `blobs/${blob.digest}`, wrongBasic, 'wrong password');
    }
    await assertRefused(
      other,
      registry,
      `manifests/${image.manifest.digest}`,
      undefined,
      'manifest',
    );
    assert.deepEqual(await registry.blobGets(), [], 'nobody fetched a blob for a refused client');
    assert.deepEqual(await bytesBySource(other), { origin: 0, seed: 0, peer: 0 });
    assert.equal(await other.metric('shoal_agent_cache_size_bytes'), 0);
    assert.ok(
      (await other.metric('shoal_agent_authz_decisions_total', { result: 'deny' })) >= 6,
      'the refusals are counted',
    );
  });

  it('refuses a layer while another client is pulling it on the same node', async () => {
    const big = image.layers[0];
    assert.ok(big !== undefined && big.size >= 20 * MiB);
    const response = await fetch(mirrorUrl(slow, registry, `blobs/${big.digest}`), {
      headers: { authorization: basic },
      signal: AbortSignal.timeout(120_000),
    });
    assert.equal(response.status, 200);
    assert.ok(response.body !== null);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    assert.ok(first.value !== undefined && first.value.length > 0, 'the pull has begun');

    assert.equal(await slow.metric('shoal_agent_downloads_in_flight'), 1, 'in flight before');
    await assertRefused(slow, registry, `blobs/${big.digest}`, undefined, 'in flight');
    await assertRefused(
      slow,
      registry,
      `blobs/${big.digest}`,
      wrongBasic,
      'in flight, wrong password',
    );
    assert.equal(await slow.metric('shoal_agent_downloads_in_flight'), 1, 'still in flight after');

    const hash = createHash('sha256').update(first.value);
    let bytes = first.value.length;
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        break;
      }
      hash.update(next.value);
      bytes += next.value.length;
    }
    assert.equal(bytes, big.size);
    assert.equal(`sha256:${hash.digest('hex')}`, big.digest, 'the authorized client got the layer');
  });

  it('refuses content cached on the node, and serves it to the right credentials', async () => {
    for (const blob of image.blobs) {
      const outcome = await streamDigest(mirrorUrl(slow, registry, `blobs/${blob.digest}`), {
        headers: { authorization: basic },
      });
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, blob.digest);
    }
    const manifest = await fetch(mirrorUrl(slow, registry, `manifests/${image.manifest.digest}`), {
      headers: { authorization: basic, accept: image.manifest.mediaType },
    });
    assert.equal(manifest.status, 200);
    assert.equal(Buffer.from(await manifest.arrayBuffer()).length, image.manifest.size);
    // The last byte comes once a blob verifies; its copy in the cache (fsync, rename) follows.
    const all = image.blobs.reduce((sum, b) => sum + b.size, 0);
    await waitFor(
      'every blob in the cache',
      async () => (await slow.metric('shoal_agent_cache_size_bytes')) >= all,
      { timeoutMs: 10_000 },
    );
    const cached = await slow.metric('shoal_agent_cache_size_bytes');
    assert.ok(cached >= all, 'all cached');

    const servedBefore = await slow.metric('shoal_agent_served_bytes_total');
    for (const blob of image.blobs) {
      await assertRefused(
        slow,
        registry,
        `blobs/${blob.digest}`,
        undefined,
        `cached ${blob.digest}`,
      );
      await assertRefused(
        slow,
        registry,
        `blobs/${blob.digest}`,
        wrongBasic,
        'cached, wrong password',
      );
    }
    await assertRefused(
      slow,
      registry,
      `manifests/${image.manifest.digest}`,
      undefined,
      'cached manifest',
    );
    assert.equal(
      await slow.metric('shoal_agent_served_bytes_total'),
      servedBefore,
      'not one byte served to the refused clients',
    );
  });

  it('refuses content cached on a peer', async () => {
    await assertRefused(other, registry, `manifests/${image.tag}`, undefined, 'tag');
    await assertRefused(other, registry, `manifests/${image.tag}`, wrongBasic, 'tag, wrong');
    for (const blob of image.blobs) {
      await assertRefused(
        other,
        registry,
        `blobs/${blob.digest}`,
        undefined,
        `on a peer ${blob.digest}`,
      );
    }
    await assertRefused(
      other,
      registry,
      `manifests/${image.manifest.digest}`,
      undefined,
      'manifest',
    );
    assert.deepEqual(await bytesBySource(other), { origin: 0, seed: 0, peer: 0 });
    assert.equal(await other.metric('shoal_agent_served_bytes_total'), 0, 'not one byte served');
  });

  it('does not take something else behind a redirect for a layer its peers hold', async () => {
    // A registry whose redirects for these layers lead to another object, plain text, served
    // by a file server that honours ranges (and to nothing for other digests, so it does not
    // look like a page shown for anything): its first byte passes for a blob's, its size is
    // its own. A fresh node holds nothing, so it cannot check that size before it fetches:
    // the swarm has the private layers, and it must not hand them on that object.
    const page = Buffer.from('Sign in to continue.');
    const layerPaths = new Set(image.layers.map((l) => `/v2/corp/app/blobs/${l.digest}`));
    const sso: Server = createServer((req, res) => {
      const url = req.url ?? '/';
      if (answerSignIn(req, res, page, 'text/plain')) {
        return;
      }
      if (layerPaths.has(url)) {
        res.writeHead(302, { location: '/login', 'content-length': 0 }).end();
      } else {
        res.writeHead(404, { 'content-length': 0 }).end();
      }
    });
    await new Promise<void>((resolve) => sso.listen(0, '127.0.0.1', resolve));
    teardown.add('sso', () => new Promise<void>((resolve) => sso.close(() => resolve())));
    const ssoHost = `127.0.0.1:${String((sso.address() as AddressInfo).port)}`;
    const lured = await startAgent({
      registries: `${registry.host}=${registry.url},${ssoHost}=http://${ssoHost}`,
      defaultRegistry: registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'authz-lured',
      env: { ...cluster.agentEnv, ...(await cluster.nats.clientEnv('authz-lured')) },
    });
    try {
      for (const layer of image.layers) {
        const asked = await streamDigest(
          `${lured.url}/v2/corp/app/blobs/${layer.digest}?ns=${ssoHost}`,
        );
        const what = `${layer.digest}: ${asked.status}, ${asked.bytes} bytes`;
        assert.notEqual(asked.digest, layer.digest, `${what}: not the layer`);
        assert.ok(asked.bytes <= page.length, `${what}: at most the page`);
      }
      assert.equal(
        await lured.metric('shoal_agent_authz_decisions_total', { result: 'size-mismatch' }),
        image.layers.length,
        "each layer found of another size than the object's first byte said",
      );
    } finally {
      await lured.stop();
    }
  });

  it('lets containerd with the right credentials pull through the swarm', async () => {
    const containerd = await startContainerd();
    try {
      await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, other.url);
      await assert.rejects(
        containerd.pull(`${registry.host}/${repository}:${image.tag}`, { timeoutMs: 60_000 }),
        'no credentials: containerd cannot pull',
      );
      await containerd.pull(`${registry.host}/${repository}:${image.tag}`, {
        user: `${auth.username}:${auth.password}`,
      });
      const content = await containerd.contentDigests();
      assert.ok(content.has(image.manifest.digest));
      for (const blob of image.blobs) {
        assert.ok(content.has(blob.digest), `${blob.digest} in containerd's store`);
      }
    } finally {
      await containerd.stop();
    }
    const sources = await bytesBySource(other);
    assert.equal(sources.origin, 0, 'nothing from the origin');
    assert.ok(sources.peer > 0, `bytes from peers: ${sources.peer}`);
    assert.equal(
      sources.peer + sources.seed,
      image.blobs.reduce((sum, b) => sum + b.size, 0),
      'every blob byte once, from the swarm',
    );
    assert.equal(await other.metric('shoal_agent_verification_failures_total'), 0);
    for (const blob of image.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, 'the origin served it once');
    }
  });

  it("falls back to the origin with the client's credentials, and passes its 401 back", async () => {
    // An image the swarm has never seen, and no seed server: every blob must come from the
    // origin, with the credentials of the client that asked.
    const late = await generateImage(join(layouts, 'late'), {
      layerSizes: [2 * MiB],
      seed: 'swarm-authz-late',
      tag: 'late',
    });
    await pushImage(late, registry.host, repository, {
      destCreds: `${auth.username}:${auth.password}`,
    });
    await cluster.seed.stop();
    const tag = await fetch(mirrorUrl(other, registry, `manifests/${late.tag}`), {
      headers: { authorization: basic, accept: late.manifest.mediaType },
    });
    assert.equal(tag.status, 200, 'the manifest vouches for its blobs in the repository');
    await tag.arrayBuffer();
    const layer = late.layers[0];
    assert.ok(layer !== undefined);
    const before = await bytesBySource(other);
    const fallbacks = await other.metric('shoal_agent_swarm_fallbacks_total');
    const pulled = await streamDigest(mirrorUrl(other, registry, `blobs/${layer.digest}`), {
      headers: { authorization: basic },
    });
    assert.equal(pulled.status, 200);
    assert.equal(pulled.digest, layer.digest);
    assert.ok((await other.metric('shoal_agent_swarm_fallbacks_total')) > fallbacks);
    assert.equal((await bytesBySource(other)).origin - before.origin, layer.size);
    assert.equal((await registry.blobGets(layer.digest)).length, 1, 'the registry served it');

    // The password changes while the agent still holds the registry's yes for the old one:
    // the check passes from the cache, the origin refuses the fallback, and the client gets
    // the registry's 401 with its challenge, as it would from the registry.
    await registry.changePassword('rotated-password');
    const hits = await other.metric('shoal_agent_authz_decisions_total', {
      result: 'allow',
      cache: 'hit',
    });
    const refused = await fetch(mirrorUrl(other, registry, `blobs/${late.config.digest}`), {
      headers: { authorization: basic },
      signal: AbortSignal.timeout(60_000),
    });
    const body = Buffer.from(await refused.arrayBuffer());
    assert.equal(
      await other.metric('shoal_agent_authz_decisions_total', { result: 'allow', cache: 'hit' }),
      hits + 1,
      'allowed from the cache',
    );
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/);
    assert.equal(ociCode(body), 'UNAUTHORIZED');
  });

  it('lets skopeo with credentials copy the image through a fresh node, from its peers', async () => {
    // Without a seed server (stopped above) a stalled swarm waits 10 s before the origin,
    // which the next test needs; here the peers hold everything.
    patient = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl: cluster.nats.url,
      peerId: 'authz-patient',
      env: {
        ...cluster.agentEnv,
        ...(await cluster.nats.clientEnv('authz-patient')),
        SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: '10000',
      },
    });
    teardown.add('patient agent', () => patient.stop());
    const ref = `docker://${new URL(patient.url).host}/${repository}:${image.tag}`;
    await assert.rejects(
      skopeoCopy(ref, `oci:${join(layouts, 'skopeo-anonymous')}:x`, { timeoutMs: 60_000 }),
      /unauthorized|authentication required/i,
    );
    const out = join(layouts, 'skopeo');
    await skopeoCopy(ref, `oci:${out}:x`, {
      srcCreds: `${auth.username}:rotated-password`,
      timeoutMs: 120_000,
    });
    for (const blob of image.blobs) {
      const [algorithm = '', hex = ''] = blob.digest.split(':');
      await access(join(out, 'blobs', algorithm, hex));
    }
    const sources = await bytesBySource(patient);
    assert.equal(sources.origin, 0, 'nothing from the origin');
    assert.equal(
      sources.peer,
      image.blobs.reduce((sum, b) => sum + b.size, 0),
      'every blob byte from the peers',
    );
  });

  it("finishes a late origin read with a newer client's credentials when the first one's were revoked", async () => {
    const credential = (password: string): string =>
      `Basic ${Buffer.from(`${auth.username}:${password}`).toString('base64')}`;
    const later = await generateImage(join(layouts, 'later'), {
      layerSizes: [2 * MiB],
      seed: 'swarm-authz-later',
      tag: 'later',
    });
    await pushImage(later, registry.host, repository, {
      destCreds: `${auth.username}:rotated-password`,
    });
    const layer = later.layers[0];
    assert.ok(layer !== undefined);
    const url = mirrorUrl(patient, registry, `blobs/${layer.digest}`);
    // The registry's yes for the first client's password, cached (a HEAD checks it): its pull
    // is then allowed from the cache after the password has changed, as one expiring during a
    // pull is. Changed before the download starts, so the registry's restart races nothing.
    const head = await fetch(url, {
      method: 'HEAD',
      headers: { authorization: credential('rotated-password') },
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(head.status, 200, 'the first client is authorized');
    await registry.changePassword('third-password');
    const first = streamDigest(url, { headers: { authorization: credential('rotated-password') } });
    await waitFor(
      'the download to wait on the swarm',
      async () => (await patient.metric('shoal_agent_downloads_in_flight')) === 1,
      { timeoutMs: 5_000, intervalMs: 50 },
    );
    // A second client, with the new password, joins while the swarm has not yet stalled.
    const second = streamDigest(url, { headers: { authorization: credential('third-password') } });
    const [a, b] = await Promise.all([first, second]);
    assert.equal(a.status, 200);
    assert.equal(a.digest, layer.digest, 'the first client got the layer');
    assert.equal(b.status, 200);
    assert.equal(b.digest, layer.digest, 'the second client got the layer');
    assert.equal(
      await patient.metric('shoal_agent_upstream_requests_total', { kind: 'blob', status: '401' }),
      1,
      "the first client's password was refused at the origin",
    );
    assert.equal((await registry.blobGets(layer.digest)).length, 1, 'then the second one served');
  });
});
