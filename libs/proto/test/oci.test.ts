import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  digestOf,
  formatImageReference,
  OciParseError,
  parseDigest,
  parseImageReference,
  parseManifestReference,
  parseRepositoryName,
  parseTag,
} from '../src/index.js';

const SHA256 = digestOf(Buffer.from('shoal')).toString();
const SHA512 = digestOf(Buffer.from('shoal'), 'sha512').toString();

function assertCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (error: unknown) => error instanceof OciParseError && error.code === code);
}

describe('parseDigest', () => {
  it('accepts sha256 and sha512 and keeps the canonical text', () => {
    assert.equal(parseDigest(SHA256).toString(), SHA256);
    assert.equal(parseDigest(SHA256).algorithm, 'sha256');
    assert.equal(parseDigest(SHA512).algorithm, 'sha512');
    assert.equal(parseDigest(SHA512).hex.length, 128);
  });

  it('rejects what the grammar rejects', () => {
    for (const bad of [
      '',
      'sha256',
      'sha256:',
      ':abc',
      'SHA256:' + 'a'.repeat(64),
      'sha256:' + 'a'.repeat(63),
      'sha256:' + 'a'.repeat(65),
      'sha256:' + 'A'.repeat(64),
      'sha256:' + 'g'.repeat(64),
      'sha512:' + 'a'.repeat(64),
      'sha256:../' + 'a'.repeat(61),
      'sha256+:' + 'a'.repeat(64),
    ]) {
      assertCode(() => parseDigest(bad), 'DIGEST_INVALID');
    }
  });

  it('rejects well-formed digests of algorithms it cannot verify', () => {
    assertCode(() => parseDigest('md5:' + 'a'.repeat(32)), 'DIGEST_INVALID');
    assertCode(
      () => parseDigest('multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8'),
      'DIGEST_INVALID',
    );
  });
});

describe('parseRepositoryName', () => {
  it('accepts the separators the spec allows', () => {
    for (const good of [
      'a',
      'library/alpine',
      'team/sub.group/app-name__x',
      'a--b/c_d/e.f',
      '0/1/2',
      'a'.repeat(255),
    ]) {
      assert.equal(parseRepositoryName(good), good);
    }
  });

  it('rejects traversal, upper case, empty components and over-long names', () => {
    for (const bad of [
      '',
      '..',
      'a/../b',
      '../etc/passwd',
      'a//b',
      '/a',
      'a/',
      'Alpine',
      'a___b',
      'a.-b',
      '-a',
      'a-',
      'a%2fb',
      'a'.repeat(256),
    ]) {
      assertCode(() => parseRepositoryName(bad), 'NAME_INVALID');
    }
  });
});

describe('parseTag and parseManifestReference', () => {
  it('accepts tags up to 128 characters', () => {
    assert.equal(parseTag('v1.2.3-rc_1'), 'v1.2.3-rc_1');
    assert.equal(parseTag('_' + 'a'.repeat(127)), '_' + 'a'.repeat(127));
    assertCode(() => parseTag('a'.repeat(129)), 'TAG_INVALID');
    assertCode(() => parseTag('.hidden'), 'TAG_INVALID');
    assertCode(() => parseTag('-x'), 'TAG_INVALID');
    assertCode(() => parseTag(''), 'TAG_INVALID');
  });

  it('tells tags from digests', () => {
    assert.deepEqual(parseManifestReference('latest'), { kind: 'tag', tag: 'latest' });
    const ref = parseManifestReference(SHA256);
    assert.ok(ref.kind === 'digest');
    assert.equal(ref.digest.toString(), SHA256);
    assertCode(() => parseManifestReference('sha256:zz'), 'DIGEST_INVALID');
  });
});

describe('parseImageReference', () => {
  const cases: [string, string, string, string | undefined][] = [
    ['alpine', 'docker.io', 'library/alpine', 'latest'],
    ['team/app:v1', 'docker.io', 'team/app', 'v1'],
    ['localhost/app', 'localhost', 'app', 'latest'],
    ['localhost:5000/app:1', 'localhost:5000', 'app', '1'],
    ['127.0.0.1:5000/a/b/c:t', '127.0.0.1:5000', 'a/b/c', 't'],
    ['registry.example.com/team/app', 'registry.example.com', 'team/app', 'latest'],
    ['[::1]:5000/app:x', '[::1]:5000', 'app', 'x'],
  ];
  for (const [input, registry, repository, tag] of cases) {
    it(`parses ${input}`, () => {
      const ref = parseImageReference(input);
      assert.equal(ref.registry, registry);
      assert.equal(ref.repository, repository);
      assert.equal(ref.tag, tag);
    });
  }

  it('keeps a digest and omits the default tag when one is given', () => {
    const ref = parseImageReference(`ghcr.io/org/app@${SHA256}`);
    assert.equal(ref.tag, undefined);
    assert.equal(ref.digest?.toString(), SHA256);
    assert.equal(formatImageReference(ref), `ghcr.io/org/app@${SHA256}`);
    const both = parseImageReference(`ghcr.io/org/app:v2@${SHA256}`);
    assert.equal(formatImageReference(both), `ghcr.io/org/app:v2@${SHA256}`);
  });

  it('rejects malformed references', () => {
    assertCode(() => parseImageReference('Upper/app'), 'NAME_INVALID');
    assertCode(() => parseImageReference('ghcr.io/app:bad:tag'), 'NAME_INVALID');
    assertCode(() => parseImageReference('ghcr.io/app@sha256:short'), 'DIGEST_INVALID');
    assertCode(() => parseImageReference('bad_host.io:x/app'), 'REFERENCE_INVALID');
  });
});
