/** Starting what a benchmark measures: agents in parallel, and generated images. */
import { join } from 'node:path';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startNats,
  startRegistry,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type Teardown,
} from '@shoal/testkit';

import type { PullTarget } from './clients.js';

/** Starts `count` agents at once; those that started are torn down even when one fails. */
export async function startAgents(
  count: number,
  start: (index: number) => Promise<AgentProcess>,
  teardown: Teardown,
): Promise<AgentProcess[]> {
  const settled = await Promise.allSettled(Array.from({ length: count }, (_, i) => start(i)));
  const agents: AgentProcess[] = [];
  for (const result of settled) {
    if (result.status === 'fulfilled') {
      const agent = result.value;
      agents.push(agent);
      teardown.add(`agent ${agent.url}`, () => agent.stop());
    }
  }
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed !== undefined) {
    throw new Error(`an agent did not start: ${String(failed.reason)}`);
  }
  return agents;
}

/** Generates an image from `seed` under `dir`, pushes it, and returns what a client pulls. */
export async function pushTarget(
  dir: string,
  registry: Registry,
  repository: string,
  seed: string,
  layerSizes: readonly number[],
): Promise<{ image: GeneratedImage; ref: string; target: PullTarget }> {
  const image = await generateImage(join(dir, repository.replace('/', '-')), {
    layerSizes,
    seed,
  });
  const ref = await pushImage(image, registry.host, repository);
  return {
    image,
    ref,
    target: {
      registryHost: registry.host,
      registryUrl: registry.url,
      repository,
      tag: image.tag,
      manifest: image.manifest,
      blobs: image.blobs,
    },
  };
}

/**
 * What every benchmark starts from: nats-server, a registry and a temporary directory for
 * generated images (named `layoutName`), each torn down by `teardown`.
 */
export async function startBase(
  teardown: Teardown,
  layoutName: string,
): Promise<{ nats: NatsServer; registry: Registry; layout: { path: string } }> {
  const nats = await startNats();
  teardown.add('nats-server', () => nats.stop());
  const registry = await startRegistry();
  teardown.add('registry', () => registry.stop());
  const layout = await makeTempDir(layoutName);
  teardown.add('image layout', () => layout.remove());
  return { nats, registry, layout };
}
