/**
 * The agent as a process: bad configuration is reported whole, SIGTERM shuts it down cleanly
 * (during a NATS outage too), the cache survives a restart, and a crash mid-download leaves
 * nothing partial behind. During a NATS outage blobs come from the origin without a stall
 * timeout each, and their wants go out once NATS is back.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { pieceWantSubject, STREAMS } from '@shoal/proto';
import { ensureStreams } from '@shoal/runtime/nats';
import {
  AGENT_MAIN,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  waitFor,
  type AgentProcess,
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

  /**
   * Fetches every blob of the image from `agent` during a NATS outage that began as the first
   * fetch started: no hand-out or piece hash can come, so the first download waits out the
   * stall timeout and reads the origin; those after it read the origin at once (before, each
   * waited a stall timeout of its own). Asserts the bytes, that, and how each fell back.
   */
  async function fetchDuringOutage(agent: AgentProcess, stallTimeoutMs: number): Promise<void> {
    const tookMs: number[] = [];
    for (const blob of image.blobs) {
      const started = performance.now();
      const got = await streamDigest(
        `${agent.url}/v2/shoal/life/blobs/${blob.digest}?ns=${registry.host}`,
      );
      tookMs.push(performance.now() - started);
      assert.equal(got.digest, blob.digest);
    }
    const laterMs = tookMs.slice(1).reduce((sum, ms) => sum + ms, 0);
    assert.ok(laterMs < stallTimeoutMs, `the blobs took ${tookMs.join(', ')} ms`);
    const fallbacks = async (reason: string): Promise<number> =>
      agent.metric('shoal_agent_swarm_fallbacks_total', { reason });
    assert.ok((await fallbacks('nats-down')) >= image.blobs.length - 1);
    assert.equal((await fallbacks('nats-down')) + (await fallbacks('stall')), image.blobs.length);
    assert.equal(await agent.metric('shoal_agent_nats_connected'), 0, 'NATS shown down');
  }

  it('serves blobs from the origin during a NATS outage, and exits 0 within its shutdown timeout on SIGTERM during it', async () => {
    const nats = await startNats();
    const shutdownTimeoutMs = 10_000;
    const stallTimeoutMs = 4_000;
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      natsUrl: nats.url,
      env: {
        SHOAL_SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs),
        SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: String(stallTimeoutMs),
      },
    });
    try {
      await nats.stop();
      // Every blob cached during the outage leaves a have that could not be published.
      await fetchDuringOutage(agent, stallTimeoutMs);
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

  it('sends the wants of the blobs it read from the origin during a NATS outage once NATS is back', async () => {
    const nats = await startNats();
    // The stream a tracker declares: the agent's wants wait in it.
    const nc = await connect({ servers: nats.url, timeout: 5_000 });
    const stallTimeoutMs = 2_000;
    const peerId = 'life-wants';
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      natsUrl: nats.url,
      peerId,
      env: { SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: String(stallTimeoutMs) },
    });
    try {
      const jsm = await jetstreamManager(nc);
      await ensureStreams(jsm, [STREAMS.wants], 1);
      // Down long enough for every fetch, then back with its store.
      const restarted = nats.crashAndRestart(3 * stallTimeoutMs);
      await waitFor('the agent to see NATS gone', async () =>
        (await readFile(agent.process.logPath, 'utf8')).includes('"nats":"disconnect"'),
      );
      await fetchDuringOutage(agent, stallTimeoutMs);
      await restarted;
      // A blob read from the origin has no piece hashes until a want asks a seed server for
      // them: the wants NATS could not take went out again once it was back, one per blob,
      // downloads that never waited included.
      await waitFor(
        "every blob's want in the stream",
        async () => {
          for (const blob of image.blobs) {
            const held = await jsm.streams
              .getMessage(STREAMS.wants.name, {
                last_by_subj: pieceWantSubject(blob.digest, peerId),
              })
              .catch(() => null);
            if (held === null) {
              return false;
            }
          }
          return true;
        },
        { timeoutMs: 30_000 },
      );
      assert.equal(await agent.metric('shoal_agent_nats_connected'), 1, 'NATS shown back');
    } finally {
      await agent.stop();
      await nc.close();
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
