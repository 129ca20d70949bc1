import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '../src/config.js';
import { KV_BUCKETS } from '@shoal/proto';

import { foreignKvSettings, natsTlsOptions, parseNatsServers } from '../src/nats.js';

describe('parseNatsServers', () => {
  it('passes URLs without credentials through', () => {
    assert.deepEqual(parseNatsServers('nats://a:4222, nats://b:4222'), {
      servers: ['nats://a:4222', 'nats://b:4222'],
    });
  });

  it('moves a user and a percent-encoded password out of the URLs', () => {
    assert.deepEqual(parseNatsServers('nats://agent:p%40ss%3Aw@nats:4222,nats://nats-1:4222'), {
      servers: ['nats://nats:4222', 'nats://nats-1:4222'],
      user: 'agent',
      pass: 'p@ss:w',
    });
  });

  it('accepts the same credentials on every URL', () => {
    assert.deepEqual(parseNatsServers('tls://u:p@a:4222,tls://u:p@b:4222').servers, [
      'tls://a:4222',
      'tls://b:4222',
    ]);
  });

  it('refuses URLs that carry different credentials', () => {
    assert.throws(() => parseNatsServers('nats://u:p@a:4222,nats://v:p@b:4222'), ConfigError);
  });
});

describe('natsTlsOptions', () => {
  it('is plain without TLS settings or tls:// URLs', () => {
    assert.equal(natsTlsOptions({}, ['nats://a:4222']), undefined);
  });

  it('asks for TLS with the system CAs for a tls:// URL', () => {
    assert.deepEqual(natsTlsOptions({}, ['tls://a:4222']), {});
  });

  it('verifies the server with the CA file and shows a client certificate', () => {
    assert.deepEqual(
      natsTlsOptions(
        {
          SHOAL_NATS_TLS_CA_FILE: '/ca.pem',
          SHOAL_NATS_TLS_CERT_FILE: '/c.pem',
          SHOAL_NATS_TLS_KEY_FILE: '/c.key',
        },
        ['nats://a:4222'],
      ),
      { caFile: '/ca.pem', certFile: '/c.pem', keyFile: '/c.key' },
    );
  });

  it('refuses a certificate without its key, and a key without its certificate', () => {
    assert.throws(
      () => natsTlsOptions({ SHOAL_NATS_TLS_CERT_FILE: '/c.pem' }, ['nats://a:4222']),
      ConfigError,
    );
    assert.throws(
      () => natsTlsOptions({ SHOAL_NATS_TLS_KEY_FILE: '/c.key' }, ['nats://a:4222']),
      ConfigError,
    );
  });
});

describe('foreignKvSettings', () => {
  const spec = KV_BUCKETS.agents;
  /** The stream nats.js declares for the bucket, as the server reports it back. */
  const declared = {
    name: `KV_${spec.bucket}`,
    subjects: [`$KV.${spec.bucket}.>`],
    max_age: spec.ttlMs * 1_000_000,
    max_msg_size: spec.maxValueSize,
    max_bytes: spec.maxBytes,
    max_msgs_per_subject: 1,
    num_replicas: 3,
    sealed: false,
    no_ack: false,
    deny_delete: false,
    deny_purge: false,
  };

  it('finds nothing in the bucket as declared, whatever its replicas', () => {
    assert.deepEqual(foreignKvSettings(declared, spec), []);
    assert.deepEqual(foreignKvSettings({ ...declared, num_replicas: 1 }, spec), []);
  });

  it('names every setting that copies entries elsewhere or stops the writers', () => {
    const tampered = {
      ...declared,
      subjects: [`$KV.${spec.bucket}.>`, 'shoal.pieces.v1.hashes.>'],
      republish: { src: '>', dest: 'shoal.pieces.v1.hashes.x' },
      sources: [{ name: 'other' }],
      sealed: true,
      no_ack: true,
      deny_delete: true,
      deny_purge: true,
      max_age: 0,
      max_msg_size: 1,
      max_bytes: 1024,
      max_msgs_per_subject: 64,
    };
    assert.deepEqual(foreignKvSettings(tampered, spec), [
      'republish',
      'sources',
      'subjects',
      'sealed',
      'no_ack',
      'deny_delete',
      'deny_purge',
      'max_age',
      'max_msg_size',
      'max_bytes',
      'max_msgs_per_subject',
    ]);
    assert.deepEqual(foreignKvSettings({ ...declared, mirror: { name: 'KV_other' } }, spec), [
      'mirror',
    ]);
  });
});
