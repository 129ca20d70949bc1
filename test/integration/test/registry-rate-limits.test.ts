/**
 * A registry's pull limit (Docker Hub answers manifest GETs 429, with or without Retry-After; HEADs and
 * blobs stay free): the fault proxy answers manifest GETs 429 in front of a real registry. The
 * agent passes the first 429 on with its Retry-After and then honours it: until then manifest
 * GETs with the same credential are answered 429 by the agent with the time left, without
 * reaching the registry; HEADs, other credentials, blob GETs and the `/v2/` ping still go
 * through; after it, containerd pulls. A 429 without Retry-After is held for a backoff (1 s,
 * doubling while the limit stays on) rather than every request being sent on.
 */
import { createHash } from 'node:crypto';
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

describe('a registry rate limit (429, with or without Retry-After)', () => {
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

  it('honours Retry-After: the same kind of request is answered by the agent until it has passed', async () => {
    mirror.proxy.set({
      kind: 'status',
      statuses: [429],
      retryAfterS: RETRY_AFTER_S,
      methods: ['GET'],
      paths: /\/manifests\//,
    });
    const first = await ask('manifests/latest');
    assert.equal(first.status, 429);
    assert.equal(first.retryAfter, String(RETRY_AFTER_S));
    assert.equal(ociCode(first.body), 'TOOMANYREQUESTS');
    const asked = reachedRegistry();

    // The same credential (none), GETs of manifests by tag and by digest: answered by the agent.
    for (const path of ['manifests/latest', `manifests/${mirror.image.manifest.digest}`]) {
      const again = await ask(path);
      assert.equal(again.status, 429, path);
      const left = Number(again.retryAfter);
      assert.ok(left >= 1 && left <= RETRY_AFTER_S, `Retry-After ${String(again.retryAfter)}`);
      assert.equal(ociCode(again.body), 'TOOMANYREQUESTS');
    }
    // Content by digest is authorized with a HEAD first (free at Docker Hub): only that came.
    assert.deepEqual(
      mirror.proxy
        .received()
        .slice(asked)
        .map((r) => r.method),
      ['HEAD'],
      'no manifest GET reached the registry during the hold',
    );
    assert.equal(
      await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'held' }),
      2,
    );
    assert.equal(
      await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'answered' }),
      1,
    );

    // A blob is another kind (Docker Hub counts manifest GETs only): the registry serves it.
    const layer = mirror.image.layers[0];
    assert.ok(layer !== undefined);
    const heldAt = reachedRegistry();
    const blob = await ask(`blobs/${layer.digest}`);
    assert.equal(blob.status, 200);
    assert.equal(`sha256:${createHash('sha256').update(blob.body).digest('hex')}`, layer.digest);
    assert.ok(
      mirror.proxy
        .received()
        .slice(heldAt)
        .some((r) => r.method === 'GET' && r.url.includes(`/blobs/${layer.digest}`)),
      'the blob GET reached the registry',
    );

    // The API check is never held: a held /v2/ would answer without the registry's challenge.
    const pingAt = reachedRegistry();
    const ping = await fetch(`${mirror.agent.url}/v2/?ns=${mirror.registry.host}`, {
      signal: AbortSignal.timeout(30_000),
    });
    await ping.arrayBuffer();
    assert.equal(ping.status, 200);
    assert.deepEqual(
      mirror.proxy
        .received()
        .slice(pingAt)
        .map((r) => `${r.method} ${r.url.split('?')[0] ?? ''}`),
      ['GET /v2/'],
      'the ping reached the registry',
    );

    // HEADs are not counted by the limit, and another credential has its own allowance.
    const otherAt = reachedRegistry();
    const head = await ask('manifests/latest', 'HEAD');
    assert.equal(head.status, 200);
    const other = await ask('manifests/latest', 'GET', { authorization: 'Bearer another-account' });
    assert.equal(other.status, 429);
    assert.equal(reachedRegistry(), otherAt + 2, 'the HEAD and the other credential reached it');
    assert.equal(
      await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'held' }),
      2,
      'nothing but the manifest GETs was held',
    );
    const log = await readFile(mirror.agent.process.logPath, 'utf8');
    assert.match(log, /rate-limited a request \(429\)/);
    assert.doesNotMatch(log, /another-account/, 'no credential in the log');
  });

  it('backs off a 429 without Retry-After instead of sending every request on', async () => {
    // Docker Hub's pull limit often answers without Retry-After; ECR and GCR throttle so too.
    mirror.proxy.set({
      kind: 'status',
      statuses: [429],
      retryAfterS: null,
      methods: ['GET'],
      paths: /\/manifests\//,
    });
    // Its own credential: the hold of the case before (anonymous) plays no part.
    const account = { authorization: 'Bearer no-retry-after-account' };
    const heldBefore = await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', {
      outcome: 'held',
    });
    const asked = reachedRegistry();
    const started = Date.now();
    const first = await ask('manifests/latest', 'GET', account);
    assert.equal(first.status, 429);
    assert.equal(first.retryAfter, null, "the registry's own answer, passed on");
    // Twenty more over about 3 s, as clients retrying would send them.
    const statuses: number[] = [];
    const retryAfters: string[] = [];
    for (let i = 0; i < 20; i += 1) {
      await sleep(150);
      const again = await ask('manifests/latest', 'GET', account);
      statuses.push(again.status);
      if (again.retryAfter !== null) {
        retryAfters.push(again.retryAfter);
      }
      assert.equal(ociCode(again.body), 'TOOMANYREQUESTS');
    }
    assert.ok(
      statuses.every((s) => s === 429),
      statuses.join(),
    );
    const elapsedMs = Date.now() - started;
    const reached = reachedRegistry() - asked;
    // Holds of 1, 2, 4, 8 ... s: one GET reaches the registry when each ends (about 3 of the
    // 21 in the 3 s they take; a slower machine's run lasts longer and lets a few more through).
    let mostReached = 1;
    for (let endsAtMs = 1000, holdMs = 1000; endsAtMs <= elapsedMs;) {
      mostReached += 1;
      holdMs = Math.min(holdMs * 2, 60_000);
      endsAtMs += holdMs;
    }
    assert.ok(
      reached >= 2 && reached <= mostReached,
      `${reached} of 21 reached the registry in ${elapsedMs} ms (at most ${mostReached})`,
    );
    const held =
      (await mirror.agent.metric('shoal_agent_upstream_rate_limited_total', { outcome: 'held' })) -
      heldBefore;
    assert.equal(held, 21 - reached, 'every other one was answered by the agent');
    // The held answers tell the client how long: whole seconds, within the step it met.
    assert.equal(retryAfters.length, held);
    for (const value of retryAfters) {
      assert.ok(Number(value) >= 1 && Number(value) <= 60, value);
    }
    assert.ok(retryAfters.includes('1'), 'the first step, 1 s');
    mirror.proxy.set(undefined);
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
