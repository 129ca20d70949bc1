/**
 * Acceptance for bad input (issue 2, item 5): each gets the right OCI error and status,
 * nothing corrupt is cached, and the agent keeps serving.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { type GeneratedImage, type Registry, type AgentProcess } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { startMirror, type MirrorFixture } from '../src/mirror.js';
import { ociCode, rawGet, streamDigest } from '../src/http.js';

describe('the agent refuses bad input and keeps serving', () => {
  let fixture: MirrorFixture;
  let registry: Registry;
  let agent: AgentProcess;
  let image: GeneratedImage;
  let ns: string;

  before(async () => {
    fixture = await startMirror({
      layerSizes: [3 * MiB, 2 * MiB, 1 * MiB],
      seed: 'bad-input',
      repository: 'shoal/app',
      // No default registry: a request without ns= must be refused.
      asDefault: false,
    });
    ({ registry, agent, image } = fixture);
    ns = `ns=${registry.host}`;
  });

  after(async () => {
    await fixture.stop();
  });

  const upstreamRequests = (): Promise<number> =>
    agent.metric('shoal_agent_upstream_requests_total');

  it('answers a malformed digest with 400 DIGEST_INVALID and asks no upstream', async () => {
    const before = await upstreamRequests();
    for (const bad of [
      'sha256:xyz',
      'sha256:' + 'A'.repeat(64),
      'md5:' + 'a'.repeat(32),
      'sha256',
    ]) {
      const response = await rawGet(agent.url, `/v2/shoal/app/blobs/${bad}?${ns}`);
      assert.equal(response.status, 400, bad);
      assert.equal(ociCode(response.body), 'DIGEST_INVALID', bad);
    }
    const manifest = await rawGet(agent.url, `/v2/shoal/app/manifests/sha256:abc?${ns}`);
    assert.equal(manifest.status, 400);
    assert.equal(ociCode(manifest.body), 'DIGEST_INVALID');
    assert.equal(await upstreamRequests(), before);
    assert.ok(
      (await agent.metric('shoal_agent_mirror_rejected_total', { code: 'DIGEST_INVALID' })) >= 5,
    );
  });

  it('answers path traversal in the name with 400 NAME_INVALID and asks no upstream', async () => {
    const before = await upstreamRequests();
    const digest = image.layers[0]?.digest ?? '';
    for (const path of [
      `/v2/shoal/../../etc/blobs/${digest}`,
      `/v2/../blobs/${digest}`,
      `/v2/shoal/%2e%2e/app/blobs/${digest}`,
      `/v2/shoal%2f..%2fapp/manifests/latest`,
      `/v2/Shoal/App/manifests/latest`,
    ]) {
      const response = await rawGet(agent.url, `${path}?${ns}`);
      assert.equal(response.status, 400, path);
      assert.equal(ociCode(response.body), 'NAME_INVALID', path);
    }
    const badTag = await rawGet(agent.url, `/v2/shoal/app/manifests/.hidden?${ns}`);
    assert.equal(badTag.status, 400);
    assert.equal(ociCode(badTag.body), 'TAG_INVALID');
    assert.equal(await upstreamRequests(), before);
  });

  it('refuses an unknown ns= with 403 DENIED and never contacts it', async () => {
    const before = await upstreamRequests();
    for (const query of [
      'ns=evil.example.com',
      'ns=127.0.0.1:1',
      `ns=${registry.host}&ns=evil.example.com`,
      '',
    ]) {
      const response = await rawGet(agent.url, `/v2/shoal/app/manifests/latest?${query}`);
      assert.ok(response.status === 403 || response.status === 400, `${query}: ${response.status}`);
      assert.equal(ociCode(response.body), 'DENIED', query);
    }
    assert.equal(await upstreamRequests(), before);
  });

  it('refuses writes: the mirror is read-only', async () => {
    const response = await fetch(`${agent.url}/v2/shoal/app/blobs/uploads/?${ns}`, {
      method: 'POST',
    });
    assert.equal(response.status, 405);
    assert.equal(ociCode(Buffer.from(await response.arrayBuffer())), 'UNSUPPORTED');
  });

  it('answers an invalid or unsatisfiable Range with 416 RANGE_INVALID, and serves a valid one', async () => {
    const layer = image.layers[1];
    assert.ok(layer !== undefined);
    const url = `${agent.url}/v2/shoal/app/blobs/${layer.digest}?${ns}`;
    const whole = await streamDigest(url);
    assert.equal(whole.digest, layer.digest);
    for (const range of [
      `bytes=${layer.size}-`,
      'bytes=abc',
      'bytes=10-5',
      'bytes=-0',
      'items=0-1',
    ]) {
      const response = await rawGet(agent.url, `/v2/shoal/app/blobs/${layer.digest}?${ns}`, {
        range,
      });
      assert.equal(response.status, 416, range);
      assert.equal(ociCode(response.body), 'RANGE_INVALID', range);
      assert.equal(response.headers['content-range'], `bytes */${layer.size}`);
    }
    const part = await rawGet(agent.url, `/v2/shoal/app/blobs/${layer.digest}?${ns}`, {
      range: 'bytes=100-199',
    });
    assert.equal(part.status, 206);
    assert.equal(part.body.length, 100);
    assert.equal(part.headers['content-range'], `bytes 100-199/${layer.size}`);
    const tail = await rawGet(agent.url, `/v2/shoal/app/blobs/${layer.digest}?${ns}`, {
      range: 'bytes=-10',
    });
    assert.equal(tail.status, 206);
    assert.equal(tail.body.length, 10);
  });

  it('aborts every response for a blob the registry serves corrupted, and caches nothing', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    await registry.corruptBlob(layer.digest);
    const url = `${agent.url}/v2/shoal/app/blobs/${layer.digest}?${ns}`;
    const failuresBefore = await agent.metric('shoal_agent_verification_failures_total', {
      kind: 'blob',
    });
    // Three clients at once share one download; all of them must see it cut, not completed.
    const outcomes = await Promise.all([streamDigest(url), streamDigest(url), streamDigest(url)]);
    for (const outcome of outcomes) {
      assert.equal(outcome.status, 200);
      assert.ok(outcome.error !== undefined, 'the response was aborted');
      assert.ok(
        outcome.bytes < layer.size,
        `only ${outcome.bytes} of ${layer.size} bytes were sent`,
      );
    }
    assert.equal(
      await agent.metric('shoal_agent_verification_failures_total', { kind: 'blob' }),
      failuresBefore + 1,
    );
    assert.equal(existsSync(join(agent.cacheDir, 'blobs', 'sha256', layer.digest.slice(7))), false);
    // A retry fetches again (nothing bad was cached) and is cut again.
    const retry = await streamDigest(url);
    assert.ok(retry.error !== undefined);
    assert.equal((await registry.blobGets(layer.digest)).length, 2);
  });

  it('still serves good content after all of that', async () => {
    const layer = image.layers[2];
    assert.ok(layer !== undefined);
    const outcome = await streamDigest(`${agent.url}/v2/shoal/app/blobs/${layer.digest}?${ns}`);
    assert.equal(outcome.status, 200);
    assert.equal(outcome.error, undefined);
    assert.equal(outcome.digest, layer.digest);
    const manifest = await fetch(`${agent.url}/v2/shoal/app/manifests/latest?${ns}`, {
      headers: { accept: image.manifest.mediaType },
    });
    assert.equal(manifest.status, 200);
    assert.equal(manifest.headers.get('docker-content-digest'), image.manifest.digest);
    assert.equal((await fetch(`${agent.url}/healthz`)).status, 200);
  });
});
