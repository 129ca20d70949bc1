/** A registry holding a generated image and an agent mirroring it: the mirror tests' setup. */
import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startRegistry,
  Teardown,
  type AgentProcess,
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

export async function startMirror(spec: MirrorSpec): Promise<MirrorFixture> {
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
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      ...(spec.asDefault === false ? {} : { defaultRegistry: registry.host }),
      ...(spec.agentEnv === undefined ? {} : { env: spec.agentEnv }),
    });
    teardown.add('agent', () => agent.stop());
    return { registry, image, ref, agent, stop: () => teardown.run() };
  } catch (error) {
    await teardown.run();
    throw error;
  }
}
