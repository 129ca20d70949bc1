/**
 * The agent as a process: bad configuration is reported whole, SIGTERM shuts it down cleanly
 * (during a NATS outage too, when blobs come from the origin without waiting out the stall
 * timeout), the cache survives a restart, and a crash mid-download leaves nothing partial
 * behind.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  AGENT_MAIN,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';

describe('agent process lifecycle', () => {
  let registry: Registry;
  let image: GeneratedImage;
  let workDir: { path: string; remove(): Promise<void> };
  const cleanup: (() => Promise<void>)[] = [];

  before(async () => {
    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    workDir = await makeTempDir('lifecycle');
    cleanup.push(() => workDir.remove());
    image = await generateImage(join(workDir.path, 'image'), {
      layerSizes: [64 * MiB, 1 * MiB],
      seed: 'lifecycle',
    });
    await pushImage(image, registry.host, 'shoal/life');
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step();
    }
  });

  it('reports every configuration problem at once and exits 1', async () => {
    const child = spawn(process.execPath, [AGENT_MAIN], {
      env: {
        PATH: process.env.PATH ?? '',
        SHOAL_AGENT_REGISTRIES: 'ok.example.com',
        SHOAL_AGENT_DEFAULT_REGISTRY: 'elsewhere.example.com',
        SHOAL_AGENT_LISTEN: 'nowhere',
        SHOAL_AGENT_CACHE_MAX_BYTES: '-5',
        SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: 'soon',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 1);
    for (const variable of [
      'SHOAL_AGENT_REGISTRIES',
      'SHOAL_AGENT_DEFAULT_REGISTRY',
      'SHOAL_AGENT_LISTEN',
      'SHOAL_AGENT_CACHE_MAX_BYTES',
      'SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS',
    ]) {
      assert.match(stderr, new RegExp(variable), `${variable} is named`);
    }
  });

  it('exits 0 on SIGTERM, and its cache serves the next process without the registry', async () => {
    const cacheDir = join(workDir.path, 'cache-restart');
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const first = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    const url = (agentUrl: string): string =>
      `${agentUrl}/v2/shoal/life/blobs/${layer.digest}?ns=${registry.host}`;
    assert.equal((await streamDigest(url(first.url))).digest, layer.digest);
    first.process.child.kill('SIGTERM');
    const [code] = (await once(first.process.child, 'exit')) as [number | null];
    assert.equal(code, 0);
    await first.stop();

    const gets = (await registry.blobGets(layer.digest)).length;
    const second = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    try {
      assert.equal(await second.metric('shoal_agent_cache_size_bytes'), layer.size);
      assert.equal((await streamDigest(url(second.url))).digest, layer.digest);
      assert.equal((await registry.blobGets(layer.digest)).length, gets, 'served from the cache');
    } finally {
      await second.stop();
    }
  });

  it('serves blobs from the origin soon after NATS goes, and exits 0 within its shutdown timeout on SIGTERM during the outage', async () => {
    const nats = await startNats();
    const shutdownTimeoutMs = 10_000;
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      natsUrl: nats.url,
      env: { SHOAL_SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs) },
    });
    try {
      await nats.stop();
      const outageAt = performance.now();
      // Every blob cached during the outage leaves a have that could not be published.
      for (const blob of image.blobs) {
        const got = await streamDigest(
          `${agent.url}/v2/shoal/life/blobs/${blob.digest}?ns=${registry.host}`,
        );
        assert.equal(got.digest, blob.digest);
      }
      // No hand-out or piece hash can come while NATS is down: each blob came from the origin
      // once the connection had been down for 2 s, not after the stall timeout (10 s by
      // default) of its own download each, as before (over 30 s for these three).
      const servedMs = performance.now() - outageAt;
      assert.equal(
        await agent.metric('shoal_agent_swarm_fallbacks_total', { reason: 'nats-down' }),
        image.blobs.length,
      );
      assert.ok(servedMs < 10_000, `the blobs took ${servedMs} ms during the outage`);
      const started = performance.now();
      agent.process.child.kill('SIGTERM');
      const [code] = (await once(agent.process.child, 'exit')) as [number | null];
      const tookMs = performance.now() - started;
      assert.equal(code, 0, `see ${agent.process.logPath}`);
      assert.ok(tookMs < shutdownTimeoutMs, `took ${tookMs} ms`);
    } finally {
      await agent.stop();
      await nats.stop();
    }
  });

  it('leaves nothing partial behind when killed mid-download', async () => {
    const cacheDir = join(workDir.path, 'cache-crash');
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const first = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    const response = await fetch(
      `${first.url}/v2/shoal/life/blobs/${layer.digest}?ns=${registry.host}`,
    );
    const reader = response.body?.getReader();
    assert.ok(reader !== undefined);
    const firstChunk = await reader.read();
    assert.equal(firstChunk.done, false);
    await first.process.kill();
    await reader.cancel().catch(() => undefined);
    assert.deepEqual(
      await readdir(join(cacheDir, 'blobs', 'sha256')),
      [],
      'nothing entered the cache',
    );
    await first.stop();

    const second = await startAgent({ registries: `${registry.host}=${registry.url}`, cacheDir });
    try {
      assert.deepEqual(await readdir(join(cacheDir, 'tmp')), [], 'leftovers were cleared');
      assert.equal(await second.metric('shoal_agent_cache_size_bytes'), 0);
      const outcome = await streamDigest(
        `${second.url}/v2/shoal/life/blobs/${layer.digest}?ns=${registry.host}`,
      );
      assert.equal(outcome.error, undefined);
      assert.equal(outcome.digest, layer.digest);
    } finally {
      await second.stop();
    }
  });
});
