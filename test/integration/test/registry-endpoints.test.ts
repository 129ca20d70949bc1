/**
 * Where registries live besides `https://host/v2/`: under a path prefix (a repository manager
 * such as Artifactory serves a registry at `/api/docker/<repo>/v2/`), on an IPv6 literal
 * (`[::1]:port`), and several of them behind one agent told apart by `?ns=`. The agent writes
 * containerd's hosts.toml for each, and containerd pulls each through it.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
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
  type AgentProcess,
  type Containerd,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

const PREFIX = '/api/docker/remote';

interface Pushed {
  readonly registry: Registry;
  readonly image: GeneratedImage;
  readonly ref: string;
}

describe('registries under a path prefix, on IPv6, and several behind one agent', () => {
  const teardown = new Teardown();
  let prefixed: Pushed;
  let ipv6: Pushed;
  let prefixProxy: FaultProxy;
  let agent: AgentProcess;
  let containerd: Containerd;

  const push = async (name: string, host?: string): Promise<Pushed> => {
    const registry = await startRegistry(host === undefined ? {} : { host });
    teardown.add(`${name} registry`, () => registry.stop());
    const dir = await makeTempDir(name);
    teardown.add(`${name} image`, () => dir.remove());
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [2 * MiB, 512 * 1024],
      seed: `registry-endpoints-${name}`,
    });
    // skopeo 1.9's reference grammar has no IPv6 literal: it pushes through a proxy on IPv4.
    const front = await startFaultProxy({ upstream: registry.url });
    const pushedAs = new URL(front.url).host;
    try {
      const ref = await pushImage(image, pushedAs, `${name}/app`);
      return { registry, image, ref: ref.replace(pushedAs, registry.host) };
    } finally {
      await front.stop();
    }
  };

  const assertPulled = async (pushed: Pushed): Promise<void> => {
    const content = await containerd.contentDigests();
    for (const blob of pushed.image.blobs) {
      assert.ok(content.has(blob.digest), `${pushed.ref}: ${blob.digest}`);
    }
  };

  before(async () => {
    prefixed = await push('prefixed');
    prefixProxy = await startFaultProxy({ upstream: prefixed.registry.url, pathPrefix: PREFIX });
    teardown.add('prefix proxy', () => prefixProxy.stop());
    ipv6 = await push('ipv6', '::1');
    containerd = await startContainerd();
    teardown.add('containerd', () => containerd.stop());
    // The agent writes containerd's hosts.toml for both registries itself.
    agent = await startAgent({
      registries: [
        `${prefixed.registry.host}=${prefixProxy.url}${PREFIX}`,
        `${ipv6.registry.host}=${ipv6.registry.url}`,
      ].join(','),
      env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir },
    });
    teardown.add('agent', () => agent.stop());
  });

  /**
   * The pull's blobs went through the agent: the hosts.toml the agent writes names the
   * registry as containerd's fallback, which would hide a mirror that failed.
   */
  const assertThroughAgent = async (pushed: Pushed): Promise<void> => {
    const fetched = await agent.metric('shoal_agent_upstream_requests_total', {
      registry: pushed.registry.host,
      kind: 'blob',
      status: '200',
    });
    assert.equal(fetched, pushed.image.blobs.length, `${pushed.ref}: blobs from the agent`);
  };
  after(() => teardown.run());

  it('writes hosts.toml for both and pulls from the registry served under a path prefix', async () => {
    const hosts = await readFile(
      join(containerd.hostsDir, prefixed.registry.host, 'hosts.toml'),
      'utf8',
    );
    assert.match(hosts, new RegExp(`server = "${prefixProxy.url}${PREFIX}"`));
    await containerd.pull(prefixed.ref, { timeoutMs: 120_000 });
    await assertPulled(prefixed);
    await assertThroughAgent(prefixed);
    const asked = prefixProxy.received();
    assert.ok(asked.length > 0);
    assert.ok(
      asked.every((r) => r.url.startsWith('/v2/')),
      'every request reached the registry under the prefix (the proxy answers 404 elsewhere)',
    );
  });

  it('pulls from a registry on an IPv6 literal, the second registry of the same agent', async () => {
    assert.match(ipv6.registry.host, /^\[::1\]:\d+$/);
    const hosts = await readFile(
      join(containerd.hostsDir, ipv6.registry.host, 'hosts.toml'),
      'utf8',
    );
    assert.match(hosts, new RegExp(`server = "http://\\[::1\\]:\\d+"`));
    await containerd.pull(ipv6.ref, { timeoutMs: 120_000 });
    await assertPulled(ipv6);
    await assertThroughAgent(ipv6);
  });
});
