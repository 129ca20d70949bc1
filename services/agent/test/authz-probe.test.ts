import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { digestOf, type Digest } from '@shoal/proto';
import { UpstreamClient, type UpstreamRegistry } from '@shoal/registry';
import { createMetrics } from '@shoal/runtime';

import { Authorizer, type AuthzSubject } from '../src/authz/authorizer.js';
import { registryProbe } from '../src/authz/registry-probe.js';
import { createAgentMetrics } from '../src/metrics.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';

const LAYER = digestOf(Buffer.from('probe layer'));
const OTHER = digestOf(Buffer.from('a layer the registry does not hold'));
const MANIFEST_BYTES = Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] }));
const MANIFEST = digestOf(MANIFEST_BYTES);
const TOKEN = 'Bearer good';
const TIMEOUTS = { connectMs: 2000, headersMs: 2000, idleMs: 2000 };

/**
 * A registry front as the probe meets it: it redirects an authorized HEAD or GET to storage
 * that refuses HEAD (a URL signed for GET only) and serves a ranged GET; a digest it does not
 * hold it redirects all the same, to storage that has nothing (as registries that redirect
 * every request do); anyone else is challenged.
 */
describe('the registry probe', () => {
  let server: Server;
  let registry: UpstreamRegistry;
  const seen: { method: string; url: string; headers: IncomingHttpHeaders }[] = [];
  let client: UpstreamClient;

  before(async () => {
    server = createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
      if (req.url === '/storage/signed-for-get') {
        if (req.method !== 'GET') {
          res.writeHead(403).end();
          return;
        }
        res.writeHead(206, { 'content-range': 'bytes 0-0/11', 'content-length': 1 }).end('p');
        return;
      }
      if (req.url === '/storage/whole') {
        // Storage that ignores the range: the whole content, 200.
        res.writeHead(200, { 'content-length': 11 }).end('probe layer');
        return;
      }
      if (req.url === '/login') {
        // A file server's sign-in page: it honours ranges.
        if (req.headers.range === 'bytes=0-0') {
          res
            .writeHead(206, { 'content-type': 'text/html', 'content-range': 'bytes 0-0/20' })
            .end('<');
          return;
        }
        res.writeHead(200, { 'content-type': 'text/html' }).end('<html>sign in</html>');
        return;
      }
      if (req.url === '/login-plain') {
        // A sign-in page that is not HTML, from a file server that honours ranges.
        if (req.headers.range === 'bytes=0-0') {
          res.writeHead(206, { 'content-type': 'text/plain', 'content-range': 'bytes 0-0/7' });
          res.end('s');
          return;
        }
        res.writeHead(200, { 'content-type': 'text/plain' }).end('sign in');
        return;
      }
      if (req.url?.startsWith('/storage/') === true) {
        res.writeHead(404).end();
        return;
      }
      if (req.url?.startsWith('/v2/sso/') === true) {
        // A login proxy: anyone it does not know goes to its sign-in page.
        res.writeHead(302, { location: '/login' }).end();
        return;
      }
      if (req.url?.startsWith('/v2/registry/') === true) {
        // A registry answering in place, naming the digest, for what it holds.
        const held = [LAYER, MANIFEST].map((d) => d.toString()).find((d) => req.url?.endsWith(d));
        if (held === undefined) {
          res.writeHead(404).end();
          return;
        }
        const manifest = held === MANIFEST.toString();
        res.writeHead(200, {
          'docker-content-digest': held,
          'content-length': manifest ? MANIFEST_BYTES.length : 11,
        });
        res.end(req.method === 'GET' && manifest ? MANIFEST_BYTES : undefined);
        return;
      }
      if (req.url?.startsWith('/v2/nodigest/') === true) {
        // A registry answering in place without naming the digest, for what it holds.
        const manifest = req.url.endsWith(MANIFEST.toString());
        if (!manifest && !req.url.endsWith(LAYER.toString())) {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { 'content-length': manifest ? MANIFEST_BYTES.length : 11 });
        res.end(req.method === 'GET' && manifest ? MANIFEST_BYTES : undefined);
        return;
      }
      if (req.url?.startsWith('/v2/inplace/') === true) {
        // A login proxy answering anyone in place with its sign-in page, plain text.
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 7 });
        res.end(req.method === 'GET' ? 'sign in' : undefined);
        return;
      }
      if (req.url?.startsWith('/v2/sso-plain/') === true) {
        res.writeHead(302, { location: '/login-plain' }).end();
        return;
      }
      if (req.url?.startsWith('/v2/public/') === true) {
        const held = req.url.endsWith(`/blobs/${LAYER.toString()}`);
        res.writeHead(307, { location: held ? '/storage/signed-for-get' : '/storage/nothing' });
        res.end();
        return;
      }
      if (req.url?.startsWith('/v2/norange/') === true) {
        res.writeHead(307, { location: '/storage/whole' }).end();
        return;
      }
      if (req.headers.authorization !== TOKEN) {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="https://auth.test/token"' }).end();
        return;
      }
      const held = req.url === `/v2/team/app/blobs/${LAYER.toString()}`;
      res.writeHead(307, { location: held ? '/storage/signed-for-get' : '/storage/nothing' });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    registry = { host: `127.0.0.1:${port}`, url: new URL(`http://127.0.0.1:${port}`) };
    client = new UpstreamClient(TIMEOUTS);
  });

  after(async () => {
    await client.close();
    await new Promise((resolve) => server.close(resolve));
  });

  function authorizer(): Authorizer {
    const metrics = createAgentMetrics(createMetrics('agent'));
    return new Authorizer({
      probe: registryProbe(new RegistryRequests(client, metrics, TIMEOUTS)),
      ttlMs: 60_000,
      denyTtlMs: 5_000,
      staleMs: 0,
      maxEntries: 10,
      timeoutMs: 2_000,
      unreachable: 'deny',
    });
  }

  /** A blob of `repository` asked for by a client sending `authorization`. */
  function blobSubject(
    repository: string,
    digest: Digest,
    authorization: string | undefined,
  ): AuthzSubject {
    return { registry, repository, kind: 'blob', digest, authorization };
  }

  it('follows a redirect and reads one byte where it leads: a yes for a blob of that size', async () => {
    const authz = authorizer();
    seen.length = 0;
    const subject = { ...blobSubject('team/app', LAYER, TOKEN), size: 11 };
    assert.deepEqual(await authz.check(subject), { kind: 'allow', once: { size: 11 } });
    const path = `/v2/team/app/blobs/${LAYER.toString()}`;
    const asked = seen.map((r) => `${r.method} ${r.url} ${r.headers.range ?? ''}`.trim());
    assert.deepEqual(
      asked.slice(0, 3),
      [`HEAD ${path}`, `GET ${path} bytes=0-0`, 'GET /storage/signed-for-get bytes=0-0'],
      'the HEAD, then one byte read through the redirect',
    );
    assert.equal(seen[0]?.headers.authorization, TOKEN, "the client's own header");
    assert.equal(seen[1]?.headers.authorization, TOKEN, "the client's own header");
    // The control: the same look for a digest nothing holds, which finds nothing there.
    const control = asked[3] ?? '';
    assert.match(control, /^HEAD \/v2\/team\/app\/blobs\/sha256:[0-9a-f]{64}$/);
    assert.notEqual(control, `HEAD ${path}`);
    assert.ok(asked.includes('GET /storage/nothing bytes=0-0'), asked.join(', '));
    // Not remembered: a yes through a redirect holds for the request it answered.
    const before = seen.length;
    assert.deepEqual(await authz.check(subject), { kind: 'allow', once: { size: 11 } });
    assert.ok(seen.length > before, 'asked again');

    const refused = await authz.check({ ...subject, authorization: undefined });
    assert.equal(refused.kind, 'deny');
    assert.equal(refused.answer.status, 401);
    assert.equal(
      refused.answer.headers['www-authenticate'],
      'Bearer realm="https://auth.test/token"',
    );
    authz.close();
  });

  it('takes a redirect to nothing as neither a yes for the content nor for the repository', async () => {
    const authz = authorizer();
    seen.length = 0;
    const subject = blobSubject('team/app', OTHER, TOKEN);
    // Some registries redirect every request, whatever they hold: the content is then to be
    // read from the registry, through the redirect, not from what the node holds.
    const first = await authz.check(subject);
    assert.equal(first.kind, 'upstream');
    assert.equal(first.answer.status, 307);
    assert.equal(seen[0]?.method, 'HEAD');
    assert.ok(
      seen.some((r) => r.url === '/storage/nothing'),
      `looked for where it leads: ${seen.map((r) => r.url).join(', ')}`,
    );
    // Nothing learned: asked again, and a layer the repository holds (a manifest of it says
    // so) is still not served on the strength of that redirect.
    const asked = seen.length;
    assert.equal((await authz.check(subject)).kind, 'upstream');
    assert.ok(seen.length > asked, 'asked again');
    authz.learnManifest(
      registry,
      'team/app',
      Buffer.from(JSON.stringify({ config: { digest: OTHER.toString() }, layers: [] })),
    );
    assert.equal((await authz.check(subject)).kind, 'upstream', 'no grant from a redirect');
    authz.close();
  });

  it('takes neither a login page nor a 200 that ignored the range for the content', async () => {
    const authz = authorizer();
    for (const repository of ['sso/app', 'norange/app']) {
      const decision = await authz.check(blobSubject(repository, LAYER, TOKEN));
      assert.equal(decision.kind, 'upstream', repository);
    }
    authz.close();
  });

  it('takes a first byte of another size than the blob the node holds for something else', async () => {
    const authz = authorizer();
    // The storage's first byte is of an 11-byte object.
    assert.equal(
      (await authz.check({ ...blobSubject('team/app', LAYER, TOKEN), size: 12 })).kind,
      'upstream',
    );
    assert.deepEqual(await authz.check({ ...blobSubject('team/app', LAYER, TOKEN), size: 11 }), {
      kind: 'allow',
      once: { size: 11 },
    });
    authz.close();
  });

  it('takes content found where a redirect led, for an anonymous client too, the size given when the node knows none', async () => {
    const authz = authorizer();
    // The mirror serves the content only if it is of that size.
    const subject = blobSubject('public/app', LAYER, undefined);
    assert.deepEqual(await authz.check(subject), { kind: 'allow', once: { size: 11 } });
    assert.deepEqual(await authz.check(subject), { kind: 'allow', once: { size: 11 } });
    authz.close();
  });

  it('takes a redirect that leads to something for any digest as showing nothing, and opens nothing', async () => {
    const authz = authorizer();
    // A login proxy sends an anonymous client to its sign-in page, plain text, served by a
    // file server that honours ranges: a first byte for whatever digest is named.
    for (const digest of [OTHER, LAYER]) {
      const lure = await authz.check(blobSubject('sso-plain/app', digest, undefined));
      assert.equal(lure.kind, 'upstream', digest.toString());
    }
    // A layer of that repository the node knows from a manifest an authorized client pulled
    // is not served to the anonymous client either.
    authz.learnManifest(
      registry,
      'sso-plain/app',
      Buffer.from(JSON.stringify({ config: { digest: LAYER.toString() }, layers: [] })),
    );
    seen.length = 0;
    assert.equal(
      (await authz.check(blobSubject('sso-plain/app', LAYER, undefined))).kind,
      'upstream',
    );
    assert.ok(seen.length > 0, 'the registry was asked');
    authz.close();
  });

  it("remembers a yes in place that names the digest: the registry's word", async () => {
    const authz = authorizer();
    for (const [kind, digest] of [
      ['blob', LAYER],
      ['manifest', MANIFEST],
    ] as const) {
      const subject = { ...blobSubject('registry/app', digest, undefined), kind };
      assert.deepEqual(await authz.check(subject), { kind: 'allow' }, kind);
      seen.length = 0;
      assert.deepEqual(await authz.check(subject), { kind: 'allow' }, kind);
      assert.equal(seen.length, 0, `${kind}: from the caches`);
    }
    authz.close();
  });

  it('takes a yes in place that does not name the digest for this request only', async () => {
    const authz = authorizer();
    // A blob: as good as its length, once the same look for a digest nothing holds found
    // nothing.
    const blob = blobSubject('nodigest/app', LAYER, undefined);
    assert.deepEqual(await authz.check(blob), { kind: 'allow', once: { size: 11 } });
    assert.equal((await authz.check({ ...blob, size: 12 })).kind, 'upstream', 'another size');
    // A manifest: read, and it matches its digest; from the registry itself, so remembered.
    seen.length = 0;
    const manifest = { ...blob, kind: 'manifest' as const, digest: MANIFEST };
    assert.deepEqual(await authz.check(manifest), { kind: 'allow' });
    assert.deepEqual(
      seen.map((r) => r.method),
      ['HEAD', 'GET'],
      'the manifest read once',
    );
    authz.close();
  });

  it('takes a sign-in page answering in place for no content', async () => {
    const authz = authorizer();
    for (const subject of [
      blobSubject('inplace/app', LAYER, undefined),
      { ...blobSubject('inplace/app', LAYER, undefined), size: 7 },
      { ...blobSubject('inplace/app', MANIFEST, undefined), kind: 'manifest' as const },
    ]) {
      const decision = await authz.check(subject);
      assert.equal(decision.kind, 'upstream', JSON.stringify({ ...subject, registry: '' }));
      assert.equal(decision.answer.status, 200, 'the page');
    }
    authz.close();
  });

  it('fails closed when the registry does not answer', async () => {
    const metrics = createAgentMetrics(createMetrics('agent'));
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    const authz = new Authorizer({
      probe: registryProbe(new RegistryRequests(client, metrics, TIMEOUTS)),
      ttlMs: 60_000,
      denyTtlMs: 5_000,
      staleMs: 0,
      maxEntries: 10,
      timeoutMs: 2_000,
      unreachable: 'deny',
    });
    const decision = await authz.check({
      registry: { host: `127.0.0.1:${port}`, url: new URL(`http://127.0.0.1:${port}`) },
      repository: 'team/app',
      kind: 'blob',
      digest: LAYER,
      authorization: TOKEN,
    });
    assert.equal(decision.kind, 'unavailable');
    assert.match(decision.reason, /ECONNREFUSED/);
  });
});
