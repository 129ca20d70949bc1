import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';

import { digestOf, type Digest } from '@shoal/proto';
import type { UpstreamAnswer, UpstreamRegistry } from '@shoal/registry';

import {
  Authorizer,
  credentialFingerprint,
  credentialScheme,
  type AuthorizerOptions,
  type AuthzSubject,
  type UnreachablePolicy,
} from '../src/authz/authorizer.js';
import { referencedDigests } from '../src/authz/manifest-refs.js';
import { TtlCache } from '../src/authz/ttl-cache.js';

const REGISTRY: UpstreamRegistry = { host: 'registry.test', url: new URL('https://registry.test') };
const LAYER = digestOf(Buffer.from('layer'));
const OTHER_LAYER = digestOf(Buffer.from('other layer'));
const ALICE = `Basic ${Buffer.from('alice:secret').toString('base64')}`;
const BOB = `Basic ${Buffer.from('bob:secret').toString('base64')}`;

function answer(status: number, headers: Record<string, string> = {}): UpstreamAnswer {
  return { status, headers, body: Buffer.alloc(0) };
}

const CHALLENGE = answer(401, { 'www-authenticate': 'Basic realm="test"' });

function subject(
  authorization: string | undefined,
  options: { repository?: string; digest?: Digest } = {},
): AuthzSubject {
  return {
    registry: REGISTRY,
    repository: options.repository ?? 'team/app',
    kind: 'blob',
    digest: options.digest ?? LAYER,
    authorization,
  };
}

/**
 * A registry as the probe sees it: `grants` maps repository to the credentials it accepts
 * (undefined for anonymous), `holds` maps repository to its digests. Counts the probes.
 */
class FakeRegistry {
  probes = 0;
  down: 'refused' | 503 | undefined;
  constructor(
    readonly grants: Record<string, (string | undefined)[]>,
    readonly holds: Record<string, Digest[]>,
  ) {}

  probe: AuthorizerOptions['probe'] = (s) => {
    this.probes += 1;
    if (this.down === 'refused') {
      return Promise.reject(new Error('connect ECONNREFUSED'));
    }
    if (this.down !== undefined) {
      return Promise.resolve(answer(this.down));
    }
    if (!(this.grants[s.repository] ?? []).includes(s.authorization)) {
      return Promise.resolve(CHALLENGE);
    }
    const held = (this.holds[s.repository] ?? []).some((d) => d.toString() === s.digest.toString());
    return Promise.resolve(answer(held ? 200 : 404));
  };
}

function setup(
  registry: FakeRegistry,
  overrides: { unreachable?: UnreachablePolicy; maxEntries?: number } = {},
): { authz: Authorizer; clock: { now: number }; decisions: string[] } {
  const clock = { now: 1_000_000 };
  const decisions: string[] = [];
  const authz = new Authorizer({
    probe: registry.probe,
    ttlMs: 60_000,
    denyTtlMs: 5_000,
    staleMs: 600_000,
    maxEntries: overrides.maxEntries ?? 100,
    timeoutMs: 1_000,
    unreachable: overrides.unreachable ?? 'deny',
    clock: () => clock.now,
    onDecision: (_s, decision, cache) => decisions.push(`${decision.kind}/${cache}`),
  });
  return { authz, clock, decisions };
}

describe('TtlCache', () => {
  it('reads fresh, then stale within the window, then nothing', () => {
    const clock = { now: 0 };
    const cache = new TtlCache<string>(10, 1_000, () => clock.now);
    cache.set('k', 'v', 500);
    assert.deepEqual(cache.get('k'), { value: 'v', fresh: true, storedAt: 0 });
    clock.now = 499;
    assert.equal(cache.get('k')?.fresh, true);
    clock.now = 500;
    assert.deepEqual(cache.get('k'), { value: 'v', fresh: false, storedAt: 0 });
    clock.now = 1_499;
    assert.equal(cache.get('k')?.fresh, false);
    clock.now = 1_500;
    assert.equal(cache.get('k'), undefined);
    assert.equal(cache.size, 0, 'an entry past the stale window is dropped');
  });

  it('holds at most maxEntries, dropping the least recently used', () => {
    const cache = new TtlCache<number>(3, 0, () => 0);
    cache.set('a', 1, 10);
    cache.set('b', 2, 10);
    cache.set('c', 3, 10);
    assert.equal(cache.get('a')?.value, 1, 'a read makes a recently used');
    cache.set('d', 4, 10);
    assert.equal(cache.size, 3);
    assert.equal(cache.get('b'), undefined, 'b was the least recently used');
    assert.equal(cache.get('a')?.value, 1);
    assert.equal(cache.get('c')?.value, 3);
    assert.equal(cache.get('d')?.value, 4);
    cache.set('c', 30, 10);
    cache.set('e', 5, 10);
    assert.equal(cache.get('a'), undefined, 'rewriting c made it recent; a went');
    assert.equal(cache.get('c')?.value, 30);
  });
});

describe('credential fingerprints', () => {
  it('is the SHA-256 of the whole header, or anonymous', () => {
    assert.equal(credentialFingerprint(undefined), 'anonymous');
    assert.equal(credentialFingerprint(''), 'anonymous');
    assert.equal(credentialFingerprint(ALICE), createHash('sha256').update(ALICE).digest('hex'));
    assert.notEqual(credentialFingerprint(ALICE), credentialFingerprint(BOB));
    assert.notEqual(credentialFingerprint('Bearer a'), credentialFingerprint('Bearer b'));
    assert.ok(!credentialFingerprint(ALICE).includes('secret'));
  });

  it('logs only the scheme', () => {
    assert.equal(credentialScheme(undefined), 'none');
    assert.equal(credentialScheme(ALICE), 'basic');
    assert.equal(credentialScheme('Bearer eyJhbGciOi'), 'bearer');
    assert.equal(credentialScheme('<script> x'), 'other');
  });
});

describe('Authorizer', () => {
  it('passes the registry challenge through to a client without credentials', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz, decisions } = setup(registry);
    const decision = await authz.check(subject(undefined));
    assert.equal(decision.kind, 'deny');
    assert.equal(decision.answer, CHALLENGE);
    assert.deepEqual(decisions, ['deny/miss']);
  });

  it('asks once per repository and credential within the TTL, again after it', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz, clock, decisions } = setup(registry);
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal(registry.probes, 1);
    clock.now += 59_999;
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal(registry.probes, 1);
    clock.now += 1;
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal(registry.probes, 2, 'expired: asked again');
    assert.deepEqual(decisions, ['allow/miss', 'allow/hit', 'allow/hit', 'allow/miss']);
  });

  it('checks another credential afresh (the retry with a token is a new fingerprint)', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz } = setup(registry);
    assert.equal((await authz.check(subject(undefined))).kind, 'deny');
    assert.equal((await authz.check(subject(BOB))).kind, 'deny');
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal((await authz.check(subject(undefined))).kind, 'deny', 'cached deny');
    assert.equal(registry.probes, 3);
  });

  it('keeps a refusal for the deny TTL only', async () => {
    const registry = new FakeRegistry({ 'team/app': [] }, { 'team/app': [LAYER] });
    const { authz, clock } = setup(registry);
    assert.equal((await authz.check(subject(ALICE))).kind, 'deny');
    registry.grants['team/app'] = [ALICE];
    assert.equal((await authz.check(subject(ALICE))).kind, 'deny', 'still the cached refusal');
    clock.now += 5_000;
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal(registry.probes, 2);
  });

  it('does not let a grant for one repository open content of another', async () => {
    const registry = new FakeRegistry(
      { 'team/a': [ALICE], 'team/b': [BOB] },
      { 'team/a': [LAYER], 'team/b': [OTHER_LAYER] },
    );
    const { authz } = setup(registry);
    assert.equal((await authz.check(subject(ALICE, { repository: 'team/a' }))).kind, 'allow');
    assert.equal(
      (await authz.check(subject(BOB, { repository: 'team/b', digest: OTHER_LAYER }))).kind,
      'allow',
    );
    const crossed = await authz.check(
      subject(ALICE, { repository: 'team/b', digest: OTHER_LAYER }),
    );
    assert.equal(crossed.kind, 'deny');
    // A private layer's digest named under a repository the client may read: the registry
    // is asked (the repository does not hold it) and says 404.
    const smuggled = await authz.check(
      subject(ALICE, { repository: 'team/a', digest: OTHER_LAYER }),
    );
    assert.equal(smuggled.kind, 'deny');
    assert.equal(smuggled.answer.status, 404);
  });

  it('reuses a grant for the content a manifest of the repository names', async () => {
    const registry = new FakeRegistry(
      { 'team/app': [ALICE] },
      { 'team/app': [LAYER, OTHER_LAYER] },
    );
    const { authz } = setup(registry);
    authz.learnAllowed(REGISTRY, 'team/app', ALICE, undefined);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        config: { digest: LAYER.toString() },
        layers: [{ digest: OTHER_LAYER.toString() }, { digest: 'not-a-digest' }],
      }),
    );
    authz.learnManifest(REGISTRY, 'team/app', manifest);
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal((await authz.check(subject(ALICE, { digest: OTHER_LAYER }))).kind, 'allow');
    assert.equal(registry.probes, 0);
    assert.equal((await authz.check(subject(BOB))).kind, 'deny', 'another credential is asked');
    assert.equal(registry.probes, 1);
  });

  it('opens a public repository to any credential after one anonymous check', async () => {
    const registry = new FakeRegistry({ 'library/base': [undefined] }, { 'library/base': [LAYER] });
    const { authz } = setup(registry);
    assert.equal(
      (await authz.check(subject(undefined, { repository: 'library/base' }))).kind,
      'allow',
    );
    assert.equal((await authz.check(subject(ALICE, { repository: 'library/base' }))).kind, 'allow');
    assert.equal((await authz.check(subject(BOB, { repository: 'library/base' }))).kind, 'allow');
    assert.equal(registry.probes, 1);
  });

  it('sends one probe for clients asking the same at once', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz } = setup(registry);
    const all = await Promise.all([1, 2, 3, 4].map(() => authz.check(subject(ALICE))));
    assert.deepEqual(
      all.map((d) => d.kind),
      ['allow', 'allow', 'allow', 'allow'],
    );
    assert.equal(registry.probes, 1);
  });

  it('fails closed when the registry cannot be asked, except for known public content', async () => {
    const registry = new FakeRegistry(
      { 'team/app': [ALICE], 'library/base': [undefined] },
      { 'team/app': [LAYER], 'library/base': [LAYER] },
    );
    const { authz, clock } = setup(registry);
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal(
      (await authz.check(subject(undefined, { repository: 'library/base' }))).kind,
      'allow',
    );
    clock.now += 60_000;
    registry.down = 'refused';
    const refused = await authz.check(subject(ALICE));
    assert.equal(refused.kind, 'unavailable');
    assert.equal(refused.answer, undefined);
    assert.equal(
      (await authz.check(subject(undefined, { repository: 'library/base' }))).kind,
      'allow',
    );
    registry.down = 503;
    const failing = await authz.check(subject(ALICE));
    assert.equal(failing.kind === 'unavailable' ? failing.answer?.status : 0, 503);
    clock.now += 600_000;
    assert.equal(
      (await authz.check(subject(undefined, { repository: 'library/base' }))).kind,
      'unavailable',
      'past the stale window nothing is known',
    );
  });

  it('allow-cached serves clients the registry allowed within the stale window', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz, clock } = setup(registry, { unreachable: 'allow-cached' });
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    clock.now += 120_000;
    registry.down = 'refused';
    assert.equal((await authz.check(subject(ALICE))).kind, 'allow');
    assert.equal((await authz.check(subject(BOB))).kind, 'unavailable');
    assert.equal((await authz.check(subject(undefined))).kind, 'unavailable');
    assert.equal((await authz.check(subject(ALICE, { digest: OTHER_LAYER }))).kind, 'unavailable');
  });

  it('allow serves anyone while the registry cannot be asked', async () => {
    const registry = new FakeRegistry({ 'team/app': [ALICE] }, { 'team/app': [LAYER] });
    const { authz } = setup(registry, { unreachable: 'allow' });
    registry.down = 'refused';
    assert.equal((await authz.check(subject(undefined))).kind, 'allow');
  });

  it('holds a bounded number of decisions, least recently used out', async () => {
    const CAROL = 'Bearer carol';
    const registry = new FakeRegistry({ 'team/app': [ALICE, BOB, CAROL] }, { 'team/app': [LAYER] });
    const { authz } = setup(registry, { maxEntries: 2 });
    await authz.check(subject(ALICE));
    await authz.check(subject(BOB));
    await authz.check(subject(ALICE));
    assert.equal(registry.probes, 2);
    await authz.check(subject(CAROL));
    assert.equal(registry.probes, 3);
    await authz.check(subject(ALICE));
    assert.equal(registry.probes, 3, 'Alice was used recently: kept');
    await authz.check(subject(BOB));
    assert.equal(registry.probes, 4, 'Bob was the least recently used: asked again');
  });
});

describe('referencedDigests', () => {
  it('takes config, layers and child manifests, and nothing from junk', () => {
    const index = { manifests: [{ digest: LAYER.toString() }, { digest: 7 }, null] };
    assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(index))), [LAYER.toString()]);
    assert.deepEqual(referencedDigests(Buffer.from('not json')), []);
    assert.deepEqual(referencedDigests(Buffer.from('null')), []);
    assert.deepEqual(referencedDigests(Buffer.from('{"layers":"x","config":[1]}')), []);
  });

  it('takes only what a registry checks it holds: no other fields, no mix of kinds', () => {
    const other = digestOf(Buffer.from('a private layer of another repository')).toString();
    const layer = LAYER.toString();
    const cases: [string, unknown, string[]][] = [
      [
        'blobs in an image manifest',
        { config: { digest: layer }, blobs: [{ digest: other }] },
        [layer],
      ],
      [
        'a subject',
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          layers: [{ digest: layer }],
          subject: { digest: other },
        },
        [layer],
      ],
      [
        'layers in an index',
        {
          mediaType: 'application/vnd.oci.image.index.v1+json',
          manifests: [{ digest: layer }],
          layers: [{ digest: other }],
        },
        [layer],
      ],
      [
        'manifests in an image manifest',
        {
          mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
          layers: [{ digest: layer }],
          manifests: [{ digest: other }],
        },
        [layer],
      ],
      [
        'both kinds without a media type',
        { layers: [{ digest: layer }], manifests: [{ digest: other }] },
        [],
      ],
      [
        'another media type',
        { mediaType: 'application/vnd.example+json', layers: [{ digest: other }] },
        [],
      ],
    ];
    for (const [what, document, expected] of cases) {
      assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(document))), expected, what);
    }
  });

  it('takes nothing from a manifest a registry in Go would read otherwise (keys of another case)', () => {
    const other = digestOf(Buffer.from('a private layer of another repository')).toString();
    const layer = LAYER.toString();
    const image = { mediaType: 'application/vnd.oci.image.manifest.v1+json' };
    const documents: [string, unknown][] = [
      ['Layers', { ...image, layers: [{ digest: other }], Layers: [{ digest: layer }] }],
      ['Digest', { ...image, layers: [{ digest: other, Digest: layer }] }],
      ['layerſ', { ...image, layers: [{ digest: other }], layerſ: [{ digest: layer }] }],
      ['MediaType', { ...image, MediaType: 'application/vnd.oci.image.index.v1+json', layers: [] }],
    ];
    for (const [what, document] of documents) {
      assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(document))), [], what);
    }
    // A key twice (Go's decoder fills the second into the first: its `urls` stay, and a
    // registry does not check a layer with `urls`), or a schema 1 manifest.
    const twice =
      '{"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"' +
      other +
      '","urls":["https://example.test/"]}],"layers":[{"digest":"' +
      other +
      '"}]}';
    assert.deepEqual(referencedDigests(Buffer.from(twice)), [], 'layers twice');
    const nested = `{"config":{"digest":"${layer}","digest":"${other}"}}`;
    assert.deepEqual(referencedDigests(Buffer.from(nested)), [], 'digest twice');
    const schema1 = { ...image, schemaVersion: 1, fsLayers: [], layers: [{ digest: other }] };
    assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(schema1))), [], 'schema 1');
    // Keys alike in different objects are no matter, nor strings that look like keys.
    const apart = JSON.stringify({
      config: { digest: layer },
      layers: [{ digest: layer, annotations: { a: '\\","digest":"x' } }],
    });
    assert.deepEqual(referencedDigests(Buffer.from(apart)), [layer], 'apart');
    // Other keys of any case are no matter.
    const annotated = {
      ...image,
      layers: [{ digest: layer, Annotations: { 'org.example.Layers': 'x' } }],
    };
    assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(annotated))), [layer]);
  });

  it('leaves out foreign layers: a registry takes a manifest naming them without holding them', () => {
    const foreign = digestOf(Buffer.from('a layer the registry does not hold'));
    const manifest = {
      config: { digest: LAYER.toString() },
      layers: [
        { digest: foreign.toString(), urls: ['https://example.test/layer.tar.gz'] },
        { digest: LAYER.toString(), urls: [] },
      ],
    };
    assert.deepEqual(referencedDigests(Buffer.from(JSON.stringify(manifest))), [LAYER.toString()]);
  });
});
