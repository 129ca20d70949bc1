/**
 * A download is shared by digest alone, so two clients may read one download through two
 * registries that hold the same blob. When the swarm stalls and the origin refuses the
 * credential the download started with, the late origin read tries the other readers' — each
 * at its own registry only (a credential for one registry must never reach another), and when
 * every one is refused, each client gets its own registry's answer. Two real registries with
 * different users and realms, a fault proxy in front of the first recording which
 * credentials reached it; nats-server and a tracker, no seed server (so the swarm stalls).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  encodeMessage,
  parseDigest,
  pieceBounds,
  pieceCount,
  pieceHashes,
  pieceHashesSubject,
  pieceSizeFor,
  STREAMS,
} from '@shoal/proto';
import { ensureStreams } from '@shoal/runtime/nats';
import {
  FAST_SWARM_ENV,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startFaultProxy,
  startNats,
  startRegistry,
  startTracker,
  Teardown,
  waitFor,
  type AgentProcess,
  type Descriptor,
  type FaultProxy,
  type GeneratedImage,
  type ProxiedRequest,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { ociCode, streamDigest, type StreamOutcome } from '../src/http.js';

const one = { username: 'alice', password: 'alice-pw', realm: 'registry-one' };
const two = { username: 'bob', password: 'bob-pw', realm: 'registry-two' };

function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/** The agent's stall timeout (FAST_SWARM_ENV). */
const STALL_TIMEOUT_MS = Number(FAST_SWARM_ENV.SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS);

describe('late origin reads of a download shared across registries', () => {
  const teardown = new Teardown();
  let first: Registry;
  let second: Registry;
  let proxy: FaultProxy;
  let agent: AgentProcess;
  let dir: string;
  let js: JetStreamClient;

  /** The mirror's URL for a blob of `repository` at `registry`. */
  const blobUrl = (registry: Registry, repository: string, digest: string): string =>
    `${agent.url}/v2/${repository}/blobs/${digest}?ns=${registry.host}`;

  /** An image of one layer pushed to both registries (`one/app`; `two/app` and `two/other`). */
  const imageInBoth = async (
    seed: string,
    passwordOne: string,
    passwordTwo = two.password,
  ): Promise<GeneratedImage> => {
    const image = await generateImage(join(dir, seed), { layerSizes: [MiB], seed });
    await pushImage(image, first.host, 'one/app', {
      destCreds: `${one.username}:${passwordOne}`,
    });
    for (const repository of ['two/app', 'two/other']) {
      await pushImage(image, second.host, repository, {
        destCreds: `${two.username}:${passwordTwo}`,
      });
    }
    return image;
  };

  /**
   * Has the agent's authorizer say yes to `authorization` for the blob (a HEAD, whose yes is
   * then cached for the authorization TTL): a later GET is allowed from the cache even after
   * the credential has been revoked, as a credential expiring during a pull is.
   */
  const authorize = async (url: string, authorization: string): Promise<void> => {
    const response = await fetch(url, {
      method: 'HEAD',
      headers: { authorization },
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(response.status, 200, `HEAD ${url}`);
  };

  /** Resolves once the agent has a download in flight (waiting on the swarm). */
  const downloading = (): Promise<void> =>
    waitFor(
      'the download to wait on the swarm',
      async () => (await agent.metric('shoal_agent_downloads_in_flight')) === 1,
      { timeoutMs: 3_000, intervalMs: 50 },
    );

  /**
   * Publishes the layer's piece hashes as a seed server would (none runs here, so no piece
   * ever comes): the download knows its size at once, and its readers get their 200 headers
   * before the swarm stalls.
   */
  const publishHashes = async (image: GeneratedImage, digest: string): Promise<void> => {
    const blob = await readFile(join(image.layoutDir, 'blobs', 'sha256', parseDigest(digest).hex));
    const pieceSize = pieceSizeFor(blob.length);
    const hashes = Array.from({ length: pieceCount(blob.length, pieceSize) }, (_, index) => {
      const { start, end } = pieceBounds(index, blob.length, pieceSize);
      return createHash('sha256').update(blob.subarray(start, end)).digest('hex');
    });
    await js.publish(
      pieceHashesSubject(digest),
      encodeMessage(pieceHashes, {
        type: 'piece-hashes',
        blob: digest,
        size: blob.length,
        pieceSize,
        first: 0,
        hashes,
      }),
    );
  };

  /**
   * A reader of `digest` through the second registry's `two/other` that is authorized, joins
   * the download, and goes away 300 ms later.
   */
  const joinAndLeave = async (digest: string, authorization: string): Promise<void> => {
    const leaving = new AbortController();
    const reader = fetch(blobUrl(second, 'two/other', digest), {
      headers: { authorization },
      signal: leaving.signal,
    }).catch(() => undefined);
    await waitFor(
      'the leaving reader to be authorized',
      async () =>
        (await second.requests()).some((r) => r.uri.startsWith(`/v2/two/other/blobs/${digest}`)),
      { timeoutMs: 3_000, intervalMs: 50 },
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    leaving.abort();
    await reader;
  };

  /** The blob GETs `registry` received for `digest`, by repository. */
  const blobGetsAt = async (registry: Registry, digest: string): Promise<string[]> =>
    (await registry.requests())
      .filter((r) => r.method === 'GET' && r.uri.includes(`/blobs/${digest}`))
      .map((r) => r.uri.split('/blobs/')[0] ?? '');

  before(async () => {
    const temp = await makeTempDir('origin-sources');
    teardown.add('dir', () => temp.remove());
    dir = temp.path;
    first = await startRegistry({ auth: one });
    teardown.add('first registry', () => first.stop());
    second = await startRegistry({ auth: two });
    teardown.add('second registry', () => second.stop());
    proxy = await startFaultProxy({ upstream: first.url });
    teardown.add('proxy', () => proxy.stop());
    const nats = await startNats();
    teardown.add('nats', () => nats.stop());
    // The piece hashes' stream, which the seed server (not run here) would create.
    const nc = await connect({ servers: nats.url, timeout: 5_000 });
    teardown.add('nats connection', () => nc.drain());
    await ensureStreams(await jetstreamManager(nc, { timeout: 5_000 }), [STREAMS.pieces], 1);
    js = jetstream(nc, { timeout: 5_000 });
    const tracker = await startTracker({
      natsUrl: nats.url,
      env: await nats.clientEnv('tracker'),
    });
    teardown.add('tracker', () => tracker.stop());
    agent = await startAgent({
      registries: `${first.host}=${proxy.url},${second.host}=${second.url}`,
      defaultRegistry: first.host,
      natsUrl: nats.url,
      peerId: 'origin-sources',
      env: {
        ...FAST_SWARM_ENV,
        // A body that stops with its connection open is asked again after this (10 s by
        // default): as long as the stall timeout, as the agent's configuration advises.
        SHOAL_AGENT_UPSTREAM_IDLE_TIMEOUT_MS: String(STALL_TIMEOUT_MS),
        ...(await nats.clientEnv('origin-sources')),
      },
    });
    teardown.add('agent', () => agent.stop());
  });

  after(() => teardown.run());

  it("sends each reader's credential to its own registry only", async () => {
    const image = await imageInBoth('origin-sources-one', one.password);
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const alice = basic(one.username, one.password);
    const bob = basic(two.username, two.password);
    const viaFirst = blobUrl(first, 'one/app', layer.digest);
    await authorize(viaFirst, alice);
    // Alice's password is revoked at the first registry; her yes is still cached.
    await first.changePassword('alice-rotated');
    const a = streamDigest(viaFirst, { headers: { authorization: alice } });
    await downloading();
    // Bob joins the same download (same digest) through the second registry.
    const b = streamDigest(blobUrl(second, 'two/app', layer.digest), {
      headers: { authorization: bob },
    });
    // Then a reader through another repository joins and leaves before the swarm stalls: its
    // credential must not be used once it has gone.
    await joinAndLeave(layer.digest, bob);
    const [gotA, gotB] = await Promise.all([a, b]);
    assert.equal(gotA.status, 200, 'alice');
    assert.equal(gotA.digest, layer.digest, 'alice got the layer');
    assert.equal(gotB.status, 200, 'bob');
    assert.equal(gotB.digest, layer.digest, 'bob got the layer');

    const atFirst = proxy.received();
    assert.ok(
      atFirst.some(
        (r) => r.method === 'GET' && r.url.includes(layer.digest) && r.authorization === alice,
      ),
      "the download's own credential was tried at its registry",
    );
    assert.equal(
      atFirst.filter((r) => r.authorization === bob).length,
      0,
      "bob's credential for the second registry never reached the first",
    );
    assert.equal((await first.blobGets(layer.digest)).length, 0, 'the first refused alice');
    assert.equal((await second.blobGets(layer.digest)).length, 1, "the second served bob's read");
    assert.deepEqual(
      (await second.requests())
        .filter((r) => r.method === 'GET' && r.uri.includes('/blobs/'))
        .map((r) => r.uri.split('/blobs/')[0]),
      ['/v2/two/app'],
      'not with the source of the reader that left',
    );
    assert.equal(
      await agent.metric('shoal_agent_upstream_requests_total', { kind: 'blob', status: '401' }),
      1,
      'one refusal, then the source that works',
    );
  });

  it('gives each reader its own registry’s refusal when every credential is refused', async () => {
    const image = await imageInBoth('origin-sources-two', 'alice-rotated');
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const alice = basic(one.username, 'alice-rotated');
    const bob = basic(two.username, two.password);
    const viaFirst = blobUrl(first, 'one/app', layer.digest);
    const viaSecond = blobUrl(second, 'two/app', layer.digest);
    await authorize(viaFirst, alice);
    await authorize(viaSecond, bob);
    // Both credentials are revoked while their yes is cached.
    await first.changePassword('alice-third');
    await second.changePassword('bob-rotated');
    const refusedBefore = await agent.metric('shoal_agent_upstream_requests_total', {
      kind: 'blob',
      status: '401',
    });
    const a = fetch(viaFirst, {
      headers: { authorization: alice },
      signal: AbortSignal.timeout(60_000),
    });
    await downloading();
    const b = fetch(viaSecond, {
      headers: { authorization: bob },
      signal: AbortSignal.timeout(60_000),
    });
    const [refusedA, refusedB] = await Promise.all([a, b]);
    for (const [who, response, realm] of [
      ['alice', refusedA, one.realm],
      ['bob', refusedB, two.realm],
    ] as const) {
      const body = Buffer.from(await response.arrayBuffer());
      assert.equal(response.status, 401, `${who}: 401`);
      assert.equal(
        response.headers.get('www-authenticate'),
        `Basic realm="${realm}"`,
        `${who}: the challenge of the registry ${who} came through`,
      );
      assert.equal(ociCode(body), 'UNAUTHORIZED', `${who}: an OCI error body`);
    }
    assert.equal(
      (await agent.metric('shoal_agent_upstream_requests_total', { kind: 'blob', status: '401' })) -
        refusedBefore,
      2,
      'each credential tried once, at its own registry',
    );
    assert.equal(
      proxy.received().filter((r) => r.authorization === bob).length,
      0,
      "bob's credential never reached the first registry",
    );
  });

  it('withdraws a reader that leaves during the stall, while its read waits (size known)', async () => {
    const image = await imageInBoth('origin-sources-three', 'alice-third', 'bob-rotated');
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    await publishHashes(image, layer.digest);
    const alice = basic(one.username, 'alice-third');
    const bob = basic(two.username, 'bob-rotated');
    const viaFirst = blobUrl(first, 'one/app', layer.digest);
    await authorize(viaFirst, alice);
    // Alice's password is revoked while her yes is cached: the late read needs another source.
    await first.changePassword('alice-fourth');
    const a = streamDigest(viaFirst, { headers: { authorization: alice } });
    await downloading();
    const c = streamDigest(blobUrl(second, 'two/app', layer.digest), {
      headers: { authorization: bob },
    });
    // The newest reader (through another repository) is authorized and waits for bytes the
    // stalled swarm does not bring (the size is known: its answer is a 200 whose first bytes
    // have not come); then it goes away.
    await joinAndLeave(layer.digest, bob);
    const [gotA, gotC] = await Promise.all([a, c]);
    assert.equal(gotA.status, 200, 'alice');
    assert.equal(gotA.digest, layer.digest, 'alice got the layer');
    assert.equal(gotC.status, 200, 'the reader that stayed');
    assert.equal(gotC.digest, layer.digest, 'the reader that stayed got the layer');
    assert.deepEqual(
      await blobGetsAt(second, layer.digest),
      ['/v2/two/app'],
      'read with the source of the reader that stayed, never with the one that left',
    );
    assert.equal((await first.blobGets(layer.digest)).length, 0, 'the first refused alice');
  });

  it("reads from another reader's registry when the download's own fails", async () => {
    const image = await imageInBoth('origin-sources-four', 'alice-fourth', 'bob-rotated');
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const alice = basic(one.username, 'alice-fourth');
    const bob = basic(two.username, 'bob-rotated');
    const viaFirst = blobUrl(first, 'one/app', layer.digest);
    // The first registry answers its GETs 503 (its authorization HEADs still pass).
    proxy.set({ kind: 'status', statuses: [503], methods: ['GET'] });
    try {
      const since = proxy.received().length;
      const a = streamDigest(viaFirst, { headers: { authorization: alice } });
      await downloading();
      const b = streamDigest(blobUrl(second, 'two/app', layer.digest), {
        headers: { authorization: bob },
      });
      const [gotA, gotB] = await Promise.all([a, b]);
      assert.equal(gotB.status, 200, 'bob');
      assert.equal(gotB.digest, layer.digest, 'bob got the layer from his own registry');
      assert.equal(gotA.status, 200, 'alice, whose download it is');
      assert.equal(gotA.digest, layer.digest, 'alice got the layer too');
      assert.ok(
        proxy
          .received()
          .slice(since)
          .some((r) => r.method === 'GET' && r.url.includes(layer.digest)),
        'the first registry was asked first',
      );
      assert.deepEqual(await blobGetsAt(second, layer.digest), ['/v2/two/app']);

      // Alone, a reader of the failing registry gets that registry's own answer.
      const alone = await imageInBoth('origin-sources-five', 'alice-fourth', 'bob-rotated');
      const aloneLayer = alone.layers[0];
      assert.ok(aloneLayer !== undefined);
      const refused = await fetch(blobUrl(first, 'one/app', aloneLayer.digest), {
        headers: { authorization: alice },
        signal: AbortSignal.timeout(60_000),
      });
      const body = await refused.text();
      assert.equal(refused.status, 503, 'the registry’s 503');
      assert.equal(ociCode(body), 'UNAVAILABLE');
      assert.match(body, /fault proxy: answering 503/, 'its own body');
      assert.equal(
        (await second.blobGets(aloneLayer.digest)).length,
        0,
        'no other registry asked for it',
      );
    } finally {
      proxy.set(undefined);
    }

    // A registry that does not answer at all: the reader is asked to retry.
    const down = await imageInBoth('origin-sources-six', 'alice-fourth', 'bob-rotated');
    const downLayer = down.layers[0];
    assert.ok(downLayer !== undefined);
    const viaDown = blobUrl(first, 'one/app', downLayer.digest);
    await authorize(viaDown, alice);
    proxy.set({ kind: 'down' });
    try {
      const retry = await fetch(viaDown, {
        headers: { authorization: alice },
        signal: AbortSignal.timeout(60_000),
      });
      const body = await retry.text();
      assert.equal(retry.status, 503, 'no answer: retry');
      assert.ok(Number(retry.headers.get('retry-after')) > 0, 'with Retry-After');
      assert.equal(ociCode(body), 'UNAVAILABLE');
    } finally {
      proxy.set(undefined);
    }
  });

  /**
   * Streams a 3 MiB layer of the first registry through the agent while the first registry's
   * blob answers meet `fault`, after the swarm stalled on its piece hashes (no seed server):
   * the layer is read late from the origin, by range. Asserts the whole layer arrives; returns
   * the blob GETs that reached the registry, the resumes counted, and how long it took.
   */
  const lateReadWhileDamaged = async (
    seed: string,
    fault: { readonly how: 'cut' | 'stall'; readonly atByte: number },
  ): Promise<{ size: number; gets: ProxiedRequest[]; resumes: number; tookMs: number }> => {
    const password = `alice-${seed}`;
    await first.changePassword(password);
    const image = await generateImage(join(dir, seed), { layerSizes: [3 * MiB], seed });
    await pushImage(image, first.host, 'one/app', { destCreds: `${one.username}:${password}` });
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    await publishHashes(image, layer.digest);
    const resumes = await agent.metric('shoal_agent_origin_resumes_total');
    const stalls = await agent.metric('shoal_agent_swarm_fallbacks_total', { reason: 'stall' });
    const mark = proxy.received().length;
    proxy.set({ kind: 'damage', ...fault });
    const started = Date.now();
    try {
      const got = await streamDigest(blobUrl(first, 'one/app', layer.digest), {
        headers: { authorization: basic(one.username, password) },
      });
      assert.equal(got.status, 200);
      assert.equal(got.error, undefined, 'the response completes');
      assert.equal(got.digest, layer.digest, 'the whole layer');
    } finally {
      proxy.set(undefined);
    }
    const tookMs = Date.now() - started;
    assert.equal(
      await agent.metric('shoal_agent_swarm_fallbacks_total', { reason: 'stall' }),
      stalls + 1,
      'read late, after the swarm stalled',
    );
    return {
      size: layer.size,
      gets: proxy
        .received()
        .slice(mark)
        .filter((r) => r.method === 'GET' && r.url.includes(`/blobs/${layer.digest}`)),
      resumes: (await agent.metric('shoal_agent_origin_resumes_total')) - resumes,
      tookMs,
    };
  };

  it('resumes a late read the origin cuts, from where it stopped, within the missing range', async () => {
    const atByte = MiB + 3;
    const { size, gets, resumes } = await lateReadWhileDamaged('origin-sources-cut', {
      how: 'cut',
      atByte,
    });
    // The missing range is the whole layer; each answer breaks off `atByte` in, and the next
    // asks for the rest of the range from there.
    const starts = Array.from({ length: Math.ceil(size / atByte) }, (_, i) => i * atByte);
    assert.deepEqual(
      gets.map((r) => r.range),
      starts.map((start) => `bytes=${start}-${size - 1}`),
    );
    assert.equal(resumes, starts.length - 1);
  });

  it('asks again, from where it stopped, a late read whose transfer stops with its connection open', async () => {
    const atByte = 2 * MiB + 3;
    // The answer sends 2 MiB and then nothing, its connection left open; after the agent's body
    // idle timeout (4 s here) the rest of the range is asked for, and comes.
    const { size, gets, resumes, tookMs } = await lateReadWhileDamaged('origin-sources-stall', {
      how: 'stall',
      atByte,
    });
    assert.ok(size < 2 * atByte, `a ${size}-byte layer`);
    assert.deepEqual(
      gets.map((r) => r.range),
      [`bytes=0-${size - 1}`, `bytes=${atByte}-${size - 1}`],
      'the range, then its rest from where it stalled',
    );
    assert.equal(resumes, 1);
    // The swarm's stall timeout (4 s here), then the body's idle timeout (4 s), then the rest.
    assert.ok(tookMs >= 7_500, `answered after ${tookMs} ms: both waits were waited out`);
  });

  /**
   * A 3 MiB layer in both registries, alice's at the first (`one/app`) and bob's at the second
   * (`two/app`), with passwords of their own for this test.
   */
  const layerInBoth = async (
    seed: string,
  ): Promise<{
    image: GeneratedImage;
    layer: Descriptor;
    alice: string;
    bob: string;
  }> => {
    await first.changePassword(`alice-${seed}`);
    await second.changePassword(`bob-${seed}`);
    const image = await generateImage(join(dir, seed), { layerSizes: [3 * MiB], seed });
    await pushImage(image, first.host, 'one/app', { destCreds: `${one.username}:alice-${seed}` });
    await pushImage(image, second.host, 'two/app', { destCreds: `${two.username}:bob-${seed}` });
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    return {
      image,
      layer,
      alice: basic(one.username, `alice-${seed}`),
      bob: basic(two.username, `bob-${seed}`),
    };
  };

  /** Resolves once a resume (a GET with a Range) of `digest` reached the proxy after `mark`. */
  const resumeArrived = (mark: number, digest: string): Promise<void> =>
    waitFor(
      'the resume to reach the first registry',
      () =>
        Promise.resolve(
          proxy
            .received()
            .slice(mark)
            .some((r) => r.url.includes(`/blobs/${digest}`) && r.range !== undefined),
        ),
      { timeoutMs: 30_000, intervalMs: 20 },
    );

  /** Asserts alice's and bob's responses are 200s that brought the whole blob. */
  const bothWhole = (got: readonly [StreamOutcome, StreamOutcome], digest: string): void => {
    for (const [who, outcome] of [
      ['alice', got[0]],
      ['bob', got[1]],
    ] as const) {
      assert.equal(outcome.status, 200, who);
      assert.equal(outcome.error, undefined, `${who}: the response completes`);
      assert.equal(outcome.digest, digest, `${who} got the whole layer`);
    }
  };

  /** The blob GETs of `digest` the first registry's proxy received after `mark`. */
  const getsAtFirst = (mark: number, digest: string): ProxiedRequest[] =>
    proxy
      .received()
      .slice(mark)
      .filter((r) => r.method === 'GET' && r.url.includes(`/blobs/${digest}`));

  /**
   * Streams a 3 MiB layer held by both registries through the agent, alice through the first
   * and bob (joining the download) through the second, after the swarm stalled; the first
   * registry's answer breaks off 1 MiB + 3 bytes in, and it refuses the rest to alice's
   * credential, as to a token that expired mid-transfer. `hashes`: the seed's piece hashes
   * are `known` (the late read asks for the missing pieces by range), `none` (the blob is
   * read whole), or come `late`, while the whole read's resume waits for its refusal (held
   * 2 s). Asserts both get the whole layer,
   * the rest read with bob's credential at his registry only, once; returns what each
   * registry was asked.
   */
  const refusedResume = async (
    seed: string,
    hashes: 'known' | 'none' | 'late',
  ): Promise<{
    size: number;
    digest: string;
    atByte: number;
    alice: string;
    atFirst: (readonly [string | undefined, string | undefined])[];
    atSecond: (readonly [string, number])[];
  }> => {
    const { image, layer, alice, bob } = await layerInBoth(seed);
    if (hashes === 'known') {
      await publishHashes(image, layer.digest);
    }
    const resumes = await agent.metric('shoal_agent_origin_resumes_total');
    const refusals = await agent.metric('shoal_agent_upstream_requests_total', {
      kind: 'blob',
      status: '401',
    });
    const moves = async (reason: 'refused' | 'failed'): Promise<number> =>
      agent.metric('shoal_agent_origin_source_moves_total', { reason });
    const movesBefore = { refused: await moves('refused'), failed: await moves('failed') };
    const mark = proxy.received().length;
    const atByte = MiB + 3;
    proxy.set({
      kind: 'damage',
      how: 'cut',
      atByte,
      resumeStatus: 401,
      ...(hashes === 'late' ? { resumeDelayMs: 2_000 } : {}),
    });
    try {
      const a = streamDigest(blobUrl(first, 'one/app', layer.digest), {
        headers: { authorization: alice },
      });
      await downloading();
      // Bob reads the same download through the second registry before the swarm stalls.
      const b = streamDigest(blobUrl(second, 'two/app', layer.digest), {
        headers: { authorization: bob },
      });
      if (hashes === 'late') {
        await resumeArrived(mark, layer.digest);
        await publishHashes(image, layer.digest);
      }
      bothWhole(await Promise.all([a, b]), layer.digest);
    } finally {
      proxy.set(undefined);
    }
    const atFirst = getsAtFirst(mark, layer.digest);
    assert.equal(
      atFirst.filter((r) => r.authorization === bob).length,
      0,
      "bob's credential never reached the first registry",
    );
    assert.equal((await agent.metric('shoal_agent_origin_resumes_total')) - resumes, 1);
    assert.equal(
      (await agent.metric('shoal_agent_upstream_requests_total', { kind: 'blob', status: '401' })) -
        refusals,
      1,
      'the refused resume',
    );
    assert.equal((await moves('refused')) - movesBefore.refused, 1, "moved to bob's source once");
    assert.equal((await moves('failed')) - movesBefore.failed, 0, 'which answered with the rest');
    return {
      size: layer.size,
      digest: layer.digest,
      atByte,
      alice,
      atFirst: atFirst.map((r) => [r.range, r.authorization] as const),
      atSecond: (await second.blobGets(layer.digest)).map((r) => [r.uri, r.written] as const),
    };
  };

  it("reads the missing pieces with another reader's credential when the origin refuses to resume", async () => {
    const { size, digest, atByte, alice, atFirst, atSecond } = await refusedResume(
      'origin-sources-refused-pieces',
      'known',
    );
    assert.deepEqual(
      atFirst,
      [
        [`bytes=0-${size - 1}`, alice],
        [`bytes=${atByte}-${size - 1}`, alice],
      ],
      "the missing range with alice's credential, then its rest from the cut, refused",
    );
    // The rest of the range from the second registry, from the byte the cut stopped at (inside
    // a piece: the bytes before it in that piece are not asked for again).
    assert.notEqual(atByte % pieceSizeFor(size), 0);
    assert.deepEqual(atSecond, [[`/v2/two/app/blobs/${digest}`, size - atByte]]);
  });

  it("reads the rest of a whole-blob read with another reader's credential when the origin refuses to resume", async () => {
    // No piece hashes: the blob is read whole, and the rest from the byte the cut stopped at.
    const { size, digest, atByte, alice, atFirst, atSecond } = await refusedResume(
      'origin-sources-refused-whole',
      'none',
    );
    assert.deepEqual(
      atFirst,
      [
        [undefined, alice],
        [`bytes=${atByte}-`, alice],
      ],
      "the blob with alice's credential, then its rest from the cut, refused",
    );
    assert.deepEqual(atSecond, [[`/v2/two/app/blobs/${digest}`, size - atByte]]);
  });

  it("reads the rest of a plain mirror's fetch with another reader's credential when the origin refuses to resume", async () => {
    // An agent without a swarm: the fetch that the first client started is the whole path.
    const plain = await startAgent({
      registries: `${first.host}=${proxy.url},${second.host}=${second.url}`,
      defaultRegistry: first.host,
    });
    try {
      const { layer, alice, bob } = await layerInBoth('origin-sources-plain-refused');
      const via = (registry: Registry, repository: string): string =>
        `${plain.url}/v2/${repository}/blobs/${layer.digest}?ns=${registry.host}`;
      const mark = proxy.received().length;
      const atByte = MiB + 3;
      // Cut 1 MiB + 3 bytes in; the resume is held 2 s, then refused to alice's credential.
      proxy.set({ kind: 'damage', how: 'cut', atByte, resumeStatus: 401, resumeDelayMs: 2_000 });
      try {
        const a = streamDigest(via(first, 'one/app'), { headers: { authorization: alice } });
        await resumeArrived(mark, layer.digest);
        // Bob reads the same download through the second registry while the resume waits.
        const b = streamDigest(via(second, 'two/app'), { headers: { authorization: bob } });
        bothWhole(await Promise.all([a, b]), layer.digest);
      } finally {
        proxy.set(undefined);
      }
      const atFirst = getsAtFirst(mark, layer.digest).map((r) => [r.range, r.authorization]);
      assert.deepEqual(atFirst, [
        [undefined, alice],
        [`bytes=${atByte}-`, alice],
      ]);
      assert.deepEqual(
        (await second.blobGets(layer.digest)).map((r) => [r.uri, r.written]),
        [[`/v2/two/app/blobs/${layer.digest}`, layer.size - atByte]],
        'the rest, once, with bob’s credential at his registry',
      );
      assert.equal(await plain.metric('shoal_agent_origin_resumes_total'), 1);
      assert.equal(
        await plain.metric('shoal_agent_upstream_requests_total', { kind: 'blob', status: '401' }),
        1,
        'the refused resume',
      );
      assert.equal(
        await plain.metric('shoal_agent_origin_source_moves_total', { reason: 'refused' }),
        1,
        "moved to bob's source once",
      );
    } finally {
      await plain.stop();
    }
  });

  it('keeps a whole-blob read whole when the piece hashes come before its resume is refused', async () => {
    // The hashes come while the read's resume waits for its refusal: the bytes it appended
    // are not pieces, and the rest is read from where it stopped, not from byte 0.
    const { size, digest, atByte, alice, atFirst, atSecond } = await refusedResume(
      'origin-sources-refused-late-hashes',
      'late',
    );
    assert.deepEqual(atFirst, [
      [undefined, alice],
      [`bytes=${atByte}-`, alice],
    ]);
    assert.deepEqual(atSecond, [[`/v2/two/app/blobs/${digest}`, size - atByte]]);
  });
});
