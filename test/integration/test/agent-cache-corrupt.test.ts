/**
 * An agent's cache damaged on disk (a flipped byte, a truncated file), while the agent runs
 * and while it is down: the damaged blob is never served as valid. It is detected when it is
 * next opened, counted, removed, and fetched again from the registry; the client gets the
 * registry's bytes, whole or as a range. Real agent processes and a real registry.
 */
import assert from 'node:assert/strict';
import { open, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { makeTempDir, startAgent, type AgentProcess, type GeneratedImage } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { startMirror, type MirrorFixture } from '../src/mirror.js';

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Flips every bit of one byte of a file in place. */
async function flipByte(path: string, offset: number): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, offset);
    byte[0] = (byte[0] ?? 0) ^ 0xff;
    await handle.write(byte, 0, 1, offset);
  } finally {
    await handle.close();
  }
}

describe("an agent's cache damaged on disk", () => {
  let fixture: MirrorFixture;
  let image: GeneratedImage;

  before(async () => {
    fixture = await startMirror({
      layerSizes: [3 * MiB + 4321, 2 * MiB, MiB + 17],
      seed: 'agent-cache-corrupt',
      repository: 'shoal/corrupt',
    });
    ({ image } = fixture);
  });

  after(async () => {
    await fixture.stop();
  });

  const blobUrl = (agent: AgentProcess, digest: string): string =>
    `${agent.url}/v2/shoal/corrupt/blobs/${digest}?ns=${fixture.registry.host}`;
  const cachePath = (agent: AgentProcess, digest: string): string =>
    join(agent.cacheDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  const corrupted = (agent: AgentProcess): Promise<number> =>
    agent.metric('shoal_agent_verification_failures_total', { kind: 'cached-blob' });

  /** Fetches `digest` whole through `agent` into its cache and checks it came whole. */
  async function cache(agent: AgentProcess, digest: string): Promise<void> {
    const outcome = await streamDigest(blobUrl(agent, digest));
    assert.equal(outcome.error, undefined);
    assert.equal(outcome.digest, digest);
    // The commit to the cache ends shortly after the response.
    const deadline = Date.now() + 10_000;
    while (!(await exists(cachePath(agent, digest)))) {
      assert.ok(Date.now() < deadline, `${digest} entered the cache`);
      await delay(20);
    }
  }

  it('refetches a cached blob with a flipped byte instead of serving it, and counts it', async () => {
    const { agent, registry } = fixture;
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    await cache(agent, layer.digest);
    const gets = (await registry.blobGets(layer.digest)).length;
    const failures = await corrupted(agent);

    await flipByte(cachePath(agent, layer.digest), 2 * MiB + 5);
    const outcome = await streamDigest(blobUrl(agent, layer.digest));
    assert.equal(outcome.error, undefined, 'the response completes');
    assert.equal(outcome.bytes, layer.size);
    assert.equal(outcome.digest, layer.digest, "the registry's bytes, not the damaged ones");
    assert.equal((await registry.blobGets(layer.digest)).length, gets + 1, 'fetched again');
    assert.equal(await corrupted(agent), failures + 1);

    // The refetched copy is cached and served from the cache again.
    const again = await streamDigest(blobUrl(agent, layer.digest));
    assert.equal(again.digest, layer.digest);
    assert.equal((await registry.blobGets(layer.digest)).length, gets + 1, 'from the cache');
    assert.equal(await corrupted(agent), failures + 1, 'the good copy is not counted');
  });

  it('refetches a truncated cached blob, for a range as well', async () => {
    const { agent, registry } = fixture;
    const layer = image.layers[1];
    assert.ok(layer !== undefined);
    await cache(agent, layer.digest);
    const gets = (await registry.blobGets(layer.digest)).length;
    const failures = await corrupted(agent);

    await truncate(cachePath(agent, layer.digest), MiB);
    const start = MiB + 100;
    const end = layer.size - 1;
    const response = await fetch(blobUrl(agent, layer.digest), {
      headers: { range: `bytes=${start}-${end}` },
      signal: AbortSignal.timeout(60_000),
    });
    assert.equal(response.status, 206);
    const part = Buffer.from(await response.arrayBuffer());
    const truth = Buffer.from(
      await (
        await fetch(`${registry.url}/v2/shoal/corrupt/blobs/${layer.digest}`, {
          headers: { range: `bytes=${start}-${end}` },
        })
      ).arrayBuffer(),
    );
    assert.equal(part.length, end - start + 1);
    assert.ok(part.equals(truth), "the range holds the registry's bytes");
    assert.ok((await registry.blobGets(layer.digest)).length > gets, 'fetched again');
    assert.equal(await corrupted(agent), failures + 1);
  });

  it('checks what it finds in the cache at start-up before serving it', async () => {
    const { registry } = fixture;
    const layer = image.layers[2];
    assert.ok(layer !== undefined);
    const dir = await makeTempDir('cache-corrupt');
    const cacheDir = join(dir.path, 'cache');
    const first = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    try {
      await cache(first, layer.digest);
    } finally {
      await first.stop();
    }
    // Damaged while the agent was down, with its modification time put back.
    const path = join(cacheDir, 'blobs', 'sha256', layer.digest.slice('sha256:'.length));
    const { atime, mtime } = await stat(path);
    await flipByte(path, 7);
    const handle = await open(path, 'r+');
    await handle.utimes(atime, mtime);
    await handle.close();

    const gets = (await registry.blobGets(layer.digest)).length;
    const second = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    try {
      assert.equal(await second.metric('shoal_agent_cache_size_bytes'), layer.size);
      const outcome = await streamDigest(blobUrl(second, layer.digest));
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, layer.digest);
      assert.equal((await registry.blobGets(layer.digest)).length, gets + 1, 'fetched again');
      assert.equal(await corrupted(second), 1);
    } finally {
      await second.stop();
      await dir.remove();
    }
  });
});
