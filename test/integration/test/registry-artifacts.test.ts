/**
 * OCI artifacts through the agent: a Helm chart pushed as an OCI artifact (empty config
 * `application/vnd.oci.empty.v1+json`, an `artifactType`) to the real registry is served
 * by digest and by tag with its bytes, media type and digest; and the referrers API
 * (`/v2/<name>/referrers/<digest>`) is passed through: a registry without it (Debian's
 * distribution 2.8) answers 404, as clients expect before they fall back to the tag scheme,
 * and a small scripted registry with it (as Harbor, ghcr.io or zot answer) gets the client's
 * credentials and `artifactType` filter and hands its list back unchanged.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import {
  startAgent,
  startRegistry,
  Teardown,
  type AgentProcess,
  type Registry,
} from '@shoal/testkit';

const EMPTY = 'application/vnd.oci.empty.v1+json';
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';
const HELM_CHART = 'application/vnd.cncf.helm.chart.content.v1.tar+gzip';
const HELM_CONFIG = 'application/vnd.cncf.helm.config.v1+json';
const SBOM = 'application/spdx+json';

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
      if (/^\/v2\/.+\/referrers\/sha256:[0-9a-f]{64}(\?|$)/.test(req.url ?? '')) {
        res.writeHead(200, {
          'content-type': INDEX,
          'content-length': referrersList.length,
          ...((req.url ?? '').includes('artifactType=')
            ? { 'oci-filters-applied': 'artifactType' }
            : {}),
        });
        res.end(req.method === 'HEAD' ? undefined : referrersList);
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

    agent = await startAgent({
      registries: `${registry.host}=${registry.url},${referrersHost}=http://${referrersHost}`,
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

  it('passes the referrers API through: a 404 from a registry without it', async () => {
    const answer = await get(`/v2/charts/app/referrers/${sha256(chartManifest)}`, registry.host);
    assert.equal(answer.status, 404);
  });

  it('passes the referrers API through: the list, with the credentials and the filter', async () => {
    const subject = sha256(chartManifest);
    const answer = await get(
      `/v2/team/app/referrers/${subject}?artifactType=${encodeURIComponent(SBOM)}`,
      referrersHost,
      { accept: INDEX, authorization: 'Bearer referrers-token' },
    );
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get('content-type'), INDEX);
    assert.equal(answer.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(Buffer.from(await answer.arrayBuffer()), referrersList);
    const asked = referrersAsked.find((r) => r.url.includes('/referrers/'));
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
