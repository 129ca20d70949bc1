/**
 * A full disk never stops a node's pulls (issue 11, item 1): with its cache on a small tmpfs
 * (a real filesystem that really fills), the agent passes blobs through from the origin
 * uncached, verified all the same, instead of cutting pulls.
 *
 * - Below SHOAL_AGENT_CACHE_MIN_FREE_BYTES, containerd pulls a whole image through the agent;
 *   nothing lands in the cache.
 * - With the check off, a blob larger than the disk fails its download with ENOSPC: that
 *   response is cut (never completed), the temp file is gone, and the retry is passed
 *   through, whole and by range.
 * - A corrupt origin blob passed through is cut before its last byte, never completed.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  scrapeMetrics,
  startAgent,
  startContainerd,
  startRegistry,
  Teardown,
  writeMirrorHosts,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB, smallDisk } from '../src/files.js';
import { streamDigest } from '../src/http.js';

const DISK_BYTES = 24 * MiB;
const PASS_THROUGHS = 'shoal_agent_cache_pass_throughs_total';

/** Files under the cache directory (blobs and temp files), recursively. */
async function cacheFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

describe('an agent whose cache disk is full', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let image: GeneratedImage;
  let ref: string;

  before(async () => {
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('image');
    teardown.add('image', () => layout.remove());
    // One layer larger than the disk, one that fits.
    image = await generateImage(layout.path, {
      layerSizes: [40 * MiB, 3 * MiB],
      seed: 'disk-full',
    });
    ref = await pushImage(image, registry.host, 'shoal/diskfull');
  });

  after(async () => {
    await teardown.run();
  });

  async function agentOnSmallDisk(minFreeBytes: number): Promise<AgentProcess> {
    const cacheDir = await smallDisk(teardown, DISK_BYTES);
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      cacheDir,
      env: { SHOAL_AGENT_CACHE_MIN_FREE_BYTES: String(minFreeBytes) },
    });
    teardown.add('agent', () => agent.stop());
    return agent;
  }

  it('passes every blob through when free space is below the minimum, and containerd pulls the image', async () => {
    // More than the whole disk: the disk is always "full" for this agent.
    const agent = await agentOnSmallDisk(2 * DISK_BYTES);
    const containerd = await startContainerd();
    try {
      await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, agent.url);
      await containerd.pull(ref);
      const content = await containerd.contentDigests();
      for (const blob of image.blobs) {
        assert.ok(content.has(blob.digest), `${blob.digest} in containerd's content store`);
      }
    } finally {
      await containerd.stop();
    }
    const metrics = await scrapeMetrics(agent.url);
    assert.ok(
      metrics.get(PASS_THROUGHS, { reason: 'low-free-space' }) >= image.layers.length,
      'each layer was passed through',
    );
    const layerBytes = image.layers.reduce((sum, l) => sum + l.size, 0);
    assert.ok(
      metrics.get('shoal_agent_served_bytes_total', { from: 'origin' }) >= layerBytes,
      'the layers were served from the origin',
    );
    const blobFiles = (await cacheFiles(agent.cacheDir)).filter((f) => f.includes('sha256'));
    assert.deepEqual(
      blobFiles.filter((f) => image.layers.some((l) => f.includes(l.digest.slice(7)))),
      [],
      'no layer was cached',
    );
  });

  it('cuts the download that fills the disk, then passes the blob through, whole and by range', async () => {
    const agent = await agentOnSmallDisk(0);
    const big = image.layers[0];
    assert.ok(big !== undefined && big.size > DISK_BYTES);
    const url = `${agent.url}/v2/shoal/diskfull/blobs/${big.digest}`;

    const first = await streamDigest(url);
    assert.equal(first.status, 200);
    assert.ok(first.error !== undefined, 'the response that hit ENOSPC was cut');
    assert.ok(first.bytes < big.size, 'and not completed');
    assert.deepEqual(
      (await cacheFiles(agent.cacheDir)).filter((f) => f.startsWith(join(agent.cacheDir, 'tmp'))),
      [],
      'the failed download left no temp file',
    );

    const again = await streamDigest(url);
    assert.equal(again.error, undefined);
    assert.equal(again.status, 200);
    assert.equal(again.bytes, big.size);
    assert.equal(again.digest, big.digest);

    const ranged = await fetch(url, {
      headers: { range: 'bytes=1000-1999' },
      signal: AbortSignal.timeout(60_000),
    });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get('content-range'), `bytes 1000-1999/${big.size}`);
    const part = Buffer.from(await ranged.arrayBuffer());
    assert.equal(part.length, 1000);
    const whole = await fetch(url, { signal: AbortSignal.timeout(60_000) });
    const wholeBytes = Buffer.from(await whole.arrayBuffer());
    assert.ok(part.equals(wholeBytes.subarray(1000, 2000)), 'the range holds the right bytes');

    const metrics = await scrapeMetrics(agent.url);
    assert.ok(metrics.get(PASS_THROUGHS, { reason: 'write-failed' }) >= 3);
    assert.equal(
      (await cacheFiles(agent.cacheDir)).filter((f) => f.includes(big.digest.slice(7))).length,
      0,
      'the big layer is not in the cache',
    );
  });

  it('cuts a corrupt blob passed through before its last byte', async () => {
    const agent = await agentOnSmallDisk(2 * DISK_BYTES);
    const small = image.layers[1];
    assert.ok(small !== undefined);
    await registry.corruptBlob(small.digest);
    const outcome = await streamDigest(`${agent.url}/v2/shoal/diskfull/blobs/${small.digest}`);
    assert.ok(outcome.error !== undefined, 'the response was cut');
    assert.ok(outcome.bytes < small.size, 'the last byte was withheld');
    const metrics = await scrapeMetrics(agent.url);
    assert.ok(metrics.get('shoal_agent_verification_failures_total', { kind: 'blob' }) >= 1);
  });
});
