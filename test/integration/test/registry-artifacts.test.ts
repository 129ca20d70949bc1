/**
 * OCI artifacts through the agent: a Helm chart pushed as an OCI artifact (empty config
 * `application/vnd.oci.empty.v1+json`, an `artifactType`) to the real registry is served
 * by digest and by tag with its bytes, media type and digest; and the referrers API
 * (`/v2/<name>/referrers/<digest>`) is passed through: a registry without it (Debian's
 * distribution 2.8) is asked and its own 404 goes back, as clients expect before they fall back
 * to the tag scheme; with auth, its challenge and refusals go back and nothing is kept; a small
 * scripted registry with it (as Harbor, ghcr.io or zot answer) gets the client's credentials
 * and `artifactType` filter and hands its list back unchanged, its next page's `Link` pointing
 * at the mirror.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import {
  startAgent,
  startFaultProxy,
  startRegistry,
  Teardown,
  type AgentProcess,
  type FaultProxy,
  type Registry,
} from '@shoal/testkit';

import { ociCode } from '../src/http.js';

const EMPTY = 'application/vnd.oci.empty.v1+json';
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';
const HELM_CHART = 'application/vnd.cncf.helm.chart.content.v1.tar+gzip';
const HELM_CONFIG = 'application/vnd.cncf.helm.config.v1+json';
const SBOM = 'application/spdx+json';
const PRIVATE_CHALLENGE = 'Bearer realm="https://auth.example/token",service="referrers"';

const sha256 = (bytes: Buffer): string =>
  `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

async function putBlob(registry: Registry, repository: string, bytes: Buffer): Promise<string> {
  const digest = sha256(bytes);
  const started = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, {
    method: 'POST',
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(started.status, 202);
  const url = new URL(started.headers.get('location') ?? '', registry.url);
  url.searchParams.set('digest', digest);
  const put = await fetch(url, { method: 'PUT', body: bytes, signal: AbortSignal.timeout(10_000) });
  assert.equal(put.status, 201, await put.text());
  return digest;
}

describe('OCI artifacts and the referrers API through the agent', () => {
  const teardown = new Teardown();
  let registry: Registry;
  /** In front of `registry`: what the agent asked it. */
  let proxy: FaultProxy;
  let agent: AgentProcess;
  /** What the scripted registry with the referrers API was asked. */
  const referrersAsked: { url: string; headers: IncomingHttpHeaders }[] = [];
  let referrersHost = '';
  const referrersList = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: INDEX,
      manifests: [
        { mediaType: MANIFEST, digest: sha256(Buffer.from('sbom')), size: 4, artifactType: SBOM },
      ],
    }),
  );
  /** The second page of the list, named in the first page's `Link` when no filter is asked. */
  const secondPage = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: INDEX,
      manifests: [
        { mediaType: MANIFEST, digest: sha256(Buffer.from('sig')), size: 3, artifactType: 'sig' },
      ],
    }),
  );
  const chart = randomBytes(20_000);
  const emptyConfig = Buffer.from('{}');
  let chartManifest: Buffer;

  before(async () => {
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    await putBlob(registry, 'charts/app', chart);
    await putBlob(registry, 'charts/app', emptyConfig);
    chartManifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MANIFEST,
        artifactType: HELM_CONFIG,
        config: { mediaType: EMPTY, digest: sha256(emptyConfig), size: 2, data: 'e30=' },
        layers: [{ mediaType: HELM_CHART, digest: sha256(chart), size: chart.length }],
      }),
    );
    const pushed = await fetch(`${registry.url}/v2/charts/app/manifests/1.2.3`, {
      method: 'PUT',
      headers: { 'content-type': MANIFEST },
      body: chartManifest,
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(pushed.status, 201, await pushed.text());

    const scripted = createServer((req, res) => {
      referrersAsked.push({ url: req.url ?? '', headers: req.headers });
      const url = req.url ?? '';
      if (url.startsWith('/v2/private/')) {
        // A repository that needs a credential: challenged without one, refused a wrong one.
        const token = req.headers.authorization;
        if (token !== 'Bearer private-token') {
          const status = token === undefined ? 401 : 403;
          res.writeHead(status, {
            'content-type': 'application/json',
            ...(status === 401 ? { 'www-authenticate': PRIVATE_CHALLENGE } : {}),
          });
          res.end(
            JSON.stringify({
              errors: [{ code: status === 401 ? 'UNAUTHORIZED' : 'DENIED', message: 'no' }],
            }),
          );
          return;
        }
      }
      if (/^\/v2\/.+\/referrers\/sha256:[0-9a-f]{64}(\?|$)/.test(url)) {
        const filtered = url.includes('artifactType=');
        // Unfiltered, the list comes in two pages, as distribution 3 pages it (a relative link).
        const second = url.includes('last=first-page');
        const body = second ? secondPage : referrersList;
        res.writeHead(200, {
          'content-type': INDEX,
          'content-length': body.length,
          ...(filtered ? { 'oci-filters-applied': 'artifactType' } : {}),
          ...(filtered || second
            ? {}
            : { link: `<${url.split('?')[0] ?? ''}?n=1&last=first-page>; rel="next"` }),
        });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository"}]}');
    });
    await new Promise<void>((resolve) => scripted.listen(0, '127.0.0.1', resolve));
    teardown.add(
      'scripted registry',
      () => new Promise((resolve) => scripted.close(() => resolve())),
    );
    referrersHost = `127.0.0.1:${(scripted.address() as AddressInfo).port}`;

    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());

    agent = await startAgent({
      registries: [
        `${registry.host}=${proxy.url}`,
        `${referrersHost}=http://${referrersHost}`,
      ].join(','),
      defaultRegistry: registry.host,
    });
    teardown.add('agent', () => agent.stop());
  });
  after(() => teardown.run());

  const get = (path: string, ns: string, headers: Record<string, string> = {}): Promise<Response> =>
    fetch(`${agent.url}${path}${path.includes('?') ? '&' : '?'}ns=${ns}`, {
      headers,
      signal: AbortSignal.timeout(30_000),
    });

  it('serves a Helm chart artifact by tag and by digest, its empty config and its layer', async () => {
    const digest = sha256(chartManifest);
    for (const ref of ['1.2.3', digest]) {
      const answer = await get(`/v2/charts/app/manifests/${ref}`, registry.host, {
        accept: MANIFEST,
      });
      assert.equal(answer.status, 200, ref);
      assert.equal(answer.headers.get('content-type'), MANIFEST);
      assert.equal(answer.headers.get('docker-content-digest'), digest);
      assert.deepEqual(Buffer.from(await answer.arrayBuffer()), chartManifest);
    }
    for (const blob of [chart, emptyConfig]) {
      const answer = await get(`/v2/charts/app/blobs/${sha256(blob)}`, registry.host);
      assert.equal(answer.status, 200);
      assert.deepEqual(Buffer.from(await answer.arrayBuffer()), blob);
    }
  });

  it('passes the referrers API through: a registry without it is asked, and its 404 goes back', async () => {
    const path = `/v2/charts/app/referrers/${sha256(chartManifest)}`;
    const direct = await fetch(`${registry.url}${path}`, { signal: AbortSignal.timeout(10_000) });
    const registryBody = Buffer.from(await direct.arrayBuffer());
    assert.equal(direct.status, 404);
    const before = proxy.received().length;
    const answer = await get(path, registry.host);
    assert.equal(answer.status, 404);
    const body = Buffer.from(await answer.arrayBuffer());
    assert.deepEqual(
      proxy
        .received()
        .slice(before)
        .map((r) => `${r.method} ${r.url}`),
      [`GET ${path}`],
      'the registry was asked, with no ns=',
    );
    assert.deepEqual(body, registryBody, "the registry's own answer");
    assert.equal(answer.headers.get('content-type'), direct.headers.get('content-type'));
  });

  it("passes a registry's challenge and refusals through, and keeps none of them", async () => {
    // Debian's distribution 2.8 answers its unknown referrers route 404 before it checks
    // credentials, so the scripted registry with the API stands for one that checks them.
    const path = `/v2/private/app/referrers/${sha256(chartManifest)}`;
    const ask = async (
      authorization?: string,
    ): Promise<{ status: number; challenge: string | null; body: Buffer }> => {
      const answer = await get(
        path,
        referrersHost,
        authorization === undefined ? {} : { authorization },
      );
      return {
        status: answer.status,
        challenge: answer.headers.get('www-authenticate'),
        body: Buffer.from(await answer.arrayBuffer()),
      };
    };
    const before = referrersAsked.length;
    const anonymous = await ask();
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.challenge, PRIVATE_CHALLENGE);
    assert.equal(ociCode(anonymous.body), 'UNAUTHORIZED');
    const wrong = await ask('Bearer wrong-token');
    assert.equal(wrong.status, 403);
    assert.equal(ociCode(wrong.body), 'DENIED');
    const allowed = await ask('Bearer private-token');
    assert.equal(allowed.status, 200);
    assert.deepEqual(allowed.body, referrersList);
    // Nothing of the list is kept for a client without the credential, nor a refusal for one
    // with it: every answer is the registry's.
    const again = await ask();
    assert.equal(again.status, 401);
    assert.equal(again.challenge, PRIVATE_CHALLENGE);
    assert.equal((await ask('Bearer private-token')).status, 200);
    assert.deepEqual(
      referrersAsked.slice(before).map((r) => r.headers.authorization ?? 'none'),
      ['none', 'Bearer wrong-token', 'Bearer private-token', 'none', 'Bearer private-token'],
      'the registry was asked every time',
    );
  });

  it('passes the next page of a referrers list on, its Link pointing at the mirror', async () => {
    const subject = sha256(chartManifest);
    const path = `/v2/team/app/referrers/${subject}`;
    const first = await get(path, referrersHost, { authorization: 'Bearer referrers-token' });
    assert.equal(first.status, 200);
    assert.deepEqual(Buffer.from(await first.arrayBuffer()), referrersList);
    const link = first.headers.get('link');
    assert.equal(
      link,
      `<${path}?n=1&last=first-page&ns=${encodeURIComponent(referrersHost)}>; rel="next"`,
    );
    const next = /^<([^>]+)>/.exec(link)?.[1];
    assert.ok(next !== undefined);
    const before = referrersAsked.length;
    const second = await fetch(`${agent.url}${next}`, {
      headers: { authorization: 'Bearer referrers-token' },
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(second.status, 200);
    assert.equal(second.headers.get('link'), null, 'the last page');
    assert.deepEqual(Buffer.from(await second.arrayBuffer()), secondPage);
    const asked = referrersAsked.slice(before);
    assert.deepEqual(
      asked.map((r) => r.url),
      [`${path}?n=1&last=first-page`],
    );
    assert.equal(asked[0]?.headers.authorization, 'Bearer referrers-token');
  });

  it('passes the referrers API through: the list, with the credentials and the filter', async () => {
    const subject = sha256(chartManifest);
    const askedBefore = referrersAsked.length;
    const answer = await get(
      `/v2/team/app/referrers/${subject}?artifactType=${encodeURIComponent(SBOM)}`,
      referrersHost,
      { accept: INDEX, authorization: 'Bearer referrers-token' },
    );
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get('content-type'), INDEX);
    assert.equal(answer.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(Buffer.from(await answer.arrayBuffer()), referrersList);
    const asked = referrersAsked.slice(askedBefore).find((r) => r.url.includes('/referrers/'));
    assert.ok(asked !== undefined);
    assert.equal(
      asked.url,
      `/v2/team/app/referrers/${subject}?artifactType=${encodeURIComponent(SBOM)}`,
    );
    assert.equal(asked.headers.authorization, 'Bearer referrers-token');
    // A bad digest is the client's error, answered without asking the registry.
    const before = referrersAsked.length;
    const bad = await get('/v2/team/app/referrers/sha256:nothex', referrersHost);
    assert.equal(bad.status, 400);
    assert.equal(referrersAsked.length, before);
  });
});
