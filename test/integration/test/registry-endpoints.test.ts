/**
 * Where registries live besides `https://host/v2/`: under a path prefix (a repository manager
 * such as Artifactory serves a registry at `/api/docker/<repo>/v2/`), on an IPv6 literal
 * (`[::1]:port`), and several of them behind one agent told apart by `?ns=`. containerd pulls
 * each through the agent, with the registry's own address unreachable so that only the mirror
 * can serve.
 */
import assert from 'node:assert/strict';
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
  writeMirrorHosts,
  type AgentProcess,
  type Containerd,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

const PREFIX = '/api/docker/remote';
/** Nothing listens here: containerd's fallback to the registry itself fails. */
const NOWHERE = 'http://127.0.0.1:1';

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
    agent = await startAgent({
      registries: [
        `${prefixed.registry.host}=${prefixProxy.url}${PREFIX}`,
        `${ipv6.registry.host}=${ipv6.registry.url}`,
      ].join(','),
    });
    teardown.add('agent', () => agent.stop());
    containerd = await startContainerd();
    teardown.add('containerd', () => containerd.stop());
  });
  after(() => teardown.run());

  it('pulls from a registry served under a path prefix', async () => {
    await writeMirrorHosts(containerd.hostsDir, prefixed.registry.host, NOWHERE, agent.url);
    await containerd.pull(prefixed.ref, { timeoutMs: 120_000 });
    await assertPulled(prefixed);
    const asked = prefixProxy.received();
    assert.ok(asked.length > 0);
    assert.ok(
      asked.every((r) => r.url.startsWith('/v2/')),
      'every request reached the registry under the prefix (the proxy answers 404 elsewhere)',
    );
  });

  it('pulls from a registry on an IPv6 literal, the second registry of the same agent', async () => {
    assert.match(ipv6.registry.host, /^\[::1\]:\d+$/);
    await writeMirrorHosts(containerd.hostsDir, ipv6.registry.host, NOWHERE, agent.url);
    await containerd.pull(ipv6.ref, { timeoutMs: 120_000 });
    await assertPulled(ipv6);
    assert.ok(
      (await agent.metric('shoal_agent_upstream_requests_total', {
        registry: ipv6.registry.host,
        kind: 'blob',
      })) >= ipv6.image.blobs.length,
      'the blobs came through the agent from the IPv6 registry',
    );
  });
});
