/**
 * Every component on its own address, as on real nodes: the registry, NATS with the tracker
 * and the seed server, and two nodes (containerd and an agent each) in network namespaces of
 * their own, joined by a bridge. Nothing listens on 127.0.0.1: the agents listen on their
 * node's address, advertise it as their peer URL, and write it into containerd's hosts.toml;
 * the tracker hands the first node's address to the second, which takes the pieces from it.
 * Needs root (network namespaces), as the machines that run this suite have.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  NetLab,
  pushImage,
  scrapeMetrics,
  startAgent,
  startContainerd,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  Teardown,
  waitFor,
  type AgentProcess,
  type Containerd,
  type LabHost,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

const shape = { mbit: 200, delayMs: 0, lossPct: 0 };

describe('components on their own addresses, in network namespaces', () => {
  const teardown = new Teardown((what, error) => {
    process.stderr.write(`stopping ${what} failed: ${error.message}\n`);
  });
  let registry: Registry;
  let ref: string;
  let imageBytes: number;
  const nodes: { host: LabHost; containerd: Containerd; agent: AgentProcess }[] = [];

  before(async () => {
    const lab = await NetLab.create((line) => process.stderr.write(`${line}\n`));
    teardown.add('network namespaces', () => lab.close());
    const registryHost = await lab.addHost('reg', 1, shape);
    const control = await lab.addHost('ctl', 2, shape);
    registry = await startRegistry({ netns: registryHost.netns, host: registryHost.address });
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('own-addresses');
    teardown.add('image', () => layout.remove());
    const image = await generateImage(join(layout.path, 'image'), {
      layerSizes: [6 * MiB, MiB],
      seed: 'own-addresses',
    });
    imageBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    ref = await pushImage(image, registry.host, 'team/addresses');

    const placed = { netns: control.netns, host: control.address };
    const nats = await startNats(placed);
    teardown.add('nats-server', () => nats.stop());
    const tracker = await startTracker({ natsUrl: nats.url, ...placed });
    teardown.add('tracker', () => tracker.stop());
    const registries = `${registry.host}=${registry.url}`;
    const seed = await startSeedServer({ natsUrl: nats.url, registries, ...placed });
    teardown.add('seed server', () => seed.stop());
    for (const [index, name] of ['first', 'second'].entries()) {
      const host = await lab.addHost(name.slice(0, 3) + String(index), 10 + index, shape);
      const containerd = await startContainerd({ netns: host.netns });
      teardown.add(`containerd ${name}`, () => containerd.stop());
      const agent = await startAgent({
        registries,
        natsUrl: nats.url,
        peerId: name,
        netns: host.netns,
        host: host.address,
        env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir },
      });
      teardown.add(`agent ${name}`, () => agent.stop());
      nodes.push({ host, containerd, agent });
    }
  });

  after(() => teardown.run());

  it('writes hosts.toml with the node address of the agent', async () => {
    for (const { host, containerd } of nodes) {
      const path = join(containerd.hostsDir, registry.host, 'hosts.toml');
      await waitFor('hosts.toml', async () => (await readFile(path, 'utf8')).length > 0);
      const text = await readFile(path, 'utf8');
      assert.match(
        text,
        new RegExp(`\\[host\\."http://${host.address.replace(/\./g, '\\.')}:65001"\\]`),
      );
      assert.match(text, new RegExp(`server = "${registry.url}"`));
      assert.doesNotMatch(text, /127\.0\.0\.1/);
    }
  });

  it('pulls on both nodes, the second from the first, the registry serving the image once', async () => {
    const [first, second] = nodes;
    assert.ok(first !== undefined && second !== undefined);
    const before = await registry.blobGets();
    await first.containerd.pull(ref, { timeoutMs: 120_000 });
    await second.containerd.pull(ref, { timeoutMs: 120_000 });
    const gets = (await registry.blobGets()).slice(before.length);
    const served = gets.reduce((sum, get) => sum + get.written, 0);
    assert.equal(served, imageBytes, 'the origin served the image once, to the seed server');

    const firstMetrics = await scrapeMetrics(first.agent.url);
    const secondMetrics = await scrapeMetrics(second.agent.url);
    const fromPeers = secondMetrics.get('shoal_agent_fetched_bytes_total', { source: 'peer' });
    assert.ok(fromPeers > 0, 'the second node took pieces from the first');
    assert.equal(secondMetrics.get('shoal_agent_fetched_bytes_total', { source: 'origin' }), 0);
    // Sent by the first node's agent, at its own address (endgame copies may add to it).
    assert.ok(firstMetrics.get('shoal_agent_uploaded_bytes_total') >= fromPeers);
    for (const { containerd } of nodes) {
      const stored = await containerd.contentDigests();
      assert.ok(gets.every((get) => stored.has(/sha256:[0-9a-f]{64}/.exec(get.uri)?.[0] ?? '')));
    }
  });
});
