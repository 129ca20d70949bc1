import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '../src/config.js';
import { natsTlsOptions, parseNatsServers } from '../src/nats.js';

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
