/**
 * The image resolver against a real distribution registry: tags to digests, manifests to
 * blobs, and an image index fanned out to the wanted platforms (attestations left out).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { parseDigest } from '@shoal/proto';
import {
  loadDockerConfig,
  RegistryAuth,
  RegistryReader,
  UpstreamClient,
  type UpstreamRegistry,
} from '@shoal/registry';
import {
  generateImage,
  makeTempDir,
  MEDIA_TYPES,
  pushImage,
  startFaultProxy,
  startRegistry,
  startTokenServer,
  Teardown,
  type Descriptor,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { ImageResolver, ResolveError } from '../src/preheat/resolve.js';

const INDEX_TYPE = 'application/vnd.oci.image.index.v1+json';
const IN_TOTO_TYPE = 'application/vnd.in-toto+json';

/** One platform's image as pushed by hand: its manifest and the blobs it names. */
interface PushedManifest {
  readonly manifest: Descriptor;
  readonly blobs: readonly Descriptor[];
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Uploads a blob in one request (POST an upload, PUT its bytes with the digest). */
async function putBlob(
  registry: Registry,
  repository: string,
  mediaType: string,
  bytes: Buffer,
): Promise<Descriptor> {
  const digest = sha256(bytes);
  const started = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, {
    method: 'POST',
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(started.status, 202, await started.text());
  const location = started.headers.get('location');
  assert.ok(location !== null, 'the registry names the upload');
  const url = new URL(location, registry.url);
  url.searchParams.set('digest', digest);
  const put = await fetch(url, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: bytes,
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(put.status, 201, await put.text());
  return { mediaType, digest, size: bytes.length };
}

/** PUTs a manifest or index under `reference` (a tag, or its own digest). */
async function putManifest(
  registry: Registry,
  repository: string,
  mediaType: string,
  body: unknown,
  reference?: string,
): Promise<Descriptor> {
  const bytes = Buffer.from(JSON.stringify(body));
  const digest = sha256(bytes);
  const response = await fetch(
    `${registry.url}/v2/${repository}/manifests/${reference ?? digest}`,
    {
      method: 'PUT',
      headers: { 'content-type': mediaType },
      body: bytes,
      signal: AbortSignal.timeout(10_000),
    },
  );
  assert.equal(response.status, 201, await response.text());
  assert.equal(response.headers.get('docker-content-digest'), digest);
  return { mediaType, digest, size: bytes.length };
}

/** An image manifest with a config and one layer of random bytes. */
async function pushPlatform(
  registry: Registry,
  repository: string,
  platform: { os: string; architecture: string; variant?: string },
  layerType: string = MEDIA_TYPES.layer,
): Promise<PushedManifest> {
  const layer = await putBlob(registry, repository, layerType, randomBytes(4096));
  const config = await putBlob(
    registry,
    repository,
    MEDIA_TYPES.config,
    Buffer.from(JSON.stringify({ ...platform, rootfs: { type: 'layers', diff_ids: [] } })),
  );
  const manifest = await putManifest(registry, repository, MEDIA_TYPES.manifest, {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config,
    layers: [layer],
  });
  return { manifest, blobs: [config, layer] };
}

const blobsOf = (...images: readonly { blobs: readonly Descriptor[] }[]) =>
  images.flatMap((image) => image.blobs.map(({ digest, size }) => ({ digest, size })));

describe('image resolver', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let upstream: UpstreamClient;
  let resolver: ImageResolver;
  let configured: UpstreamRegistry;
  let single: GeneratedImage;
  let amd64: PushedManifest;
  let arm64: PushedManifest;
  let attestation: PushedManifest;
  let index: Descriptor;

  before(async () => {
    registry = await startRegistry({ foreignLayerUrls: true });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('resolve-images');
    teardown.add('images', () => dir.remove());

    upstream = new UpstreamClient({ connectMs: 5_000, headersMs: 10_000, idleMs: 10_000 });
    teardown.add('upstream client', () => upstream.close());
    configured = { host: registry.host, url: new URL(registry.url) };
    resolver = new ImageResolver(
      new RegistryReader(upstream, new RegistryAuth(await loadDockerConfig(undefined), upstream)),
      { registries: [configured], maxManifestBytes: 4 * 1024 * 1024, timeoutMs: 10_000 },
    );

    single = await generateImage(join(dir.path, 'single'), {
      layerSizes: [64 * 1024, 16 * 1024],
      seed: 'resolve-single',
      tag: 'v1',
    });
    await pushImage(single, registry.host, 'team/single');

    // A multi-platform image as BuildKit pushes one: two platforms and an attestation
    // manifest (platform unknown/unknown) describing the amd64 image.
    const repository = 'team/multi';
    amd64 = await pushPlatform(registry, repository, { os: 'linux', architecture: 'amd64' });
    arm64 = await pushPlatform(registry, repository, {
      os: 'linux',
      architecture: 'arm64',
      variant: 'v8',
    });
    attestation = await pushPlatform(
      registry,
      repository,
      { os: 'unknown', architecture: 'unknown' },
      IN_TOTO_TYPE,
    );
    index = await putManifest(
      registry,
      repository,
      INDEX_TYPE,
      {
        schemaVersion: 2,
        mediaType: INDEX_TYPE,
        manifests: [
          { ...amd64.manifest, platform: { os: 'linux', architecture: 'amd64' } },
          { ...arm64.manifest, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
          {
            ...attestation.manifest,
            platform: { os: 'unknown', architecture: 'unknown' },
            annotations: {
              'vnd.docker.reference.type': 'attestation-manifest',
              'vnd.docker.reference.digest': amd64.manifest.digest,
            },
          },
        ],
      },
      'v2',
    );
  });

  after(() => teardown.run());

  it('finds a configured registry by its name or its URL’s host, and no other', () => {
    assert.equal(resolver.registryFor(registry.host), configured);
    assert.equal(resolver.registryFor(new URL(registry.url).host), configured);
    assert.equal(resolver.registryFor('other.example.com'), undefined);
  });

  it('reads a tag’s digest and a single manifest’s config and layers', async () => {
    const { reference, registry: upstreamRegistry } = resolver.parse(
      `${registry.host}/team/single:v1`,
    );
    assert.equal(upstreamRegistry, configured);
    const digest = await resolver.currentDigest(upstreamRegistry, reference);
    assert.equal(digest.toString(), single.manifest.digest);

    const image = await resolver.resolve(upstreamRegistry, 'team/single', digest, []);
    assert.equal(image.registry, configured);
    assert.equal(image.repository, 'team/single');
    assert.equal(image.digest, digest);
    assert.deepEqual(image.manifests, [single.manifest.digest]);
    assert.deepEqual(image.blobs, blobsOf(single));
  });

  it('leaves out non-distributable layers (foreign, with urls): the registry does not hold them', async () => {
    // As Windows base images push them: the layer is fetched from its `urls`, never from the
    // registry, so a preheat that asked the seed server for it would fail.
    const repository = 'team/foreign';
    const dockerManifest = 'application/vnd.docker.distribution.manifest.v2+json';
    const local = await putBlob(
      registry,
      repository,
      'application/vnd.docker.image.rootfs.diff.tar.gzip',
      randomBytes(2048),
    );
    const config = await putBlob(
      registry,
      repository,
      'application/vnd.docker.container.image.v1+json',
      Buffer.from(JSON.stringify({ os: 'windows', architecture: 'amd64' })),
    );
    const foreign = {
      mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
      digest: sha256(randomBytes(64)),
      size: 1234567,
      urls: ['https://foreign.example.com/layers/base.tar.gz'],
    };
    const manifest = await putManifest(registry, repository, dockerManifest, {
      schemaVersion: 2,
      mediaType: dockerManifest,
      config,
      layers: [foreign, local],
    });
    const image = await resolver.resolve(configured, repository, parseDigest(manifest.digest), []);
    assert.deepEqual(image.blobs, blobsOf({ blobs: [config, local] }));
  });

  it('refuses a Docker schema 1 manifest (BAD_MANIFEST) instead of warming nothing', async () => {
    // Distribution no longer accepts schema 1 pushes: a scripted registry serves one, as an
    // old registry still holding such an image does.
    const schema1 = Buffer.from(
      JSON.stringify({
        schemaVersion: 1,
        name: 'team/old',
        tag: 'v1',
        architecture: 'amd64',
        fsLayers: [{ blobSum: sha256(Buffer.from('layer')) }],
        history: [{ v1Compatibility: '{}' }],
      }),
    );
    const old = createServer((_request, response) => {
      response.writeHead(200, {
        'content-type': 'application/vnd.docker.distribution.manifest.v1+prettyjws',
        'content-length': schema1.length,
        'docker-content-digest': sha256(schema1),
      });
      response.end(schema1);
    });
    await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', resolve));
    teardown.add('schema 1 registry', () => new Promise((resolve) => old.close(() => resolve())));
    const host = `127.0.0.1:${(old.address() as AddressInfo).port}`;
    const oldRegistry = { host, url: new URL(`http://${host}`) };
    const oldResolver = new ImageResolver(
      new RegistryReader(upstream, new RegistryAuth(await loadDockerConfig(undefined), upstream)),
      { registries: [oldRegistry], maxManifestBytes: 4 * 1024 * 1024, timeoutMs: 10_000 },
    );
    await assert.rejects(
      oldResolver.resolve(oldRegistry, 'team/old', parseDigest(sha256(schema1)), []),
      (error: Error & { code?: string }) => {
        assert.equal(error.code, 'BAD_MANIFEST');
        assert.match(error.message, /Docker schema 1/);
        return true;
      },
    );
  });

  it('takes the digest of a reference by digest as it is, without asking the registry', async () => {
    const { reference, registry: upstreamRegistry } = resolver.parse(
      `${registry.host}/team/absent@${single.manifest.digest}`,
    );
    const digest = await resolver.currentDigest(upstreamRegistry, reference);
    assert.equal(digest.toString(), single.manifest.digest);
  });

  it('fans an index out to every real platform, leaving attestations out', async () => {
    const { reference } = resolver.parse(`${registry.host}/team/multi:v2`);
    const digest = await resolver.currentDigest(configured, reference);
    assert.equal(digest.toString(), index.digest);

    const image = await resolver.resolve(configured, 'team/multi', digest, []);
    assert.deepEqual(image.manifests, [amd64.manifest.digest, arm64.manifest.digest]);
    assert.deepEqual(image.blobs, blobsOf(amd64, arm64));
    const attestationBlobs = new Set(attestation.blobs.map((b) => b.digest));
    assert.ok(image.blobs.every((b) => !attestationBlobs.has(b.digest)));
  });

  it('resolves a tag and fans an index out when the registry sends neither Docker-Content-Digest nor Content-Type', async () => {
    // Older Quay, some proxies and repository managers: the HEAD by tag says no digest (the
    // manifest is read and hashed) and the index is known by its `manifests`, not its type.
    const proxy = await startFaultProxy({ upstream: registry.url });
    try {
      proxy.set({ kind: 'drop-headers', names: ['docker-content-digest', 'content-type'] });
      const bare: UpstreamRegistry = { host: registry.host, url: new URL(proxy.url) };
      const { reference } = resolver.parse(`${registry.host}/team/multi:v2`);
      const digest = await resolver.currentDigest(bare, reference);
      assert.equal(digest.toString(), index.digest);
      assert.deepEqual(
        proxy
          .received()
          .filter((r) => r.url.endsWith('/manifests/v2'))
          .map((r) => r.method),
        ['HEAD', 'GET'],
      );
      const image = await resolver.resolve(bare, 'team/multi', digest, []);
      assert.deepEqual(image.manifests, [amd64.manifest.digest, arm64.manifest.digest]);
      assert.deepEqual(image.blobs, blobsOf(amd64, arm64));
    } finally {
      await proxy.stop();
    }
  });

  it('fans an index out to the wanted platforms only', async () => {
    const digest = parseDigest(index.digest);
    const arm = await resolver.resolve(configured, 'team/multi', digest, ['linux/arm64']);
    assert.deepEqual(arm.manifests, [arm64.manifest.digest]);
    assert.deepEqual(arm.blobs, blobsOf(arm64));

    const both = await resolver.resolve(configured, 'team/multi', digest, [
      'linux/arm64/v8',
      'linux/amd64',
    ]);
    assert.deepEqual(both.manifests, [amd64.manifest.digest, arm64.manifest.digest]);

    await assert.rejects(
      resolver.resolve(configured, 'team/multi', digest, ['linux/s390x']),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'NOT_FOUND' &&
        error.status === 404 &&
        /has no manifest for linux\/s390x/.test(error.message),
    );
  });

  it('reports a missing tag or manifest as NOT_FOUND (404)', async () => {
    const { reference } = resolver.parse(`${registry.host}/team/single:no-such-tag`);
    await assert.rejects(
      resolver.currentDigest(configured, reference),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'NOT_FOUND' &&
        error.status === 404 &&
        error.message === 'team/single:no-such-tag does not exist',
    );
    const { reference: absent } = resolver.parse(`${registry.host}/team/never-pushed:v1`);
    await assert.rejects(resolver.currentDigest(configured, absent), {
      name: 'ResolveError',
      code: 'NOT_FOUND',
      status: 404,
    });
    const unknownDigest = parseDigest(`sha256:${'0'.repeat(64)}`);
    await assert.rejects(resolver.resolve(configured, 'team/single', unknownDigest, []), {
      name: 'ResolveError',
      code: 'NOT_FOUND',
      status: 404,
    });
  });

  it('refuses a registry that is not configured (UNKNOWN_REGISTRY, 400)', () => {
    assert.throws(
      () => resolver.parse('other.example.com/team/app:v1'),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'UNKNOWN_REGISTRY' &&
        error.status === 400 &&
        /other\.example\.com is not in SHOAL_WATCHER_REGISTRIES/.test(error.message),
    );
  });

  it('refuses a reference that does not parse (400)', () => {
    assert.throws(() => resolver.parse(`${registry.host}/Team/UPPER:v1`), {
      name: 'ResolveError',
      status: 400,
    });
  });

  it('refuses a manifest whose bytes do not match its digest (BAD_MANIFEST)', async () => {
    const corrupt = await pushPlatform(registry, 'team/corrupt', {
      os: 'linux',
      architecture: 'amd64',
    });
    // The registry keeps manifests as blobs: replace the stored bytes with the same manifest,
    // indented, so the registry still serves valid JSON under a digest it no longer has.
    const hex = corrupt.manifest.digest.slice('sha256:'.length);
    const stored = join(
      registry.storageDir,
      'docker/registry/v2/blobs/sha256',
      hex.slice(0, 2),
      hex,
      'data',
    );
    await writeFile(stored, JSON.stringify(JSON.parse(await readFile(stored, 'utf8')), null, 2));
    await assert.rejects(
      resolver.resolve(configured, 'team/corrupt', parseDigest(corrupt.manifest.digest), []),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'BAD_MANIFEST' &&
        error.status === 502 &&
        /does not match its digest/.test(error.message),
    );
  });
});

/**
 * For tests of a private registry: a temporary directory, an upstream client, the registry as
 * configured, and a one-layer image tagged `v1` pushed to `repository` with `destCreds`; all
 * torn down by `teardown`.
 */
async function pushedImage(
  teardown: Teardown,
  registry: Registry,
  seed: string,
  repository: string,
  destCreds: string,
): Promise<{
  dir: string;
  upstream: UpstreamClient;
  configured: UpstreamRegistry;
  image: GeneratedImage;
}> {
  const temp = await makeTempDir(seed);
  teardown.add('dir', () => temp.remove());
  const upstream = new UpstreamClient({ connectMs: 5_000, headersMs: 10_000, idleMs: 10_000 });
  teardown.add('upstream client', () => upstream.close());
  const image = await generateImage(join(temp.path, 'image'), {
    layerSizes: [16 * 1024],
    seed,
    tag: 'v1',
  });
  await pushImage(image, registry.host, repository, { destCreds });
  const configured = { host: registry.host, url: new URL(registry.url) };
  return { dir: temp.path, upstream, configured, image };
}

describe('the image resolver and a private registry', () => {
  const teardown = new Teardown();
  const auth = { username: 'watcher', password: 'watcher-pw' };
  let registry: Registry;
  let upstream: UpstreamClient;
  let image: GeneratedImage;
  let configured: UpstreamRegistry;
  let dir: string;

  /** A resolver with `credentials` (a docker config file) or none; its refusals counted. */
  const resolverWith = async (
    credentials: string | undefined,
  ): Promise<{ resolver: ImageResolver; refusals: string[] }> => {
    const refusals: string[] = [];
    const resolver = new ImageResolver(
      new RegistryReader(upstream, new RegistryAuth(await loadDockerConfig(credentials), upstream)),
      {
        registries: [configured],
        maxManifestBytes: 4 * 1024 * 1024,
        timeoutMs: 10_000,
        onRefused: (host, status) => refusals.push(`${host} ${status}`),
      },
    );
    return { resolver, refusals };
  };

  before(async () => {
    registry = await startRegistry({ auth });
    teardown.add('registry', () => registry.stop());
    ({ dir, upstream, configured, image } = await pushedImage(
      teardown,
      registry,
      'resolve-private',
      'team/private',
      `${auth.username}:${auth.password}`,
    ));
  });

  after(() => teardown.run());

  it('fails at once, naming the setting, when the registry refuses the watcher', async () => {
    const { resolver, refusals } = await resolverWith(undefined);
    const refused = (error: unknown): boolean =>
      error instanceof ResolveError &&
      error.code === 'UNAUTHORIZED' &&
      error.status === 502 &&
      error.message.includes('(401)') &&
      error.message.includes(`credentials for ${registry.host} in SHOAL_WATCHER_DOCKER_CONFIG`);
    const { reference } = resolver.parse(`${registry.host}/team/private:v1`);
    await assert.rejects(resolver.currentDigest(configured, reference), refused, 'the tag');
    await assert.rejects(
      resolver.resolve(configured, 'team/private', parseDigest(image.manifest.digest), []),
      refused,
      'the manifest by digest',
    );
    assert.deepEqual(refusals, [`${registry.host} 401`, `${registry.host} 401`]);
  });

  it('reads the private image with the credentials of a docker config', async () => {
    const configPath = join(dir, 'config.json');
    const token = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    await writeFile(configPath, JSON.stringify({ auths: { [registry.host]: { auth: token } } }));
    const { resolver, refusals } = await resolverWith(configPath);
    const { reference } = resolver.parse(`${registry.host}/team/private:v1`);
    const digest = await resolver.currentDigest(configured, reference);
    assert.equal(digest.toString(), image.manifest.digest);
    const resolved = await resolver.resolve(configured, 'team/private', digest, []);
    assert.deepEqual(
      resolved.blobs.map((b) => b.digest).sort(),
      image.blobs.map((b) => b.digest).sort(),
    );
    assert.deepEqual(refusals, []);
  });
});

describe('the image resolver and a registry whose token realm is elsewhere', () => {
  const teardown = new Teardown();
  const repository = 'team/tokened';
  const password = 'watcher-token-pw';
  let registry: Registry;
  /** In front of the token realm: a realm that fails or is down on demand. */
  let realm: FaultProxy;
  let upstream: UpstreamClient;
  let configured: UpstreamRegistry;
  let image: GeneratedImage;
  let dir: string;

  /**
   * A resolver with the watcher's credentials (`secret` as the password) and `trustedRealms`;
   * the advice of each refusal it reports.
   */
  const resolverWith = async (
    secret: string,
    trustedRealms: readonly string[],
  ): Promise<{ resolver: ImageResolver; advice: string[] }> => {
    const configPath = join(dir, `config-${secret}.json`);
    const auth = Buffer.from(`watcher:${secret}`).toString('base64');
    await writeFile(configPath, JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const advice: string[] = [];
    const credentials = await loadDockerConfig(configPath);
    const resolver = new ImageResolver(
      new RegistryReader(upstream, new RegistryAuth(credentials, upstream, { trustedRealms })),
      {
        registries: [configured],
        maxManifestBytes: 4 * 1024 * 1024,
        timeoutMs: 10_000,
        onRefused: (_host, _status, text) => advice.push(text),
      },
    );
    return { resolver, advice };
  };

  before(async () => {
    const tokens = await startTokenServer({
      watcher: { password, pull: [repository], push: [repository] },
    });
    teardown.add('token server', () => tokens.stop());
    realm = await startFaultProxy({ upstream: new URL(tokens.realm).origin });
    teardown.add('realm proxy', () => realm.stop());
    // A realm over plain HTTP: not one the credentials go to unless the operator lists it.
    registry = await startRegistry({ tokenAuth: { ...tokens, realm: `${realm.url}/token` } });
    teardown.add('registry', () => registry.stop());
    ({ dir, upstream, configured, image } = await pushedImage(
      teardown,
      registry,
      'resolve-realm',
      repository,
      `watcher:${password}`,
    ));
  });

  after(() => teardown.run());

  const reference = (resolver: ImageResolver): Parameters<ImageResolver['currentDigest']>[1] =>
    resolver.parse(`${registry.host}/${repository}:v1`).reference;

  it('reads the image when the realm is listed as trusted', async () => {
    const { resolver, advice } = await resolverWith(password, [realm.url]);
    const digest = await resolver.currentDigest(configured, reference(resolver));
    assert.equal(digest.toString(), image.manifest.digest);
    assert.deepEqual(advice, []);
  });

  it('names SHOAL_WATCHER_TRUSTED_REALMS when the realm may not have the credentials', async () => {
    const { resolver, advice } = await resolverWith(password, []);
    await assert.rejects(
      resolver.currentDigest(configured, reference(resolver)),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'UNAUTHORIZED' &&
        error.message.includes(`token realm ${realm.url} is not HTTPS on ${registry.host}`) &&
        error.message.includes('list it in SHOAL_WATCHER_TRUSTED_REALMS') &&
        !error.message.includes('give it credentials'),
    );
    assert.equal(advice.length, 1);
  });

  it('says the credentials were refused when the realm refuses the password', async () => {
    const { resolver } = await resolverWith('not-the-password', [realm.url]);
    await assert.rejects(
      resolver.currentDigest(configured, reference(resolver)),
      (error: unknown) =>
        error instanceof ResolveError &&
        error.code === 'UNAUTHORIZED' &&
        error.message.includes(
          `the credentials for ${registry.host} in SHOAL_WATCHER_DOCKER_CONFIG were refused`,
        ),
    );
  });

  it('fails as the registry failing (retried) when the realm fails or is down', async () => {
    for (const [fault, said] of [
      [{ kind: 'status', statuses: [503] }, 'answered 503'],
      [{ kind: 'status', statuses: [429] }, 'answered 429'],
      [{ kind: 'down' }, 'did not answer'],
    ] as const) {
      realm.set(fault);
      try {
        const { resolver, advice } = await resolverWith(password, [realm.url]);
        await assert.rejects(
          resolver.currentDigest(configured, reference(resolver)),
          (error: unknown) =>
            error instanceof ResolveError &&
            error.code === 'REGISTRY_ANSWER' &&
            error.message.includes(`token realm ${realm.url} ${said}`),
          said,
        );
        await assert.rejects(
          resolver.resolve(configured, repository, parseDigest(image.manifest.digest), []),
          (error: unknown) => error instanceof ResolveError && error.code === 'REGISTRY_ANSWER',
          `${said}: the manifest by digest`,
        );
        assert.deepEqual(advice, [], `${said}: not counted as a refusal`);
      } finally {
        realm.set(undefined);
      }
    }
  });
});
