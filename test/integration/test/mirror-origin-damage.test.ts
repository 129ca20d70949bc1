/**
 * The origin damaging a blob on the way (a proxy in front of the real registry): a body cut
 * mid-stream, stopped with its connection left open, or a byte flipped under the right
 * digest. No unverified byte completes a
 * response, nothing damaged is cached, the failure is counted and logged, and the blob is
 * served whole once the origin sends it whole again; containerd pulls through the agent.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type {
  AgentProcess,
  FaultProxy,
  GeneratedImage,
  ProxiedRequest,
  Registry,
  RegistryFault,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { startProxiedMirror, type ProxiedMirrorFixture } from '../src/mirror.js';

const repository = 'shoal/damage';

describe('the origin damaging a blob on the way', () => {
  let fixture: ProxiedMirrorFixture;
  let registry: Registry;
  let proxy: FaultProxy;
  let agent: AgentProcess;
  let image: GeneratedImage;

  before(async () => {
    fixture = await startProxiedMirror({
      layerSizes: [6 * MiB + 99, 4 * MiB + 1, MiB + 5, MiB + MiB / 2 + 7],
      seed: 'mirror-origin-damage',
      repository,
    });
    ({ registry, proxy, agent, image } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  const blobUrl = (digest: string): string =>
    `${agent.url}/v2/${repository}/blobs/${digest}?ns=${registry.host}`;
  const failures = (): Promise<number> =>
    agent.metric('shoal_agent_verification_failures_total', { kind: 'blob' });

  /**
   * Streams the image's layer `index` through the agent while the origin meets `fault`, and
   * asserts the response completes with the right digest. Returns the origin's GETs meanwhile,
   * the agent's resumes, the bytes the origin sent, and how long the response took.
   */
  const fetchWhileDamaged = async (
    index: number,
    fault: RegistryFault,
  ): Promise<{ gets: ProxiedRequest[]; resumes: number; bytes: number; tookMs: number }> => {
    const layer = image.layers[index];
    assert.ok(layer !== undefined);
    const mark = proxy.received().length;
    const sent = proxy.counts().bytes;
    const resumes = await agent.metric('shoal_agent_origin_resumes_total');
    proxy.set(fault);
    const started = Date.now();
    const outcome = await streamDigest(blobUrl(layer.digest));
    const tookMs = Date.now() - started;
    proxy.set(undefined);
    assert.equal(outcome.error, undefined, 'the response completes');
    assert.equal(outcome.digest, layer.digest);
    return {
      gets: proxy
        .received()
        .slice(mark)
        .filter((r) => r.method === 'GET'),
      resumes: (await agent.metric('shoal_agent_origin_resumes_total')) - resumes,
      bytes: proxy.counts().bytes - sent,
      tookMs,
    };
  };

  it('cuts the response of a blob whose bytes the origin changed, and caches nothing', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const before = await failures();
    proxy.set({ kind: 'damage', how: 'flip', atByte: 3 * MiB });
    const outcome = await streamDigest(blobUrl(layer.digest));
    proxy.set(undefined);
    assert.equal(outcome.status, 200);
    assert.ok(outcome.error !== undefined, 'the response is cut, never completed');
    assert.ok(outcome.bytes < layer.size, `${outcome.bytes} of ${layer.size} bytes`);
    assert.equal(await failures(), before + 1);

    const healed = await streamDigest(blobUrl(layer.digest));
    assert.equal(healed.error, undefined);
    assert.equal(healed.digest, layer.digest, 'fetched again, whole');
  });

  it('resumes a blob the origin cuts mid-stream from where it stopped, with range requests', async (t) => {
    const layer = image.layers[1];
    assert.ok(layer !== undefined);
    // Every answer of the origin breaks off 1 MiB into its body while the fault is set.
    const damaged = await fetchWhileDamaged(1, { kind: 'damage', how: 'cut', atByte: MiB + 3 });
    const gets = damaged.gets.length;
    assert.ok(gets >= 4, `a GET per MiB at least: ${gets}`);
    assert.equal(damaged.resumes, gets - 1, 'every GET after the first resumed the transfer');
    // Each request starts where the last stopped: the blob crossed the link about once.
    const { bytes } = damaged;
    t.diagnostic(
      `origin bytes sent / blob bytes: ${(bytes / layer.size).toFixed(2)} in ${gets} GETs`,
    );
    assert.ok(bytes < 1.5 * layer.size, `${bytes} bytes sent for a ${layer.size}-byte blob`);
  });

  it('asks again, from where it stopped, a blob whose transfer stops with its connection open', async (t) => {
    const layer = image.layers[3];
    assert.ok(layer !== undefined);
    // The origin's answer sends 1 MiB and then nothing, its connection left open (a stuck load
    // balancer or CDN node); the rest, asked for with a range, is shorter than that and comes.
    // The agent's idle timeout is at its default (10 s; it was 60 s).
    const { gets, resumes, bytes, tookMs } = await fetchWhileDamaged(3, {
      kind: 'damage',
      how: 'stall',
      atByte: MiB + 3,
    });
    assert.equal(gets.length, 2, 'the GET and one resume');
    assert.equal(gets[1]?.range, `bytes=${MiB + 3}-`, 'the resume starts where it stopped');
    assert.equal(resumes, 1);
    t.diagnostic(`stalled transfer served in ${tookMs} ms; origin sent ${bytes} bytes`);
    assert.ok(bytes < 1.1 * layer.size, `${bytes} bytes sent for a ${layer.size}-byte blob`);
    // The idle timeout, then the rest: well short of the old 60 s wait.
    assert.ok(tookMs >= 9_000, `answered after ${tookMs} ms: the stall was waited out`);
    assert.ok(tookMs < 30_000, `answered after ${tookMs} ms`);
  });

  it('cuts the response when the origin keeps breaking off, then serves it once healed', async () => {
    const layer = image.layers[2];
    assert.ok(layer !== undefined);
    const mark = proxy.received().length;
    proxy.set({ kind: 'damage', how: 'cut', atByte: 1000 });
    // No byte could be given: the connection is dropped before a head (containerd tries its
    // next host), or the body cut; never a complete response.
    const outcome = await streamDigest(blobUrl(layer.digest)).then(
      (streamed) => streamed.error,
      (error: unknown) => error,
    );
    proxy.set(undefined);
    assert.ok(outcome instanceof Error, 'the response is cut, never completed');
    const gets = proxy
      .received()
      .slice(mark)
      .filter((r) => r.method === 'GET').length;
    assert.equal(gets, 6, 'the GET and five resumes, no more');

    const healed = await streamDigest(blobUrl(layer.digest));
    assert.equal(healed.error, undefined);
    assert.equal(healed.digest, layer.digest);
  });
});
