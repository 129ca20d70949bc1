/**
 * Acceptance for the agent's containerd hosts.toml files (issue 5): with
 * `SHOAL_AGENT_HOSTS_DIR` set to containerd's hosts directory, a plain `ctr` pull goes
 * through the agent with no hosts file of the test's own; a hosts.toml the agent did not
 * write is left alone and still followed; the agent's own files go when it stops; and a file
 * an agent that crashed left behind never blocks a pull (containerd falls back to the server).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startContainerd,
  startRegistry,
  Teardown,
  type AgentProcess,
  type Containerd,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { exists, trafficDuring } from '../src/registry-traffic.js';

const MARKER = '# Written by the Shoal agent ';

/** Stops `agent` the way the kubelet does, and checks it exits cleanly. */
async function terminate(agent: AgentProcess): Promise<void> {
  const exited = once(agent.process.child, 'exit') as Promise<[number | null]>;
  agent.process.child.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'the agent exits 0 on SIGTERM');
}

function assertHoldsImage(content: Set<string>, image: GeneratedImage): void {
  assert.ok(content.has(image.manifest.digest), 'manifest in the content store');
  for (const blob of image.blobs) {
    assert.ok(content.has(blob.digest), `${blob.digest} in the content store`);
  }
}

/** Manifest and blob requests the agent's mirror answered (scrapes of /metrics are `other`). */
async function contentRequests(agent: AgentProcess): Promise<number> {
  return (
    (await agent.metric('shoal_agent_mirror_requests_total', { kind: 'manifest' })) +
    (await agent.metric('shoal_agent_mirror_requests_total', { kind: 'blob' }))
  );
}

describe('the agent writes containerd hosts.toml files', () => {
  const suite = new Teardown();
  let registry: Registry;
  let image: GeneratedImage;
  let repository: string;
  let test: Teardown;
  let containerd: Containerd;

  before(async () => {
    registry = await startRegistry();
    suite.add('registry', () => registry.stop());
    const layout = await makeTempDir('image');
    suite.add('image', () => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [4 * MiB, 512 * 1024], seed: 'hosts' });
    repository = 'shoal/hosts';
    await pushImage(image, registry.host, repository);
  });

  after(async () => {
    await suite.run();
  });

  beforeEach(async () => {
    test = new Teardown();
    containerd = await startContainerd();
    test.add('containerd', () => containerd.stop());
  });

  afterEach(async () => {
    await test.run();
  });

  it('sends a plain ctr pull through the agent, and removes its file when it stops', async () => {
    assert.deepEqual(await readdir(containerd.hostsDir), [], 'no hosts file of the test');
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir },
    });
    test.add('agent', () => agent.stop());

    const path = join(containerd.hostsDir, registry.host, 'hosts.toml');
    const written = await readFile(path, 'utf8');
    assert.ok(written.startsWith(MARKER), written);
    assert.match(written, new RegExp(`^server = "${registry.url}"$`, 'm'));
    assert.ok(written.includes(`[host."${agent.url}"]`), written);
    assert.equal(await agent.metric('shoal_agent_hosts_files'), 1);

    const traffic = await trafficDuring(registry, () =>
      containerd.pull(`${registry.host}/${repository}:latest`),
    );
    assertHoldsImage(await containerd.contentDigests(), image);
    assert.ok(traffic.length > 0, 'the pull reached the registry (through the agent)');
    assert.deepEqual(
      traffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'containerd never went around the mirror to the registry',
    );
    assert.ok((await agent.metric('shoal_agent_mirror_requests_total', { kind: 'blob' })) > 0);
    assert.equal(
      await agent.metric('shoal_agent_fetched_bytes_total', { source: 'origin' }),
      image.blobs.reduce((sum, blob) => sum + blob.size, 0),
    );

    await terminate(agent);
    assert.deepEqual(await readdir(containerd.hostsDir), [], 'its file and directory are gone');
  });

  it('never blocks a pull when the agent crashed and left its file behind', async () => {
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir },
    });
    test.add('agent', () => agent.stop());
    const path = join(containerd.hostsDir, registry.host, 'hosts.toml');
    assert.ok((await readFile(path, 'utf8')).startsWith(MARKER));
    // A crash (or OOM kill): no chance to remove the file, which still names the dead mirror.
    await agent.process.kill();
    assert.ok(await exists(path), 'the file is left behind');

    // containerd tries the mirror, finds nobody, and goes to the registry named as server.
    const traffic = await trafficDuring(registry, () =>
      containerd.pull(`${registry.host}/${repository}:latest`),
    );
    assertHoldsImage(await containerd.contentDigests(), image);
    assert.ok(
      traffic.some((r) => !r.userAgent.startsWith('shoal-agent/') && r.uri.includes('/blobs/')),
      'containerd fetched the blobs from the registry itself',
    );
  });

  it('in merge mode, puts the mirror first in a foreign hosts.toml and gives it back on stop', async () => {
    const path = join(containerd.hostsDir, registry.host, 'hosts.toml');
    const foreign = Buffer.from(
      `# Kept by the node's administrator.\r\nserver = "${registry.url}"\n`,
      'utf8',
    );
    await mkdir(join(containerd.hostsDir, registry.host));
    await writeFile(path, foreign);
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir, SHOAL_AGENT_HOSTS_MERGE: 'true' },
    });
    test.add('agent', () => agent.stop());
    const merged = await readFile(path, 'utf8');
    assert.ok(merged.startsWith(MARKER), merged);
    assert.ok(merged.includes(`[host."${agent.url}"]`));
    assert.ok(merged.includes("# Kept by the node's administrator."));

    const traffic = await trafficDuring(registry, () =>
      containerd.pull(`${registry.host}/${repository}:latest`),
    );
    assertHoldsImage(await containerd.contentDigests(), image);
    assert.deepEqual(
      traffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'containerd pulled through the mirror the merged file names first',
    );
    await terminate(agent);
    assert.deepEqual(await readFile(path), foreign, "the administrator's file, byte for byte");
    assert.deepEqual(await readdir(join(containerd.hostsDir, registry.host)), ['hosts.toml']);
  });

  it('leaves a hosts.toml it did not write as it is, and containerd still follows it', async () => {
    // The same registry under a second name: one name keeps the node's own file, the other
    // gets the agent's.
    const own = registry.host;
    const alias = `localhost:${registry.host.split(':')[1] ?? ''}`;
    const foreignPath = join(containerd.hostsDir, own, 'hosts.toml');
    const foreign = Buffer.from(
      `# Kept by the node's administrator.\r\nserver = "${registry.url}"\n`,
      'utf8',
    );
    await mkdir(join(containerd.hostsDir, own));
    await writeFile(foreignPath, foreign);

    const agent = await startAgent({
      registries: `${own}=${registry.url},${alias}=${registry.url}`,
      env: { SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir },
    });
    test.add('agent', () => agent.stop());
    const aliasPath = join(containerd.hostsDir, alias, 'hosts.toml');
    assert.ok((await readFile(aliasPath, 'utf8')).startsWith(MARKER));
    assert.deepEqual(await readFile(foreignPath), foreign, 'the foreign file is untouched');
    assert.equal(await agent.metric('shoal_agent_hosts_files_skipped_total'), 1);
    assert.equal(await agent.metric('shoal_agent_hosts_files'), 1);
    // The agent's readiness says the same, for `kubectl describe` and shoal-doctor.
    const ready = (await (await fetch(`${agent.url}/readyz`)).json()) as { hostsFiles?: string };
    assert.equal(ready.hostsFiles, '1 written, 1 left alone');

    // Through the agent's file: every registry request is the agent's.
    const viaAgent = await trafficDuring(registry, () =>
      containerd.pull(`${alias}/${repository}:latest`),
    );
    assertHoldsImage(await containerd.contentDigests(), image);
    assert.ok(viaAgent.length > 0);
    assert.deepEqual(
      viaAgent.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'the alias was pulled through the mirror',
    );

    // Through the foreign file: containerd asks the registry itself, never the agent.
    const mirrored = await contentRequests(agent);
    const direct = await trafficDuring(registry, () =>
      containerd.pull(`${own}/${repository}:latest`),
    );
    assert.ok(direct.length > 0);
    assert.deepEqual(
      direct.filter((r) => r.userAgent.startsWith('shoal-agent/')),
      [],
      'the foreign file sent containerd straight to the registry',
    );
    assert.equal(await contentRequests(agent), mirrored, 'the agent was not asked');

    await terminate(agent);
    assert.equal(await exists(join(containerd.hostsDir, alias)), false, 'its own file is gone');
    assert.deepEqual(await readFile(foreignPath), foreign, 'the foreign file remains as it was');
    assert.deepEqual(await readdir(containerd.hostsDir), [own]);
  });
});
