/**
 * Clients that go away mid-blob (containerd cancelled, a pod deleted) and come back: the
 * others reading the same blob are unaffected, the download is not restarted (one origin GET
 * for the blob), and after many aborts the agent holds no more descriptors than before (files
 * and sockets are released). Real agent and registry; a proxy slows the origin so that the
 * download is still running while a client leaves.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';

import {
  waitFor,
  type AgentProcess,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { startProxiedMirror, type ProxiedMirrorFixture } from '../src/mirror.js';

const repository = 'shoal/aborts';

/** Reads `url` until `bytes` have come, then aborts the request; the bytes read. */
async function readThenAbort(url: string, bytes: number): Promise<number> {
  const abort = new AbortController();
  const response = await fetch(url, { signal: abort.signal });
  let read = 0;
  const reader = (response.body as ReadableStream<Uint8Array> | null)?.getReader();
  assert.ok(reader !== undefined);
  while (read < bytes) {
    const chunk = await reader.read();
    if (chunk.done) {
      break;
    }
    read += chunk.value.length;
  }
  abort.abort();
  await reader.cancel().catch(() => undefined);
  return read;
}

async function openDescriptors(agent: AgentProcess): Promise<number> {
  const pid = agent.process.child.pid;
  assert.ok(pid !== undefined);
  return (await readdir(`/proc/${String(pid)}/fd`)).length;
}

describe('clients that abort mid-blob', () => {
  let fixture: ProxiedMirrorFixture;
  let registry: Registry;
  let proxy: FaultProxy;
  let agent: AgentProcess;
  let image: GeneratedImage;

  before(async () => {
    fixture = await startProxiedMirror({
      layerSizes: [8 * MiB],
      seed: 'client-aborts',
      repository,
    });
    ({ registry, proxy, agent, image } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  const blobUrl = (digest: string): string =>
    `${agent.url}/v2/${repository}/blobs/${digest}?ns=${registry.host}`;

  it('leaves the other readers of a blob whole, and the download running, when one aborts', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const mark = proxy.received().length;
    // About 2 s for the blob: the download runs while the clients come and go.
    proxy.set({ kind: 'slow', delayMs: 0, rateBytes: 4 * MiB });
    const readers = [streamDigest(blobUrl(layer.digest)), streamDigest(blobUrl(layer.digest))];
    const aborted = await readThenAbort(blobUrl(layer.digest), 512 * 1024);
    assert.ok(aborted < layer.size, 'the aborting client left mid-blob');
    // It comes back and reads the whole blob, from the download still running.
    readers.push(streamDigest(blobUrl(layer.digest)));
    const outcomes = await Promise.all(readers);
    proxy.set(undefined);
    for (const outcome of outcomes) {
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, layer.digest);
    }
    const gets = proxy
      .received()
      .slice(mark)
      .filter((r) => r.method === 'GET' && r.url.includes(layer.digest));
    assert.equal(gets.length, 1, 'one origin GET: the download was not restarted');
  });

  it('holds no more descriptors after many aborted reads than before', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    // Warm: a read of the cached blob, so lazily opened things (pools, the cache) exist.
    assert.equal((await streamDigest(blobUrl(layer.digest))).digest, layer.digest);
    await delay(200);
    const baseline = await openDescriptors(agent);
    for (let i = 0; i < 40; i++) {
      await readThenAbort(blobUrl(layer.digest), 64 * 1024 * (1 + (i % 8)));
    }
    // Closed sockets and released files may take a moment to go.
    await waitFor(
      `the agent back to ${baseline} descriptors`,
      async () => (await openDescriptors(agent)) <= baseline + 2,
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    const whole = await streamDigest(blobUrl(layer.digest));
    assert.equal(whole.digest, layer.digest, 'and it still serves the blob whole');
  });
});
