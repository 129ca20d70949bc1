/**
 * Streaming and single flight (issue 2, item 6 and "concurrent requests share one upstream
 * fetch"): four clients stream the same 1 GiB blob through the agent at once; the registry
 * serves it once, every client gets the right bytes, and the agent's peak RSS, read from its
 * own /proc status, stays under 150 MiB.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { type AgentProcess, type GeneratedImage, type Registry } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { startMirror, type MirrorFixture } from '../src/mirror.js';
import { streamDigest } from '../src/http.js';

const GiB = 1024 * MiB;
const RSS_LIMIT_BYTES = 150 * MiB;

describe('streaming a 1 GiB blob', () => {
  let fixture: MirrorFixture;
  let registry: Registry;
  let agent: AgentProcess;
  let image: GeneratedImage;

  before(async () => {
    fixture = await startMirror({ layerSizes: [GiB], seed: 'streaming', repository: 'shoal/huge' });
    ({ registry, agent, image } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  it('shares one upstream fetch among concurrent clients and keeps RSS under 150 MiB', async (t) => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined && layer.size >= GiB);
    const url = `${agent.url}/v2/shoal/huge/blobs/${layer.digest}`;
    const started = Date.now();
    const outcomes = await Promise.all([1, 2, 3, 4].map(() => streamDigest(url)));
    const seconds = (Date.now() - started) / 1000;
    for (const outcome of outcomes) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.status, 200);
      assert.equal(outcome.bytes, layer.size);
      assert.equal(outcome.digest, layer.digest);
    }
    assert.equal(
      (await registry.blobGets(layer.digest)).length,
      1,
      'the registry served the blob once',
    );

    const fromCache = await streamDigest(url);
    assert.equal(fromCache.digest, layer.digest);
    assert.equal((await registry.blobGets(layer.digest)).length, 1);

    const peak = await agent.peakRssBytes();
    t.diagnostic(
      `agent peak RSS ${(peak / MiB).toFixed(1)} MiB after streaming ${(layer.size / MiB).toFixed(0)} MiB to 4 clients ` +
        `at once (${seconds.toFixed(1)} s) and once more from cache`,
    );
    assert.ok(peak < RSS_LIMIT_BYTES, `peak RSS ${peak} bytes is under ${RSS_LIMIT_BYTES}`);
  });
});
