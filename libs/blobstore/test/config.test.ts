/** The object gateway's configuration piece. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { ConfigError, loadConfig } from '@shoal/runtime';

import {
  blobStoreConfig,
  blobStoreConfigProblems,
  createBlobStore,
  FsBlobStore,
} from '../src/index.js';

function load(env: Record<string, string | undefined>) {
  return loadConfig(blobStoreConfig, env, blobStoreConfigProblems(env));
}

function problems(env: Record<string, string | undefined>): readonly string[] {
  try {
    load(env);
  } catch (error) {
    assert.ok(error instanceof ConfigError);
    return error.problems;
  }
  assert.fail(`${JSON.stringify(env)} should be refused`);
}

describe('blobStoreConfig', () => {
  it('defaults to a local directory', () => {
    assert.deepEqual(load({}), {
      SHOAL_STORE_KIND: 'fs',
      SHOAL_STORE_DIR: '/var/lib/shoal/store',
      SHOAL_S3_REGION: 'us-east-1',
      SHOAL_S3_PREFIX: '',
      SHOAL_S3_FORCE_PATH_STYLE: true,
      SHOAL_S3_PART_SIZE_BYTES: 8 * 1024 * 1024,
    });
  });

  it('reads an S3 configuration', () => {
    const config = load({
      SHOAL_STORE_KIND: 's3',
      SHOAL_S3_ENDPOINT: 'http://minio:9000',
      SHOAL_S3_BUCKET: 'shoal-blobs',
      SHOAL_S3_PREFIX: 'cluster-a/',
      SHOAL_S3_FORCE_PATH_STYLE: 'false',
      SHOAL_S3_PART_SIZE_BYTES: String(16 * 1024 * 1024),
    });
    assert.equal(config.SHOAL_STORE_KIND, 's3');
    assert.equal(config.SHOAL_S3_BUCKET, 'shoal-blobs');
    assert.equal(config.SHOAL_S3_FORCE_PATH_STYLE, false);
    assert.equal(config.SHOAL_S3_PART_SIZE_BYTES, 16 * 1024 * 1024);
    assert.equal(config.SHOAL_S3_ACCESS_KEY_ID, undefined);
  });

  it('names every problem at once', () => {
    const found = problems({
      SHOAL_STORE_KIND: 's3',
      SHOAL_S3_ENDPOINT: 'minio:9000',
      SHOAL_S3_PART_SIZE_BYTES: '1024',
      SHOAL_S3_ACCESS_KEY_ID: 'id-only',
    });
    const names = found.map((p) => p.split(':')[0]).sort();
    assert.deepEqual(names, [
      'SHOAL_S3_BUCKET',
      'SHOAL_S3_ENDPOINT',
      'SHOAL_S3_PART_SIZE_BYTES',
      'SHOAL_S3_SECRET_ACCESS_KEY',
    ]);
    assert.ok(
      found.every((p) => !p.includes('id-only')),
      'values are not echoed',
    );
    assert.deepEqual(
      problems({ SHOAL_STORE_KIND: 'gcs' }).map((p) => p.split(':')[0]),
      ['SHOAL_STORE_KIND'],
    );
  });
});

describe('createBlobStore', () => {
  it('builds an FsBlobStore on SHOAL_STORE_DIR', () => {
    const store = createBlobStore(load({ SHOAL_STORE_DIR: join('/tmp', 'store') }));
    assert.ok(store instanceof FsBlobStore);
    assert.equal(store.root, '/tmp/store');
  });

  it('refuses s3 without a bucket as a configuration problem', () => {
    const config = loadConfig(blobStoreConfig, { SHOAL_STORE_KIND: 's3' });
    assert.throws(
      () => createBlobStore(config),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.problems.some((p) => p.startsWith('SHOAL_S3_BUCKET:')),
    );
  });
});
