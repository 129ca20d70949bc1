/** A registry holding a generated image and an agent mirroring it: the mirror tests' setup. */
import assert from 'node:assert/strict';

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

export interface MirrorSpec {
  readonly layerSizes: readonly number[];
  readonly seed: string;
  readonly repository: string;
  /** Basic auth on the registry; the image is pushed with these credentials. */
  readonly auth?: { readonly username: string; readonly password: string };
  /** Make the registry the agent's default, for clients that send no `ns=` (default true). */
  readonly asDefault?: boolean;
  /** More environment for the agent (its settings). */
  readonly agentEnv?: Record<string, string>;
}

export interface MirrorFixture {
  readonly registry: Registry;
  readonly image: GeneratedImage;
  /** The pushed image reference, `<registry>/<repository>:latest`. */
  readonly ref: string;
  /** Mirrors the registry (also as its default, unless `asDefault` is false). */
  readonly agent: AgentProcess;
  stop(): Promise<void>;
}

/** The mirror's setup with the test kit's fault proxy between the agent and the registry. */
export interface ProxiedMirrorFixture extends MirrorFixture {
  /** What the agent reaches the registry through: set a fault on it. */
  readonly proxy: FaultProxy;
}

export function startMirror(spec: MirrorSpec): Promise<MirrorFixture> {
  return start(spec, false);
}

/** `startMirror`, the agent reaching the registry through a fault proxy. */
export async function startProxiedMirror(spec: MirrorSpec): Promise<ProxiedMirrorFixture> {
  const fixture = await start(spec, true);
  if (fixture.proxy === undefined) {
    await fixture.stop();
    throw new Error('the proxy did not start');
  }
  return { ...fixture, proxy: fixture.proxy };
}

async function start(
  spec: MirrorSpec,
  proxied: boolean,
): Promise<MirrorFixture & { readonly proxy: FaultProxy | undefined }> {
  const teardown = new Teardown();
  try {
    const registry = await startRegistry(spec.auth === undefined ? {} : { auth: spec.auth });
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('image');
    teardown.add('image', () => layout.remove());
    const image = await generateImage(layout.path, {
      layerSizes: spec.layerSizes,
      seed: spec.seed,
    });
    const ref = await pushImage(
      image,
      registry.host,
      spec.repository,
      spec.auth === undefined ? {} : { destCreds: `${spec.auth.username}:${spec.auth.password}` },
    );
    await layout.remove();
    const proxy = proxied ? await startFaultProxy({ upstream: registry.url }) : undefined;
    if (proxy !== undefined) {
      teardown.add('proxy', () => proxy.stop());
    }
    const agent = await startAgent({
      registries: `${registry.host}=${proxy?.url ?? registry.url}`,
      ...(spec.asDefault === false ? {} : { defaultRegistry: registry.host }),
      ...(spec.agentEnv === undefined ? {} : { env: spec.agentEnv }),
    });
    teardown.add('agent', () => agent.stop());
    return { registry, image, ref, agent, proxy, stop: () => teardown.run() };
  } catch (error) {
    await teardown.run();
    throw error;
  }
}

/**
 * Pulls `ref` with a fresh containerd whose hosts.toml names `mirrorUrl` for `registryHost`
 * and a server nothing listens on, so only the mirror can serve it; checks that containerd
 * holds every one of `digests`. `headers` go to the mirror with each request.
 */
export async function pullOnlyThroughMirror(
  teardown: Teardown,
  pull: {
    readonly registryHost: string;
    readonly mirrorUrl: string;
    readonly ref: string;
    readonly digests: readonly string[];
    readonly headers?: Readonly<Record<string, string>>;
  },
): Promise<Containerd> {
  const containerd = await startContainerd();
  teardown.add('containerd', () => containerd.stop());
  await writeMirrorHosts(
    containerd.hostsDir,
    pull.registryHost,
    'http://127.0.0.1:1',
    pull.mirrorUrl,
    pull.headers,
  );
  await containerd.pull(pull.ref, { timeoutMs: 120_000 });
  const content = await containerd.contentDigests();
  for (const digest of pull.digests) {
    assert.ok(content.has(digest), `containerd holds ${digest} of ${pull.ref}`);
  }
  return containerd;
}
