import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { digestOf, OciParseError } from '@shoal/proto';

import { MirrorError, toMirrorError } from '../src/mirror/errors.js';
import { parsePullPath } from '../src/mirror/path.js';

const SHA256 = digestOf(Buffer.from('shoal')).toString();
const SHA512 = digestOf(Buffer.from('shoal'), 'sha512').toString();

/**
 * What a client is told about a rejected path: parsePullPath throws either a MirrorError or
 * the grammar's OciParseError, which the route's error handler maps with toMirrorError.
 */
function rejection(rawPath: string): MirrorError {
  let thrown: unknown;
  try {
    parsePullPath(rawPath);
  } catch (error) {
    thrown = error;
  }
  assert.ok(
    thrown instanceof MirrorError || thrown instanceof OciParseError,
    `${rawPath.slice(0, 80)} should be rejected with a MirrorError or an OciParseError`,
  );
  return toMirrorError(thrown);
}

function assertRejected(rawPath: string, code: string, status: number): void {
  const error = rejection(rawPath);
  assert.equal(error.code, code, rawPath.slice(0, 80));
  assert.equal(error.status, status, rawPath.slice(0, 80));
}

describe('parsePullPath', () => {
  it('parses a manifest by tag', () => {
    assert.deepEqual(parsePullPath('/v2/library/alpine/manifests/3.20'), {
      kind: 'manifest',
      name: 'library/alpine',
      reference: { kind: 'tag', tag: '3.20' },
    });
  });

  it('keeps the case of a tag, which the grammar allows', () => {
    const target = parsePullPath('/v2/app/manifests/V1_Release');
    assert.equal(target.kind, 'manifest');
    assert.deepEqual(target.reference, { kind: 'tag', tag: 'V1_Release' });
  });

  it('parses a manifest by digest', () => {
    const target = parsePullPath(`/v2/library/alpine/manifests/${SHA256}`);
    assert.equal(target.kind, 'manifest');
    assert.equal(target.name, 'library/alpine');
    const { reference } = target;
    assert.equal(reference.kind, 'digest');
    assert.equal(reference.digest.toString(), SHA256);
  });

  it('parses a blob by sha256 and sha512 digest', () => {
    for (const digest of [SHA256, SHA512]) {
      const target = parsePullPath(`/v2/library/alpine/blobs/${digest}`);
      assert.equal(target.kind, 'blob');
      assert.equal(target.name, 'library/alpine');
      assert.equal(target.digest.toString(), digest);
    }
  });

  it('parses nested names, including components named like endpoints', () => {
    assert.equal(
      parsePullPath('/v2/team/sub.group/app-name__x/blobs/' + SHA256).name,
      'team/sub.group/app-name__x',
    );
    assert.equal(parsePullPath('/v2/a/b/c/d/e/manifests/latest').name, 'a/b/c/d/e');
    const target = parsePullPath('/v2/org/manifests/app/blobs/' + SHA256);
    assert.equal(target.kind, 'blob');
    assert.equal(target.name, 'org/manifests/app');
  });

  it('rejects path traversal with NAME_INVALID 400', () => {
    for (const path of [
      '/v2/../manifests/latest',
      '/v2/library/../alpine/manifests/latest',
      '/v2/../../etc/passwd/manifests/latest',
      '/v2/library/./alpine/manifests/latest',
      '/v2/library//alpine/manifests/latest',
      '/v2//library/alpine/manifests/latest',
    ]) {
      assertRejected(path, 'NAME_INVALID', 400);
    }
  });

  it('rejects traversal in place of a reference', () => {
    assertRejected('/v2/library/alpine/manifests/..', 'TAG_INVALID', 400);
    assertRejected('/v2/library/alpine/blobs/..', 'DIGEST_INVALID', 400);
  });

  it('rejects percent-encoded segments instead of decoding them', () => {
    assertRejected('/v2/library%2Falpine/manifests/latest', 'NAME_INVALID', 400);
    assertRejected('/v2/%2e%2e/library/alpine/manifests/latest', 'NAME_INVALID', 400);
    assertRejected('/v2/library/alpine/manifests/%2e%2e', 'TAG_INVALID', 400);
    assertRejected('/v2/library/alpine/manifests/lat%65st', 'TAG_INVALID', 400);
    assertRejected('/v2/library/alpine/blobs/sha256%3A' + SHA256.slice(7), 'DIGEST_INVALID', 400);
  });

  it('rejects upper case in names and digests', () => {
    assertRejected('/v2/Library/alpine/manifests/latest', 'NAME_INVALID', 400);
    assertRejected('/v2/library/ALPINE/blobs/' + SHA256, 'NAME_INVALID', 400);
    assertRejected('/v2/library/alpine/blobs/' + SHA256.toUpperCase(), 'DIGEST_INVALID', 400);
    assertRejected(
      '/v2/library/alpine/blobs/sha256:' + SHA256.slice(7).toUpperCase(),
      'DIGEST_INVALID',
      400,
    );
  });

  it('rejects bad digests with DIGEST_INVALID 400', () => {
    for (const digest of [
      'latest',
      'sha256:',
      'sha256:' + 'a'.repeat(63),
      'sha256:' + 'a'.repeat(65),
      'sha256:' + 'g'.repeat(64),
      'md5:' + 'a'.repeat(32),
      'sha512:' + 'a'.repeat(64),
    ]) {
      assertRejected(`/v2/library/alpine/blobs/${digest}`, 'DIGEST_INVALID', 400);
    }
    assertRejected('/v2/library/alpine/manifests/sha256:abc', 'DIGEST_INVALID', 400);
  });

  it('rejects anything but the pull endpoints with UNSUPPORTED 404', () => {
    for (const path of [
      '/v2/',
      '/v2',
      '/v2/_catalog',
      '/v2/library/alpine/tags/list',
      '/v2/library/alpine/referrers/' + SHA256,
      '/v2/library/alpine/blobs/uploads/',
      '/v2/library/alpine/blobs/uploads/0d7f5c1c-4c5b-4f4e-9a55-2b8c1f1d3e6a',
      '/v2/library/alpine/manifests/',
      '/v2/library/alpine/manifests/latest/',
      '/v2/manifests/latest',
      '/v1/library/alpine/manifests/latest',
      'v2/library/alpine/manifests/latest',
      '/',
      '',
    ]) {
      assertRejected(path, 'UNSUPPORTED', 404);
    }
  });

  it('throws the MirrorError itself for unknown endpoints and long paths', () => {
    assert.throws(
      () => parsePullPath('/v2/_catalog'),
      (error: unknown) => error instanceof MirrorError && error.status === 404,
    );
    assert.throws(
      () => parsePullPath('/v2/' + 'a'.repeat(2000) + '/manifests/latest'),
      (error: unknown) => error instanceof MirrorError && error.status === 414,
    );
  });

  it('rejects a path over 1024 characters with 414, and only past that length', () => {
    const prefix = '/v2/';
    const suffix = '/manifests/latest';
    const pathOf = (length: number): string =>
      prefix + 'a'.repeat(length - prefix.length - suffix.length) + suffix;
    assert.equal(pathOf(1025).length, 1025);
    assertRejected(pathOf(1025), 'NAME_INVALID', 414);
    // At 1024 characters the length is accepted and the name grammar (255 at most) decides.
    assertRejected(pathOf(1024), 'NAME_INVALID', 400);
    assertRejected(prefix + 'a'.repeat(100_000) + suffix, 'NAME_INVALID', 414);
  });
});
