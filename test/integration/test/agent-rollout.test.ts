/**
 * An agent DaemonSet's rolling update on one node, with real processes: the old agent gets
 * SIGTERM while containerd (`ctr`, which fetches with containerd's own resolver and hosts.toml
 * reader) is in the middle of a pull through it; no agent listens for a while; then the new
 * agent starts on the same cache and hosts directories (the DaemonSet's hostPath volumes).
 *
 * What must hold: the old agent takes its hosts.toml away at once, lets the response in
 * flight run for its drain time (two thirds of SHOAL_SHUTDOWN_TIMEOUT_MS), then cuts it and exits 0 within its shutdown timeout (the
 * kubelet's grace period is longer); containerd resumes the cut blob from the registry; a
 * pull while no agent runs goes to the registry; the new agent clears the half-written
 * download, keeps the blobs the old one cached, writes the hosts.toml again, and the next
 * pull goes through it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startContainerd,
  startFaultProxy,
  startRegistry,
  Teardown,
  waitFor,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
  type RegistryRequest,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { exists, trafficDuring } from '../src/registry-traffic.js';

const MARKER = '# Written by the Shoal agent ';
/** The old agent's shutdown timeout, short so the test is quick; it drains for two thirds. */
const SHUTDOWN_MS = 4500;
const DRAIN_MS = 3000;

const byContainerd = (r: RegistryRequest): boolean => !r.userAgent.startsWith('shoal-agent/');

describe('agent rolling update under load', () => {
  const suite = new Teardown();
  let registry: Registry;
  let proxy: FaultProxy;
  let image: GeneratedImage;
  let nodeDir: string;

  before(async () => {
    registry = await startRegistry();
    suite.add('registry', () => registry.stop());
    // The origin as the agent and containerd reach it, slowed while the old agent pulls.
    proxy = await startFaultProxy({ upstream: registry.url });
    suite.add('proxy', () => proxy.stop());
    const layout = await makeTempDir('rollout');
    suite.add('layout', () => layout.remove());
    nodeDir = layout.path;
    image = await generateImage(join(layout.path, 'image'), {
      layerSizes: [48 * MiB, 1 * MiB],
      seed: 'rollout',
    });
    await pushImage(image, registry.host, 'shoal/rollout');
  });

  after(async () => {
    await suite.run();
  });

  it('cuts a blob in flight at its drain time, exits 0, and the next agent takes over the node', async () => {
    const test = new Teardown();
    try {
      const containerd = await startContainerd();
      test.add('containerd', () => containerd.stop());
      const host = new URL(proxy.url).host;
      const ref = `${host}/shoal/rollout:latest`;
      const cacheDir = join(nodeDir, 'cache');
      const hostsFile = join(containerd.hostsDir, host, 'hosts.toml');
      const agentOptions = {
        registries: `${host}=${proxy.url}`,
        cacheDir,
        env: {
          SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir,
          SHOAL_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS),
        },
      };
      const [big, small] = image.layers;
      assert.ok(big !== undefined && small !== undefined);

      const old = await startAgent(agentOptions);
      test.add('old agent', () => old.stop());
      assert.ok((await readFile(hostsFile, 'utf8')).startsWith(MARKER));

      // The origin at 6 MiB/s: the 48 MiB layer takes eight seconds, far past the drain time.
      proxy.set({ kind: 'slow', delayMs: 0, rateBytes: 6 * MiB });
      let pulled = { code: null as number | null, stoppedMs: 0 };
      const pullTraffic = await trafficDuring(registry, async () => {
        const pull = containerd.pull(ref, { timeoutMs: 120_000 });
        await waitFor(
          'the small layer cached and the big one in flight',
          async () =>
            (await old.metric('shoal_agent_downloads_in_flight')) > 0 &&
            (await exists(join(cacheDir, 'blobs', 'sha256', small.digest.slice(7)))),
          { timeoutMs: 30_000 },
        );
        const exited = once(old.process.child, 'exit') as Promise<[number | null]>;
        const sigterm = Date.now();
        old.process.child.kill('SIGTERM');
        const [code] = await exited;
        const stoppedMs = Date.now() - sigterm;
        // containerd's next attempt goes past the mirror (gone) to the registry, at full speed.
        proxy.set(undefined);
        pulled = { code, stoppedMs };
        await pull;
      });

      // The old agent: its file went first, the blob ran for the drain time and was cut, and
      // the agent left before its shutdown timeout, exiting 0.
      assert.equal(pulled.code, 0, 'exit code after SIGTERM');
      assert.ok(
        pulled.stoppedMs >= DRAIN_MS && pulled.stoppedMs < SHUTDOWN_MS,
        `stopped after ${String(pulled.stoppedMs)} ms`,
      );
      assert.equal(await exists(hostsFile), false, 'its hosts.toml is gone');
      const oldLog = await readFile(old.process.logPath, 'utf8');
      assert.match(oldLog, /"msg":"hosts.toml removed"/);
      assert.match(oldLog, /"downloads":1,.*"msg":"requests still in flight at the drain deadline/);
      assert.doesNotMatch(oldLog, /shutdown timed out/);
      assert.match(oldLog, /"msg":"stopped"/);

      // containerd holds the whole image, verified by digest on its side: what the agent had
      // sent, and the rest of the big layer from the registry with a range request.
      const content = await containerd.contentDigests();
      for (const blob of image.blobs) {
        assert.ok(content.has(blob.digest), `${blob.digest} in containerd's content store`);
      }
      const resumed = pullTraffic.filter(
        (r) => byContainerd(r) && r.uri.endsWith(`/blobs/${big.digest}`),
      );
      assert.equal(resumed.length, 1, 'containerd asked the registry once for the cut layer');
      assert.equal(resumed[0]?.status, 206, 'a range request: it resumed, not restarted');
      assert.ok(resumed[0].written < big.size, 'only the rest of the layer');
      assert.deepEqual(
        pullTraffic.filter((r) => byContainerd(r) && !r.uri.endsWith(`/blobs/${big.digest}`)),
        [],
        'everything else containerd got through the agent',
      );

      // The gap between the pods: containerd goes to the registry, nothing refuses it.
      await containerd.ctr(['images', 'rm', '--sync', ref]);
      assert.equal((await containerd.contentDigests()).size, 0);
      const gapTraffic = await trafficDuring(registry, () => containerd.pull(ref));
      assert.ok(
        gapTraffic.length > 0 && gapTraffic.every(byContainerd),
        'straight to the registry',
      );
      await containerd.ctr(['images', 'rm', '--sync', ref]);

      // The cut download took its temporary file with it (one left by an agent that was
      // killed instead is removed when the next one starts: agent-lifecycle.test.ts).
      assert.deepEqual(await readdir(join(cacheDir, 'tmp')), [], 'no half-written download');
      // The new pod: the blobs the old one cached are kept.
      const next = await startAgent(agentOptions);
      test.add('new agent', () => next.stop());
      const cachedBlobs = await readdir(join(cacheDir, 'blobs', 'sha256'));
      assert.ok(
        cachedBlobs.includes(small.digest.slice(7)),
        'the old agent cached the small layer',
      );
      assert.ok(!cachedBlobs.includes(big.digest.slice(7)), 'nothing of the cut layer was cached');
      assert.ok((await readFile(hostsFile, 'utf8')).startsWith(MARKER), 'hosts.toml written again');

      const nextTraffic = await trafficDuring(registry, () => containerd.pull(ref));
      for (const blob of image.blobs) {
        assert.ok((await containerd.contentDigests()).has(blob.digest), blob.digest);
      }
      assert.deepEqual(
        nextTraffic.filter(byContainerd),
        [],
        'containerd pulled through the new agent',
      );
      const originBlobs = nextTraffic.filter(
        (r) => r.method === 'GET' && r.uri.includes('/blobs/'),
      );
      assert.deepEqual(
        originBlobs.map((r) => r.uri.split('/blobs/')[1]),
        [big.digest],
        'only the layer the old agent had not finished came from the origin',
      );
      assert.ok(
        (await next.metric('shoal_agent_cache_requests_total', { kind: 'blob', result: 'hit' })) >=
          1,
      );
    } finally {
      await test.run();
    }
  });
});
