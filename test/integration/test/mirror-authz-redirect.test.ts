/**
 * A registry that redirects every request (as registry.k8s.io does: each one goes on to a
 * backend registry, which is where the content is checked) must not open the node's cache.
 *
 * The agent mirrors a private registry (htpasswd) and such a redirecting front, whose backend
 * is a real public registry holding other images. A client authorized at the private registry
 * pulls a private image; a client with no credentials then names its digests under the
 * redirecting front. The front redirects that request as it redirects every request; the
 * redirect proves nothing, and where it leads the backend answers 404, so the agent reads the
 * content through the redirect and the read fails there: no byte of the private image.
 * Content the backend does hold is found there (one byte read through the redirect), then
 * fetched and cached as from any registry, by digest as by tag.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startRegistry,
  Teardown,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { ociCode } from '../src/http.js';
import { answerSignIn } from '../src/sign-in.js';

const auth = { username: 'puller', password: 'private-behind-htpasswd' };
const basic = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
const PRIVATE_REPO = 'private/app';
/** The repository as clients name it at the front, and as the backend holds it. */
const FRONT_REPO = 'pause';
const BACKEND_REPO = `images/${FRONT_REPO}`;

interface Fetched {
  readonly status: number;
  readonly body: Buffer;
  readonly digest: string;
}

async function get(
  url: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<Fetched> {
  const response = await fetch(url, { method, headers, signal: AbortSignal.timeout(30_000) });
  const body = Buffer.from(await response.arrayBuffer());
  return {
    status: response.status,
    body,
    digest: `sha256:${createHash('sha256').update(body).digest('hex')}`,
  };
}

/**
 * A GET that may be cut: its status, the body bytes that came, and whether it completed (a
 * response whose content fails its digest is cut, never completed).
 */
async function getMaybeCut(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: Buffer; completed: boolean }> {
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(30_000) });
  const chunks: Buffer[] = [];
  let completed = true;
  try {
    for await (const chunk of response.body ?? []) {
      chunks.push(Buffer.from(chunk as Uint8Array));
    }
  } catch {
    completed = false;
  }
  return { status: response.status, body: Buffer.concat(chunks), completed };
}

describe('a registry that redirects every request', () => {
  const teardown = new Teardown();
  let privateRegistry: Registry;
  let backend: Registry;
  let front: Server;
  let frontHost: string;
  let sso: Server;
  let ssoHost: string;
  let privateImage: GeneratedImage;
  let publicImage: GeneratedImage;
  let agent: AgentProcess;
  const frontAsked: string[] = [];

  before(async () => {
    privateRegistry = await startRegistry({ auth });
    teardown.add('private registry', () => privateRegistry.stop());
    backend = await startRegistry();
    teardown.add('backend registry', () => backend.stop());
    const dir = await makeTempDir('authz-redirect');
    teardown.add('dir', () => dir.remove());
    privateImage = await generateImage(join(dir.path, 'private'), {
      layerSizes: [300 * 1024],
      seed: 'authz-redirect-private',
    });
    await pushImage(privateImage, privateRegistry.host, PRIVATE_REPO, {
      destCreds: `${auth.username}:${auth.password}`,
    });
    publicImage = await generateImage(join(dir.path, 'public'), {
      layerSizes: [200 * 1024],
      seed: 'authz-redirect-public',
    });
    await pushImage(publicImage, backend.host, BACKEND_REPO);

    // The front answers its API check and redirects everything else to the backend, unchecked.
    front = createServer((req, res) => {
      const url = req.url ?? '/';
      frontAsked.push(`${req.method ?? ''} ${url}`);
      if (url === '/v2/' || url === '/v2') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        return;
      }
      const rest = url.replace(/^\/v2\//, '');
      res.writeHead(307, { location: `${backend.url}/v2/images/${rest}`, 'content-length': 0 });
      res.end();
    });
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
    frontHost = `127.0.0.1:${String((front.address() as AddressInfo).port)}`;
    teardown.add('front', () => new Promise<void>((resolve) => front.close(() => resolve())));

    // A login proxy: every request without its session goes to a sign-in page, served by a
    // file server that honours ranges.
    sso = createServer((req, res) => {
      if (answerSignIn(req, res, Buffer.from('<html><body>sign in</body></html>'), 'text/html')) {
        return;
      }
      res.writeHead(302, { location: '/login', 'content-length': 0 }).end();
    });
    await new Promise<void>((resolve) => sso.listen(0, '127.0.0.1', resolve));
    ssoHost = `127.0.0.1:${String((sso.address() as AddressInfo).port)}`;
    teardown.add('sso', () => new Promise<void>((resolve) => sso.close(() => resolve())));

    agent = await startAgent({
      registries: [
        `${privateRegistry.host}=${privateRegistry.url}`,
        `${frontHost}=http://${frontHost}`,
        `${ssoHost}=http://${ssoHost}`,
        `${backend.host}=${backend.url}`,
      ].join(','),
      defaultRegistry: privateRegistry.host,
    });
    teardown.add('agent', () => agent.stop());
  });

  after(async () => {
    await teardown.run();
  });

  const atPrivate = (path: string): string =>
    `${agent.url}/v2/${PRIVATE_REPO}/${path}?ns=${privateRegistry.host}`;
  const atFront = (path: string): string => `${agent.url}/v2/${FRONT_REPO}/${path}?ns=${frontHost}`;

  it('does not serve a private layer or manifest the node holds to a client naming it under the front', async () => {
    const layer = privateImage.layers[0];
    assert.ok(layer !== undefined);
    const manifest = privateImage.manifest;
    // The authorized client's pull puts both in the node's cache.
    const pulled = await get(atPrivate(`manifests/${privateImage.tag}`), {
      authorization: basic,
      accept: manifest.mediaType,
    });
    assert.equal(pulled.status, 200);
    assert.equal(pulled.digest, manifest.digest);
    const layerPulled = await get(atPrivate(`blobs/${layer.digest}`), { authorization: basic });
    assert.equal(layerPulled.status, 200);
    assert.equal(layerPulled.digest, layer.digest);
    // The private registry itself still refuses an anonymous client.
    assert.equal((await get(atPrivate(`blobs/${layer.digest}`))).status, 401);

    const upstreamBefore = await agent.metric('shoal_agent_authz_decisions_total', {
      result: 'upstream',
    });
    frontAsked.length = 0;
    // The read fails where the redirect led: a 404 there reads as the registry's storage
    // refusing a URL it signed, asked once more, then 502 with an OCI error body.
    for (const [method, headers] of [
      ['GET', {}],
      ['GET', { range: 'bytes=0-1023' }],
      ['HEAD', {}],
    ] as const) {
      const asked = await get(atFront(`blobs/${layer.digest}`), headers, method);
      assert.equal(asked.status, 502, `${method} ${JSON.stringify(headers)}`);
      assert.equal(asked.body.length > 0, method === 'GET', `${method}: an error body or none`);
      if (method === 'GET') {
        assert.equal(ociCode(asked.body), 'UNAVAILABLE', `${method}: an OCI error body`);
      }
      assert.ok(asked.body.length < 1024, `${method}: ${asked.body.length} bytes, not content`);
      assert.ok(
        !asked.body.includes(layerPulled.body.subarray(0, 64)),
        `${method}: no byte of the private layer`,
      );
    }
    const manifestAsked = await get(atFront(`manifests/${manifest.digest}`), {
      accept: manifest.mediaType,
    });
    assert.equal(manifestAsked.status, 502, 'the manifest read failed where the redirect led');
    assert.equal(ociCode(manifestAsked.body), 'UNAVAILABLE');
    assert.notEqual(manifestAsked.digest, manifest.digest);
    assert.ok(
      !manifestAsked.body.includes(pulled.body.subarray(0, 32)),
      'not the private manifest',
    );
    // Every one of them was taken to the front (and on to the backend), none served from the node.
    assert.ok(
      frontAsked.filter((line) => line.startsWith('GET ')).length >= 3,
      `the front was read for the content: ${frontAsked.join(', ')}`,
    );
    const upstreamAfter = await agent.metric('shoal_agent_authz_decisions_total', {
      result: 'upstream',
    });
    assert.ok(
      upstreamAfter - upstreamBefore >= 4,
      `decisions counted as upstream: ${upstreamAfter - upstreamBefore}`,
    );
  });

  it("does not take a login proxy's sign-in page for a private layer the node holds", async () => {
    const layer = privateImage.layers[0];
    assert.ok(layer !== undefined);
    // Held since the first test's authorized pull.
    const held = await get(atPrivate(`blobs/${layer.digest}`), { authorization: basic });
    assert.equal(held.digest, layer.digest);
    // The check finds a web page where the proxy's redirect leads, not the layer: the agent
    // reads the content through the redirect, gets the sign-in page, and cuts the response
    // when it fails the digest. Never a completed answer, never a byte of the layer.
    for (const headers of [{}, { range: 'bytes=0-1023' }]) {
      const asked = await getMaybeCut(
        `${agent.url}/v2/corp/app/blobs/${layer.digest}?ns=${ssoHost}`,
        headers,
      );
      const what = `${JSON.stringify(headers)}: ${asked.status}, ${asked.body.length} bytes`;
      assert.ok(!asked.completed || ![200, 206].includes(asked.status), what);
      assert.ok(asked.body.length < 1024, what);
      assert.ok(!asked.body.includes(held.body.subarray(0, 16)), `${what}: no byte of the layer`);
    }
  });

  it('does not take a digest a pushed manifest names where its registry does not check it', async () => {
    // Anyone may push to the backend. A manifest of the public image with a `blobs` list naming
    // the private layer the node holds: the registry takes it without holding that layer.
    const layer = privateImage.layers[0];
    assert.ok(layer !== undefined);
    const original = await fetch(`${backend.url}/v2/${BACKEND_REPO}/manifests/${publicImage.tag}`, {
      headers: { accept: publicImage.manifest.mediaType },
      signal: AbortSignal.timeout(10_000),
    });
    const document = (await original.json()) as Record<string, unknown>;
    // Another: the layers named twice, `layers` and `Layers`. The registry (in Go) reads keys
    // case-insensitively, the last one winning: it checks the real layers and takes it.
    // And another: `layers` twice, the first naming the private layer with `urls` (a layer the
    // registry does not check), the second without: the registry's decoder keeps the `urls`.
    const privateDescriptor = {
      mediaType: 'application/octet-stream',
      digest: layer.digest,
      size: layer.size,
    };
    const rest = Object.fromEntries(Object.entries(document).filter(([key]) => key !== 'layers'));
    const twice = `${JSON.stringify(rest).slice(0, -1)},"layers":${JSON.stringify([
      { ...privateDescriptor, urls: ['https://example.test/layer'] },
    ])},"layers":${JSON.stringify([{ digest: layer.digest, size: layer.size }])}}`;
    const lures: [string, string][] = [
      [
        'blobs',
        JSON.stringify({ ...document, blobs: [{ digest: layer.digest, size: layer.size }] }),
      ],
      ['twice', twice],
      [
        'Layers',
        JSON.stringify({
          ...document,
          layers: [
            { mediaType: 'application/octet-stream', digest: layer.digest, size: layer.size },
          ],
          Layers: document.layers,
        }),
      ],
    ];
    const atBackend = (path: string): string =>
      `${agent.url}/v2/${BACKEND_REPO}/${path}?ns=${backend.host}`;
    for (const [tag, manifest] of lures) {
      const lure = Buffer.from(manifest);
      const pushed = await fetch(`${backend.url}/v2/${BACKEND_REPO}/manifests/${tag}`, {
        method: 'PUT',
        body: lure,
        headers: { 'content-type': publicImage.manifest.mediaType },
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(pushed.status, 201, `${tag}: the registry took it`);
      const answered = await get(atBackend(`manifests/${tag}`), {
        accept: publicImage.manifest.mediaType,
      });
      assert.equal(answered.status, 200);
      assert.ok(answered.body.equals(lure), `${tag}: the pushed manifest, served to anyone`);
      const named = await get(atBackend(`blobs/${layer.digest}`));
      assert.equal(named.status, 404, `${tag}: the backend does not hold it: its own answer`);
      assert.notEqual(named.digest, layer.digest);
      assert.ok(named.body.length < 1024, `${tag}: ${named.body.length} bytes, not the layer`);
    }
  });

  it('serves what the backend holds, found through the redirect, from the node after', async () => {
    // A layer asked for by digest before any manifest names it: the check reads one byte of
    // it where the redirect leads, finds it, and the layer is fetched and cached as any other.
    const first = publicImage.layers[0];
    assert.ok(first !== undefined);
    const upstreamBefore = await agent.metric('shoal_agent_authz_decisions_total', {
      result: 'upstream',
    });
    const direct = await get(atFront(`blobs/${first.digest}`));
    assert.equal(direct.status, 200);
    assert.equal(direct.digest, first.digest);
    assert.equal(
      await agent.metric('shoal_agent_authz_decisions_total', { result: 'upstream' }),
      upstreamBefore,
      'found where the redirect leads: an allow, not upstream',
    );
    // A yes found through a redirect holds for the request it answered: asked again, the
    // front is asked again (the node holds the layer now, and its size is checked); the layer
    // comes from the node.
    const whole = async (): Promise<number> =>
      (await backend.blobGets(first.digest)).filter((r) => r.written === first.size).length;
    const fetched = await whole();
    frontAsked.length = 0;
    const askedAgain = await get(atFront(`blobs/${first.digest}`));
    assert.equal(askedAgain.digest, first.digest);
    assert.ok(
      frontAsked.includes(`HEAD /v2/${FRONT_REPO}/blobs/${first.digest}`),
      `asked again: ${frontAsked.join(', ')}`,
    );
    assert.equal(await whole(), fetched, 'the layer served from the node, not read again');

    const manifest = publicImage.manifest;
    const byDigest = await get(atFront(`manifests/${manifest.digest}`), {
      accept: manifest.mediaType,
    });
    assert.equal(byDigest.status, 200);
    assert.equal(byDigest.digest, manifest.digest);
    for (const blob of publicImage.blobs) {
      const fetched = await get(atFront(`blobs/${blob.digest}`));
      assert.equal(fetched.status, 200, blob.digest);
      assert.equal(fetched.digest, blob.digest);
      assert.equal(fetched.body.length, blob.size);
    }
    // A manifest found where the front's redirect led is that place's word, not the front's:
    // it vouches for nothing it names. Asked again, the config is looked for again, and comes
    // from the node's cache.
    const config = publicImage.config;
    const configWhole = async (): Promise<number> =>
      (await backend.blobGets(config.digest)).filter((r) => r.written === config.size).length;
    const configFetched = await configWhole();
    frontAsked.length = 0;
    const again = await get(atFront(`blobs/${config.digest}`));
    assert.equal(again.status, 200);
    assert.equal(again.digest, config.digest);
    assert.ok(
      frontAsked.includes(`HEAD /v2/${FRONT_REPO}/blobs/${config.digest}`),
      `looked for again: ${frontAsked.join(', ')}`,
    );
    assert.equal(await configWhole(), configFetched, 'the config served from the node');

    const byTag = await get(atFront(`manifests/${publicImage.tag}`), {
      accept: manifest.mediaType,
    });
    assert.equal(byTag.status, 200);
    assert.equal(byTag.digest, manifest.digest);
  });
});
