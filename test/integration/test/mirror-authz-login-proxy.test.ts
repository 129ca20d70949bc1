/**
 * A private registry behind a login proxy: the proxy passes requests with a credential it
 * knows on to the registry, and answers everyone else as one of three kinds does:
 * - `sign-in redirect`: a redirect to its sign-in page, plain text, served by a file server
 *   that honours ranges (a 200 for a tag, a first byte for a blob);
 * - `sign-in in place`: the sign-in page itself, 200, for whatever was asked;
 * - `open registry`: a redirect to the same path on another registry, one anyone may push to
 *   (where an attacker pushed an image of the same name and tag).
 * A client with no credentials must get no private content through the agent however it goes
 * about it: straight away, after naming a tag first (answered 200), a manifest by digest found
 * where the redirect leads, or a digest the node holds of the sign-in page's very size (a
 * public blob it pulled).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
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

import { streamDigest } from '../src/http.js';
import { answerSignIn } from '../src/sign-in.js';

const auth = { username: 'puller', password: 'behind-the-login-proxy' };
const basic = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
const REPO = 'corp/app';
const PAGE = Buffer.from('Sign in to continue.');

/** The sign-in page's digest. */
function digestOfPage(): string {
  return `sha256:${createHash('sha256').update(PAGE).digest('hex')}`;
}

/** A blob of `bytes` pushed to `registry` under `repository`; its digest. */
async function pushBlob(registry: Registry, repository: string, bytes: Buffer): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const started = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, {
    method: 'POST',
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(started.status, 202);
  const upload = new URL(started.headers.get('location') ?? '', registry.url);
  upload.searchParams.set('digest', digest);
  const put = await fetch(upload, {
    method: 'PUT',
    body: bytes,
    headers: { 'content-type': 'application/octet-stream' },
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(put.status, 201);
  return digest;
}

const MODES = ['sign-in redirect', 'sign-in in place', 'open registry'] as const;

for (const mode of MODES)
  describe(`a private registry behind a login proxy (${mode})`, () => {
    const teardown = new Teardown();
    let registry: Registry;
    let publicRegistry: Registry;
    let proxy: Server;
    let proxyHost: string;
    let image: GeneratedImage;
    /** The attacker's image, of the private one's name and tag, on the open registry. */
    let lure: GeneratedImage;
    /** A public blob of the sign-in page's size. */
    let pageSized: string;
    let agent: AgentProcess;
    /** The first 32 bytes of each private object, by the anonymous client's URL for it. */
    const firstBytes = new Map<string, Buffer>();

    before(async () => {
      registry = await startRegistry({ auth });
      teardown.add('registry', () => registry.stop());
      publicRegistry = await startRegistry();
      teardown.add('public registry', () => publicRegistry.stop());
      const dir = await makeTempDir('authz-login-proxy');
      teardown.add('dir', () => dir.remove());
      image = await generateImage(join(dir.path, 'image'), {
        layerSizes: [100 * 1024],
        seed: 'authz-login-proxy',
      });
      await pushImage(image, registry.host, REPO, {
        destCreds: `${auth.username}:${auth.password}`,
      });
      pageSized = await pushBlob(publicRegistry, 'lib/pad', Buffer.alloc(PAGE.length, 'x'));
      lure = await generateImage(join(dir.path, 'lure'), {
        layerSizes: [1024],
        seed: 'authz-login-proxy-lure',
        tag: image.tag,
      });
      await pushImage(lure, publicRegistry.host, REPO);

      proxy = createServer((req, res) => {
        const url = req.url ?? '/';
        if (answerSignIn(req, res, PAGE, 'text/plain')) {
          return;
        }
        if (req.headers.authorization === basic) {
          // A session it knows: on to the registry.
          const headers: Record<string, string> = { authorization: basic };
          for (const name of ['accept', 'range'] as const) {
            const value = req.headers[name];
            if (value !== undefined) {
              headers[name] = value;
            }
          }
          const upstream = request(
            new URL(url, registry.url),
            { method: req.method, headers },
            (answer) => {
              res.writeHead(answer.statusCode ?? 502, answer.headers);
              answer.pipe(res);
            },
          );
          upstream.on('error', () => res.destroy());
          upstream.end();
        } else if (mode === 'sign-in redirect') {
          res.writeHead(302, { location: '/login', 'content-length': 0 }).end();
        } else if (mode === 'sign-in in place') {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': PAGE.length });
          res.end(req.method === 'HEAD' ? undefined : PAGE);
        } else {
          res.writeHead(307, { location: `${publicRegistry.url}${url}`, 'content-length': 0 });
          res.end();
        }
      });
      await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
      proxyHost = `127.0.0.1:${String((proxy.address() as AddressInfo).port)}`;
      teardown.add('proxy', () => new Promise<void>((resolve) => proxy.close(() => resolve())));

      agent = await startAgent({
        registries: [
          `${registry.host}=${registry.url}`,
          `${proxyHost}=http://${proxyHost}`,
          `${publicRegistry.host}=${publicRegistry.url}`,
        ].join(','),
        defaultRegistry: registry.host,
      });
      teardown.add('agent', () => agent.stop());

      // A user with a session pulls the image through the proxy: the node holds its manifest,
      // config and layer, and knows the digests the repository holds.
      const pulls: [string, string, Record<string, string>][] = [
        [
          `manifests/${image.tag}`,
          image.manifest.digest,
          { authorization: basic, accept: image.manifest.mediaType },
        ],
        ...image.blobs.map((b): [string, string, Record<string, string>] => [
          `blobs/${b.digest}`,
          b.digest,
          { authorization: basic },
        ]),
      ];
      for (const [path, digest, headers] of pulls) {
        const response = await fetch(`${agent.url}/v2/${REPO}/${path}?ns=${proxyHost}`, {
          headers,
          signal: AbortSignal.timeout(30_000),
        });
        const body = Buffer.from(await response.arrayBuffer());
        assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, digest);
        const kind = path.startsWith('blobs/') ? 'blobs' : 'manifests';
        firstBytes.set(
          `${agent.url}/v2/${REPO}/${kind}/${digest}?ns=${proxyHost}`,
          body.subarray(0, 32),
        );
      }
    });

    after(async () => {
      await teardown.run();
    });

    /**
     * Asserts that an anonymous client gets none of the private image from the node: every
     * blob and the manifest by digest, by GET, ranged GET and HEAD. What it gets is the proxy's
     * page (through the registry's redirect, cut when it fails the digest) or an error: never a
     * private byte, nor a private object's size.
     */
    async function assertNothingServed(what: string): Promise<void> {
      const asks: [string, number, RequestInit][] = [];
      for (const blob of image.blobs) {
        const url = `${agent.url}/v2/${REPO}/blobs/${blob.digest}?ns=${proxyHost}`;
        asks.push(
          [url, blob.size, {}],
          [url, blob.size, { headers: { range: 'bytes=0-1023' } }],
          [url, blob.size, { method: 'HEAD' }],
        );
      }
      asks.push([
        `${agent.url}/v2/${REPO}/manifests/${image.manifest.digest}?ns=${proxyHost}`,
        image.manifest.size,
        { headers: { accept: image.manifest.mediaType } },
      ]);
      const privateDigests = new Set([image.manifest.digest, ...image.blobs.map((b) => b.digest)]);
      for (const [url, size, init] of asks) {
        const response = await fetch(url, { ...init, signal: AbortSignal.timeout(30_000) });
        let body = Buffer.alloc(0);
        try {
          body = Buffer.from(await response.arrayBuffer());
        } catch {
          // Cut: the page failed the digest.
        }
        const label = `${what}: ${init.method ?? 'GET'} ${url} ${JSON.stringify(init.headers ?? {})}: ${response.status}, ${body.length} bytes`;
        assert.ok(body.length <= Math.max(PAGE.length, 1024), `${label}: the page or an error`);
        const head = firstBytes.get(url);
        assert.ok(head !== undefined && !body.includes(head), `${label}: no byte of it`);
        assert.ok(
          !privateDigests.has(`sha256:${createHash('sha256').update(body).digest('hex')}`),
          label,
        );
        assert.notEqual(response.headers.get('content-length'), String(size), `${label}: no size`);
        assert.ok(
          !(response.headers.get('content-range') ?? '').endsWith(`/${String(size)}`),
          `${label}: no range of it`,
        );
      }
    }

    it('serves nothing private to a client with no session', async () => {
      await assertNothingServed('before any lure');
    });

    it('serves nothing private after such a client named a tag, answered 200', async () => {
      const tag = await fetch(`${agent.url}/v2/${REPO}/manifests/${image.tag}?ns=${proxyHost}`, {
        headers: { accept: image.manifest.mediaType },
        signal: AbortSignal.timeout(30_000),
      });
      const body = Buffer.from(await tag.arrayBuffer());
      assert.equal(tag.status, 200, 'the page, or the open registry, answered');
      const got = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      assert.equal(got, mode === 'open registry' ? lure.manifest.digest : digestOfPage());
      await assertNothingServed('after a tag');
    });

    it('serves nothing private after such a client named a manifest found where the redirect leads', async () => {
      const found = await fetch(
        `${agent.url}/v2/${REPO}/manifests/${lure.manifest.digest}?ns=${proxyHost}`,
        { headers: { accept: lure.manifest.mediaType }, signal: AbortSignal.timeout(30_000) },
      );
      const body = Buffer.from(await found.arrayBuffer().catch(() => new ArrayBuffer(0)));
      const got = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      // The open registry holds it: served, for that request. Nowhere else is it found.
      assert.equal(got === lure.manifest.digest, mode === 'open registry', `${found.status}`);
      await assertNothingServed('after a manifest by digest');
    });

    it("serves nothing private after such a client named a blob the node holds of the page's size", async () => {
      const pulled = await streamDigest(
        `${agent.url}/v2/lib/pad/blobs/${pageSized}?ns=${publicRegistry.host}`,
      );
      assert.equal(pulled.digest, pageSized, 'the public blob, held by the node');
      const allowed = await agent.metric('shoal_agent_authz_decisions_total', { result: 'allow' });
      const lure = await fetch(`${agent.url}/v2/${REPO}/blobs/${pageSized}?ns=${proxyHost}`, {
        signal: AbortSignal.timeout(30_000),
      });
      await lure.arrayBuffer().catch(() => undefined);
      assert.equal(
        await agent.metric('shoal_agent_authz_decisions_total', { result: 'allow' }),
        allowed,
        'a page shown for any digest is no yes',
      );
      await assertNothingServed('after a blob of the page size');
    });

    it('still serves the user with a session, from the node', async () => {
      for (const blob of image.blobs) {
        const pulled = await streamDigest(
          `${agent.url}/v2/${REPO}/blobs/${blob.digest}?ns=${proxyHost}`,
          {
            headers: { authorization: basic },
          },
        );
        assert.equal(pulled.status, 200);
        assert.equal(pulled.digest, blob.digest);
      }
      assert.equal(
        (await registry.blobGets(image.layers[0]?.digest)).length,
        1,
        'the layer read from the registry once',
      );
    });
  });
