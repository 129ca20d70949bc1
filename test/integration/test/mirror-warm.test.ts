/**
 * The warm pull (issue 9): an image the agent has cached costs the registry one request, the
 * tag's resolution with the client's own credentials, and nothing per blob (authorization is
 * cached per repository and credential); and a cache hit, read in large reads, hands out the
 * registry's bytes exactly, whole and for ranges across those reads.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  startContainerd,
  writeMirrorHosts,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
  type RegistryRequest,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { startMirror, type MirrorFixture } from '../src/mirror.js';

/**
 * Pulls `ref` with a fresh containerd through `agent`; returns the requests the registry
 * logged during the pull and how the agent's counters moved.
 */
async function pull(
  registry: Registry,
  agent: AgentProcess,
  ref: string,
  user?: string,
): Promise<{
  registryRequests: RegistryRequest[];
  delta: (name: string, labels?: Record<string, string>) => number;
}> {
  const containerd = await startContainerd();
  try {
    await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, agent.url);
    const names = [
      ['shoal_agent_upstream_requests_total', {}],
      ['shoal_agent_upstream_requests_total', { kind: 'blob' }],
      ['shoal_agent_upstream_requests_total', { kind: 'manifest' }],
      ['shoal_agent_served_bytes_total', { from: 'cache' }],
      ['shoal_agent_cache_requests_total', { kind: 'blob', result: 'hit' }],
      ['shoal_agent_cache_requests_total', { kind: 'blob', result: 'miss' }],
      ['shoal_agent_authz_decisions_total', { result: 'allow', cache: 'miss' }],
    ] as const;
    const key = (name: string, labels: Record<string, string>): string =>
      `${name}${JSON.stringify(labels)}`;
    const before = new Map<string, number>();
    for (const [name, labels] of names) {
      before.set(key(name, labels), await agent.metric(name, labels));
    }
    const mark = (await registry.requests()).length;
    await containerd.pull(ref, user === undefined ? {} : { user });
    const registryRequests = (await registry.requests()).slice(mark);
    const after = new Map<string, number>();
    for (const [name, labels] of names) {
      after.set(key(name, labels), await agent.metric(name, labels));
    }
    return {
      registryRequests,
      delta: (name, labels = {}) => {
        const k = key(name, labels);
        const was = before.get(k);
        const now = after.get(k);
        if (was === undefined || now === undefined) {
          throw new Error(`${k} was not sampled`);
        }
        return now - was;
      },
    };
  } finally {
    await containerd.stop();
  }
}

function blobBytes(image: GeneratedImage): number {
  return image.blobs.reduce((sum, b) => sum + b.size, 0);
}

/** The registry's log lines as `METHOD uri`, for messages. */
function describeRequests(requests: readonly RegistryRequest[]): string {
  return requests.map((r) => `${r.method} ${r.uri} ${r.status}`).join('; ');
}

describe('a warm pull through the agent', () => {
  let fixture: MirrorFixture;
  let image: GeneratedImage;

  before(async () => {
    // A layer of several 1 MiB reads and a tail, one smaller than a read, and the config.
    fixture = await startMirror({
      layerSizes: [5 * MiB + 12_345, 700 * 1024],
      seed: 'mirror-warm',
      repository: 'shoal/warm',
    });
    ({ image } = fixture);
    // The cold pull fills the cache.
    const cold = await pull(fixture.registry, fixture.agent, fixture.ref);
    assert.equal(
      cold.delta('shoal_agent_cache_requests_total', { kind: 'blob', result: 'miss' }),
      image.blobs.length,
    );
  });

  after(async () => {
    await fixture.stop();
  });

  it('asks the registry only for the tag, and serves every blob byte from the cache', async () => {
    const warm = await pull(fixture.registry, fixture.agent, fixture.ref);
    assert.deepEqual(
      warm.registryRequests.map((r) => `${r.method} ${r.uri}`),
      ['HEAD /v2/shoal/warm/manifests/latest'],
      `one request, the tag's resolution: ${describeRequests(warm.registryRequests)}`,
    );
    assert.equal(warm.delta('shoal_agent_upstream_requests_total'), 1);
    assert.equal(warm.delta('shoal_agent_upstream_requests_total', { kind: 'blob' }), 0);
    assert.equal(
      warm.delta('shoal_agent_cache_requests_total', { kind: 'blob', result: 'hit' }),
      image.blobs.length,
    );
    assert.equal(
      warm.delta('shoal_agent_cache_requests_total', { kind: 'blob', result: 'miss' }),
      0,
    );
    assert.equal(
      warm.delta('shoal_agent_served_bytes_total', { from: 'cache' }),
      blobBytes(image),
      'each blob byte served once, from the cache',
    );
  });

  it('serves a cached blob whole and in ranges across its reads, byte for byte as the registry does', async () => {
    const { registry, agent } = fixture;
    const layer = image.layers.find((l) => l.size > 4 * MiB);
    assert.ok(layer !== undefined);
    const path = `/v2/shoal/warm/blobs/${layer.digest}`;
    const truth = Buffer.from(await (await fetch(`${registry.url}${path}`)).arrayBuffer());
    assert.equal(truth.length, layer.size);
    const get = async (
      range?: string,
    ): Promise<{ status: number; bytes: Buffer; length: string | null }> => {
      const response = await fetch(`${agent.url}${path}?ns=${registry.host}`, {
        headers: range === undefined ? {} : { range },
      });
      return {
        status: response.status,
        length: response.headers.get('content-length'),
        bytes: Buffer.from(await response.arrayBuffer()),
      };
    };
    const whole = await get();
    assert.equal(whole.status, 200);
    assert.equal(whole.length, String(layer.size));
    assert.ok(whole.bytes.equals(truth), 'the whole blob, byte for byte');

    // The agent reads a cache hit 1 MiB at a time.
    const read = MiB;
    const ranges: [string, number, number][] = [
      // Across the first read's end, across two reads, the last byte, a suffix over the tail.
      [`bytes=${read - 100}-${read + 99}`, read - 100, read + 100],
      [`bytes=1-${2 * read + 7}`, 1, 2 * read + 8],
      [`bytes=${layer.size - 1}-`, layer.size - 1, layer.size],
      ['bytes=-1234567', layer.size - 1_234_567, layer.size],
    ];
    for (const [header, start, end] of ranges) {
      const part = await get(header);
      assert.equal(part.status, 206, header);
      assert.equal(part.length, String(end - start), header);
      assert.ok(part.bytes.equals(truth.subarray(start, end)), `${header}: the same bytes`);
    }

    const small = image.layers.find((l) => l.size < MiB);
    assert.ok(small !== undefined);
    const response = await fetch(
      `${agent.url}/v2/shoal/warm/blobs/${small.digest}?ns=${registry.host}`,
    );
    const bytes = Buffer.from(await response.arrayBuffer());
    const expected = Buffer.from(
      await (await fetch(`${registry.url}/v2/shoal/warm/blobs/${small.digest}`)).arrayBuffer(),
    );
    assert.equal(response.status, 200);
    assert.ok(bytes.equals(expected), 'a blob smaller than one read, byte for byte');
  });
});

/** How long the protected registry's agent reuses an authorization decision, in ms. */
const AUTHZ_TTL_MS = 1500;

describe('a warm pull through the agent from an htpasswd-protected registry', () => {
  const auth = { username: 'puller', password: 'correct horse battery staple' };
  const user = `${auth.username}:${auth.password}`;
  let fixture: MirrorFixture;
  let image: GeneratedImage;

  before(async () => {
    fixture = await startMirror({
      layerSizes: [3 * MiB, 1 * MiB],
      seed: 'mirror-warm-auth',
      repository: 'private/warm',
      auth,
      // Short, so that the warm pull comes after every cached decision has expired.
      agentEnv: { SHOAL_AGENT_AUTHZ_TTL_MS: String(AUTHZ_TTL_MS) },
    });
    ({ image } = fixture);
    await pull(fixture.registry, fixture.agent, fixture.ref, user);
  });

  after(async () => {
    await fixture.stop();
  });

  it('checks the credential at the registry once per repository, not per blob, after the cached decisions expired', async () => {
    await new Promise((resolve) => setTimeout(resolve, AUTHZ_TTL_MS + 500));
    // The tag's resolution with the client's credential renews the grant and the manifest's
    // digest; the manifest served from the cache renews its blobs.
    const warm = await pull(fixture.registry, fixture.agent, fixture.ref, user);
    const other = warm.registryRequests.filter(
      (r) => !(r.method === 'HEAD' && r.uri === '/v2/private/warm/manifests/latest'),
    );
    assert.deepEqual(
      other,
      [],
      `only the tag's resolution: ${describeRequests(warm.registryRequests)}`,
    );
    assert.equal(warm.delta('shoal_agent_upstream_requests_total', { kind: 'blob' }), 0);
    assert.equal(
      warm.delta('shoal_agent_authz_decisions_total', { result: 'allow', cache: 'miss' }),
      0,
      'every allow came from the cached decision',
    );
    assert.equal(warm.delta('shoal_agent_served_bytes_total', { from: 'cache' }), blobBytes(image));
  });

  it('still refuses a client without credentials the cached blobs', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const response = await fetch(
      `${fixture.agent.url}/v2/private/warm/blobs/${layer.digest}?ns=${fixture.registry.host}`,
    );
    assert.equal(response.status, 401);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Basic realm=/);
  });
});
