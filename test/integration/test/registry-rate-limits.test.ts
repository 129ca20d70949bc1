/**
 * A registry's pull limit (Docker Hub answers manifest GETs 429 with Retry-After, HEADs stay
 * free): the fault proxy answers GETs 429 in front of a real registry. The agent passes the
 * first 429 on with its Retry-After and then honours it: until then the same requests with the
 * same credential are answered 429 by the agent with the time left, without reaching the
 * registry; HEADs and other credentials still go through; after it, containerd pulls.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Teardown } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { ociCode } from '../src/http.js';
import {
  pullOnlyThroughMirror,
  startProxiedMirror,
  type ProxiedMirrorFixture,
} from '../src/mirror.js';

const RETRY_AFTER_S = 4;
const MANIFEST_ACCEPT = 'application/vnd.oci.image.manifest.v1+json';

describe('a registry rate limit (429 with Retry-After)', () => {
  const teardown = new Teardown();
  let mirror: ProxiedMirrorFixture;

  before(async () => {
    mirror = await startProxiedMirror({
      layerSizes: [2 * MiB, 1 * MiB],
      seed: 'registry-rate-limits',
      repository: 'limited/app',
    });
    teardown.add('mirror', () => mirror.stop());
  });
  after(() => teardown.run());

  const ask = async (
    path: string,
    method: 'GET' | 'HEAD' = 'GET',
    headers: Record<string, string> = {},
  ): Promise<{ status: number; retryAfter: string | null; body: Buffer }> => {
    const response = await fetch(
      `${mirror.agent.url}/v2/limited/app/${path}?ns=${mirror.registry.host}`,
      {
        method,
        headers: { accept: MANIFEST_ACCEPT, ...headers },
        signal: AbortSignal.timeout(30_000),
      },
    );
    return {
      status: response.status,
      retryAfter: response.headers.get('retry-after'),
      body: Buffer.from(await response.arrayBuffer()),
    };
  };
  /** Requests that reached the registry (the proxy in front of it) so far. */
  const reachedRegistry = (): number => mirror.proxy.received().length;

  it('honours Retry-After: the same requests are answered by the agent until it has passed', async () => {
    mirror.proxy.set({
      kind: 'status',
      statuses: [429],
      retryAfterS: RETRY_AFTER_S,
      methods: ['GET'],
    });
    const first = await ask('manifests/latest');
    assert.equal(first.status, 429);
    assert.equal(first.retryAfter, String(RETRY_AFTER_S));
    assert.equal(ociCode(first.body), 'TOOMANYREQUESTS');
    const asked = reachedRegistry();

    // The same credential (none), GETs of a manifest and of a blob: answered by the agent.
    const layer = mirror.image.layers[0]?.digest ?? '';
    for (const path of [
      'manifests/latest',
      `manifests/${mirror.image.manifest.digest}`,
      `blobs/${layer}`,
    ]) {
      const again = await ask(path);
      assert.equal(again.status, 429, path);
      const left = Number(again.retryAfter);
      assert.ok(left >= 1 && left <= RETRY_AFTER_S, `Retry-After ${String(again.retryAfter)}`);
      assert.equal(ociCode(again.body), 'TOOMANYREQUESTS');
    }
    // Content by digest is authorized with a HEAD first (free at Docker Hub): only those came.
    assert.deepEqual(
      mirror.proxy
        .received()
        .slice(asked)
        .map((r) => r.method),
      ['HEAD', 'HEAD'],
      'no GET reached the registry during the hold',
    );
    const heldAt = reachedRegistry();
    assert.equal(
      await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'held' }),
      3,
    );
    assert.equal(
      await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'answered' }),
      1,
    );

    // HEADs are not counted by the limit, and another credential has its own allowance.
    const head = await ask('manifests/latest', 'HEAD');
    assert.equal(head.status, 200);
    const other = await ask('manifests/latest', 'GET', { authorization: 'Bearer another-account' });
    assert.equal(other.status, 429);
    assert.equal(reachedRegistry(), heldAt + 2, 'the HEAD and the other credential reached it');
    const log = await readFile(mirror.agent.process.logPath, 'utf8');
    assert.match(log, /rate-limited a request \(429\)/);
    assert.doesNotMatch(log, /another-account/, 'no credential in the log');
  });

  it('lets containerd pull once the Retry-After has passed', async () => {
    mirror.proxy.set(undefined);
    await sleep(RETRY_AFTER_S * 1000);
    await pullOnlyThroughMirror(teardown, {
      registryHost: mirror.registry.host,
      mirrorUrl: mirror.agent.url,
      ref: mirror.ref,
      digests: mirror.image.blobs.map((blob) => blob.digest),
    });
  });
});
