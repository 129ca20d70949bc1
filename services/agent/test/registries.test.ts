import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MirrorError } from '../src/mirror/errors.js';
import type { UpstreamRegistry } from '@shoal/registry';
import { RegistryTable } from '../src/upstream/registries.js';

const DOCKER: UpstreamRegistry = {
  host: 'docker.io',
  url: new URL('https://registry-1.docker.io'),
};
const LOCAL: UpstreamRegistry = { host: '127.0.0.1:5000', url: new URL('http://127.0.0.1:5000') };
const GHCR: UpstreamRegistry = { host: 'ghcr.io', url: new URL('https://ghcr.io') };

function assertDenied(table: RegistryTable, ns: string | undefined): void {
  assert.throws(
    () => table.resolve(ns),
    (error: unknown) => {
      assert.ok(error instanceof MirrorError);
      assert.equal(error.code, 'DENIED');
      assert.equal(error.status, 403);
      return true;
    },
  );
}

describe('RegistryTable', () => {
  it('resolves the registry named by ns', () => {
    const table = new RegistryTable([DOCKER, LOCAL, GHCR], undefined);
    assert.equal(table.resolve('docker.io'), DOCKER);
    assert.equal(table.resolve('127.0.0.1:5000'), LOCAL);
    assert.equal(table.resolve('ghcr.io').url.href, 'https://ghcr.io/');
  });

  it("resolves Docker Hub's other names to docker.io, as ns and as the default", () => {
    const table = new RegistryTable([DOCKER, LOCAL], 'registry-1.docker.io');
    assert.equal(table.resolve('registry-1.docker.io'), DOCKER);
    assert.equal(table.resolve('index.docker.io'), DOCKER);
    assert.equal(table.resolve(undefined), DOCKER);
    assert.equal(table.get('index.docker.io'), DOCKER);
  });

  it('lists the registries in configuration order', () => {
    const table = new RegistryTable([GHCR, DOCKER, LOCAL], 'docker.io');
    assert.deepEqual(
      table.registries.map((r) => r.host),
      ['ghcr.io', 'docker.io', '127.0.0.1:5000'],
    );
  });

  it('falls back to the default registry without ns', () => {
    const table = new RegistryTable([DOCKER, LOCAL], '127.0.0.1:5000');
    assert.equal(table.resolve(undefined), LOCAL);
    assert.equal(table.resolve('docker.io'), DOCKER);
  });

  it('refuses a host that is not mirrored, default or not', () => {
    const table = new RegistryTable([DOCKER], 'docker.io');
    assertDenied(table, 'quay.io');
    assertDenied(table, 'DOCKER.IO');
    assertDenied(table, '');
  });

  it('refuses a request without ns when there is no default', () => {
    assertDenied(new RegistryTable([DOCKER, GHCR], undefined), undefined);
  });

  it('refuses a request without ns when the default is not listed', () => {
    assertDenied(new RegistryTable([DOCKER], 'quay.io'), undefined);
  });

  it('keeps a long refused host out of the message beyond 255 characters', () => {
    const table = new RegistryTable([DOCKER], undefined);
    const host = 'a'.repeat(10_000);
    assert.throws(
      () => table.resolve(host),
      (error: unknown) =>
        error instanceof MirrorError &&
        error.status === 403 &&
        error.message.includes('a'.repeat(255)) &&
        !error.message.includes('a'.repeat(256)),
    );
  });
});
