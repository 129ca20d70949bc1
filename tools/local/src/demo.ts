#!/usr/bin/env node
/**
 * Shoal on one machine: a local registry holding a generated sample image, a Shoal agent
 * mirroring it, and containerd pulling the image through the agent twice (a cold pull, then
 * a fresh containerd on the same node, as after a node's image garbage collection). Prints
 * what came from where and how long it took.
 *
 *   node tools/local/dist/src/demo.js [--keep] [--layers 64,16,1]   (sizes in MiB)
 *
 * With --keep the registry and agent stay up until Ctrl-C, so you can pull through them.
 */
import { parseArgs } from 'node:util';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startContainerd,
  startRegistry,
  writeMirrorHosts,
  type AgentProcess,
  type Registry,
} from '@shoal/testkit';

const MiB = 1024 * 1024;

const { values } = parseArgs({
  options: {
    keep: { type: 'boolean', default: false },
    layers: { type: 'string', default: '64,16,1' },
  },
});
const layerSizes = values.layers.split(',').map((s) => Math.round(Number(s) * MiB));
if (layerSizes.some((s) => !Number.isFinite(s) || s <= 0)) {
  process.stderr.write('--layers takes sizes in MiB, e.g. 64,16,1\n');
  process.exit(2);
}

const cleanup: (() => Promise<void>)[] = [];
const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};
const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

async function pullOnce(registry: Registry, agent: AgentProcess, ref: string): Promise<number> {
  const containerd = await startContainerd();
  try {
    await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, agent.url);
    const started = performance.now();
    await containerd.pull(ref);
    return (performance.now() - started) / 1000;
  } finally {
    await containerd.stop();
  }
}

async function main(): Promise<void> {
  say('Shoal local demo: registry -> Shoal agent -> containerd\n');
  const registry = await startRegistry();
  cleanup.push(() => registry.stop());
  say(`registry     ${registry.url} (Debian's docker-registry)`);

  const layout = await makeTempDir('demo-image');
  cleanup.push(() => layout.remove());
  const image = await generateImage(layout.path, { layerSizes, seed: `demo-${Date.now()}` });
  const ref = await pushImage(image, registry.host, 'shoal/demo');
  say(`image        ${ref}  (${image.layers.length} layers, ${mib(image.totalBytes)})`);

  const agent = await startAgent({
    registries: `${registry.host}=${registry.url}`,
    defaultRegistry: registry.host,
  });
  cleanup.push(() => agent.stop());
  say(`agent        ${agent.url}  (mirror for ${registry.host}; cache ${agent.cacheDir})\n`);

  const blobBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
  const cold = await pullOnce(registry, agent, ref);
  const blobGetsAfterCold = (await registry.blobGets()).length;
  const warm = await pullOnce(registry, agent, ref);
  const blobGetsAfterWarm = (await registry.blobGets()).length;

  const fromOrigin = await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' });
  const fromCache = await agent.metric('shoal_agent_served_bytes_total', { from: 'cache' });
  const peakRss = await agent.peakRssBytes();
  const requests = await registry.requests();
  const bypassed = requests.filter((r) => r.userAgent.startsWith('containerd')).length;

  say('                         cold pull      warm pull (fresh containerd)');
  say(
    `time                     ${cold.toFixed(2).padStart(7)} s      ${warm.toFixed(2).padStart(7)} s`,
  );
  say(
    `registry blob GETs       ${String(blobGetsAfterCold).padStart(7)}        ${String(blobGetsAfterWarm - blobGetsAfterCold).padStart(7)}`,
  );
  say('');
  say(
    `bytes the agent fetched from the registry   ${mib(fromOrigin)} (image blobs: ${mib(blobBytes)})`,
  );
  say(`bytes the agent served from its cache       ${mib(fromCache)}`);
  say(`requests containerd sent around the mirror  ${bypassed}`);
  say(`agent peak RSS                              ${mib(peakRss)}`);
  say(`every blob verified against its digest      ${fromOrigin === blobBytes ? 'yes' : 'NO'}`);
  say(`\nagent metrics: ${agent.url}/metrics   agent log: ${agent.process.logPath}`);

  if (values.keep) {
    say(
      `\nStill running. Try:\n  skopeo copy --src-tls-verify=false docker://127.0.0.1:${agent.port}/shoal/demo:latest oci:/tmp/demo:latest`,
    );
    say('Ctrl-C stops everything.');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
  }
  if (fromOrigin !== blobBytes || blobGetsAfterWarm !== blobGetsAfterCold || bypassed !== 0) {
    process.exitCode = 1;
  }
}

try {
  await main();
} catch (error) {
  process.stderr.write(
    `demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
} finally {
  for (const step of cleanup.reverse()) {
    await step().catch(() => undefined);
  }
}
