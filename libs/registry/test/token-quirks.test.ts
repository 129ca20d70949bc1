/**
 * Token auth as real registries' realms give it, against the real registry (bearer tokens from
 * the test kit's token server, on another origin than the registry) behind the fault proxy: a
 * realm that gzips its answers unasked, and a token that expires (or is revoked) mid-pull.
 * The seed server reads blobs with `BlobReader`, the watcher manifests with `RegistryReader`;
 * both answer a 401 by asking the realm once more, and a second 401 is the answer.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { parseDigest } from '@shoal/proto';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  startTokenServer,
  Teardown,
  type FaultProxy,
  type GeneratedImage,
  type TokenServer,
} from '@shoal/testkit';

import {
  BlobReader,
  RegistryAuth,
  RegistryReader,
  UpstreamClient,
  type OpenedBlob,
  type UpstreamRegistry,
} from '../src/index.js';

const timeouts = { connectMs: 5000, headersMs: 5000, idleMs: 5000 };
const repository = 'team/app';
const users = { seeder: { password: 'seed-pass', pull: ['*'], push: ['*'] } };
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

async function digestOf(opened: OpenedBlob): Promise<string> {
  const hash = createHash('sha256');
  for await (const block of opened.blocks) {
    hash.update(block);
  }
  return `sha256:${hash.digest('hex')}`;
}

describe('token realms and tokens as registries give them', () => {
  const teardown = new Teardown();
  let tokens: TokenServer;
  let proxy: FaultProxy;
  let image: GeneratedImage;
  let upstream: UpstreamRegistry;
  let auth: RegistryAuth;
  let blobs: BlobReader;
  let reader: RegistryReader;

  before(async () => {
    tokens = await startTokenServer(users, { gzip: true });
    teardown.add('token server', () => tokens.stop());
    const registry = await startRegistry({ tokenAuth: tokens });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('token-quirks');
    teardown.add('image', () => dir.remove());
    image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [300_000, 200_000, 100_000],
      seed: 'token-quirks',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `seeder:${users.seeder.password}`,
    });
    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('fault proxy', () => proxy.stop());
    const proxied = new URL(proxy.url);
    upstream = { host: proxied.host, url: proxied };
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('upstream client', () => client.close());
    auth = new RegistryAuth(
      new Map([[upstream.host, { username: 'seeder', password: users.seeder.password }]]),
      client,
      // The realm is on another origin than the registry, as GitLab's: listed by the operator.
      { trustedRealms: [new URL(tokens.realm).origin] },
    );
    blobs = new BlobReader(auth, { timeouts, userAgent: 'shoal-test' });
    teardown.add('blob reader', () => {
      blobs.close();
      return Promise.resolve();
    });
    reader = new RegistryReader(client, auth);
  });
  after(() => teardown.run());

  const layer = (index: number): string => {
    const found = image.layers[index];
    assert.ok(found !== undefined);
    return found.digest;
  };
  const openLayer = (index: number): Promise<OpenedBlob> =>
    blobs.open(upstream, repository, parseDigest(layer(index)), AbortSignal.timeout(30_000));
  /** Requests for `digest` that reached the registry through the proxy. */
  const askedFor = (digest: string): number =>
    proxy.received().filter((r) => r.url.endsWith(digest)).length;

  it('takes a token from a realm that gzips its answer unasked', async () => {
    // Before: JSON.parse of the gzip bytes, "answered 200 without a token", every read failed.
    const pushed = tokens.requests.length;
    const answer = await reader.fetchManifest(
      upstream,
      repository,
      'latest',
      [MANIFEST],
      AbortSignal.timeout(30_000),
    );
    assert.equal(answer.status, 200);
    const bytes: Buffer[] = [];
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      bytes.push(chunk);
    }
    const digest = `sha256:${createHash('sha256').update(Buffer.concat(bytes)).digest('hex')}`;
    assert.equal(digest, image.manifest.digest);
    assert.equal(tokens.requests.length, pushed + 1);
    assert.equal(tokens.requests[pushed]?.user, 'seeder');
  });

  it('asks the realm again once when a token expires mid-pull, and the pull goes on', async () => {
    const first = await openLayer(0);
    assert.equal(first.status, 200);
    assert.equal(await digestOf(first), layer(0));
    const before = tokens.requests.length;

    // Every token handed out so far is now refused by the registry with its own challenge.
    proxy.set({ kind: 'expire-tokens' });
    const second = await openLayer(1);
    assert.equal(second.status, 200);
    assert.equal(await digestOf(second), layer(1));
    assert.equal(tokens.requests.length, before + 1, 'one fresh token');
    assert.equal(askedFor(layer(1)), 2, 'the expired token, then the fresh one');

    // The fresh token serves later reads without asking the realm again.
    const third = await openLayer(2);
    assert.equal(third.status, 200);
    assert.equal(await digestOf(third), layer(2));
    assert.equal(tokens.requests.length, before + 1);
    assert.equal(askedFor(layer(2)), 1);
  });

  it('fails clearly when the fresh token is refused too: one retry, no loop', async () => {
    proxy.set({ kind: 'expire-tokens', every: true });
    try {
      const tokensBefore = tokens.requests.length;
      const askedBefore = askedFor(layer(0));
      const refused = await openLayer(0);
      assert.equal(refused.status, 401);
      assert.match(refused.answer.toString('utf8'), /UNAUTHORIZED/);
      assert.equal(tokens.requests.length, tokensBefore + 1, 'the realm asked once');
      assert.equal(askedFor(layer(0)), askedBefore + 2, 'the registry asked twice');
      assert.deepEqual(auth.refusal(upstream, refused.challenge), { cause: 'credentials-refused' });

      const manifest = await reader.fetchManifest(
        upstream,
        repository,
        'latest',
        [MANIFEST],
        AbortSignal.timeout(30_000),
      );
      manifest.body.resume();
      assert.equal(manifest.status, 401);
      assert.equal(tokens.requests.length, tokensBefore + 2);
    } finally {
      proxy.set(undefined);
    }
  });
});
