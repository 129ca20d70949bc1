import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '@shoal/runtime';

import { loadSeedConfig } from '../src/config.js';

// Piece authentication has its own tests (test/integration/test/piece-auth.test.ts).
const required = { SHOAL_SEED_REGISTRIES: 'registry.example', SHOAL_SEED_PIECE_AUTH: 'off' };

describe('seed server configuration', () => {
  it('bounds the cache and the uploads by default', () => {
    const config = loadSeedConfig(required);
    assert.equal(config.SHOAL_SEED_CACHE_MAX_BYTES, 100 * 1024 ** 3);
    assert.equal(config.SHOAL_SEED_MAX_UPLOADS, 32);
    assert.equal(config.SHOAL_SEED_UPLOAD_TIMEOUT_MS, 60_000);
    // One copy of a piece at a time, counted while sent (20 s at most) and 10 s after;
    // eight answers sent at once.
    assert.equal(config.SHOAL_SEED_PIECE_FANOUT, 1);
    assert.equal(config.SHOAL_SEED_FANOUT_HOLD_MS, 20_000);
    assert.equal(config.SHOAL_SEED_FANOUT_WINDOW_MS, 10_000);
    assert.equal(config.SHOAL_SEED_SENDS, 8);
  });

  it('reads the cache quota and the upload settings', () => {
    const config = loadSeedConfig({
      ...required,
      SHOAL_SEED_CACHE_MAX_BYTES: '1073741824',
      SHOAL_SEED_MAX_UPLOADS: '4',
      SHOAL_SEED_UPLOAD_TIMEOUT_MS: '1500',
    });
    assert.equal(config.SHOAL_SEED_CACHE_MAX_BYTES, 1024 ** 3);
    assert.equal(config.SHOAL_SEED_MAX_UPLOADS, 4);
    assert.equal(config.SHOAL_SEED_UPLOAD_TIMEOUT_MS, 1500);
  });

  it('reports every problem at once', () => {
    let thrown: unknown;
    try {
      loadSeedConfig({
        ...required,
        SHOAL_SEED_CACHE_MAX_BYTES: '10 GiB',
        SHOAL_SEED_MAX_UPLOADS: '0',
        SHOAL_SEED_UPLOAD_TIMEOUT_MS: '0',
      });
    } catch (error) {
      thrown = error;
    }
    assert.ok(thrown instanceof ConfigError);
    for (const name of [
      'SHOAL_SEED_CACHE_MAX_BYTES',
      'SHOAL_SEED_MAX_UPLOADS',
      'SHOAL_SEED_UPLOAD_TIMEOUT_MS',
    ]) {
      assert.match(thrown.message, new RegExp(name));
    }
  });

  it('takes https:// with a certificate, and refuses a URL whose scheme the listener does not serve', () => {
    const tls = {
      SHOAL_SEED_TLS_CERT_FILE: '/etc/shoal/pieces-tls/tls.crt',
      SHOAL_SEED_TLS_KEY_FILE: '/etc/shoal/pieces-tls/tls.key',
    };
    const config = loadSeedConfig({
      ...required,
      ...tls,
      SHOAL_SEED_URL: 'https://seed-0.example:65010',
      SHOAL_SEED_TLS_CLIENT_CA_FILE: '/etc/shoal/pieces-tls/ca.crt',
    });
    assert.equal(config.SHOAL_SEED_TLS_CLIENT_CA_FILE, '/etc/shoal/pieces-tls/ca.crt');
    assert.throws(
      () => loadSeedConfig({ ...required, ...tls, SHOAL_SEED_URL: 'http://seed-0.example:65010' }),
      /SHOAL_SEED_URL: must be https:\/\//,
    );
    assert.throws(
      () => loadSeedConfig({ ...required, SHOAL_SEED_URL: 'https://seed-0.example:65010' }),
      /SHOAL_SEED_URL: https:\/\/ needs SHOAL_SEED_TLS_CERT_FILE/,
    );
  });

  it('trusts https token realms, and plain http ones on loopback only', () => {
    const config = loadSeedConfig({
      ...required,
      SHOAL_SEED_TRUSTED_REALMS: 'https://gitlab.example.com/jwt/auth,http://localhost:5001',
    });
    assert.deepEqual(config.SHOAL_SEED_TRUSTED_REALMS, [
      'https://gitlab.example.com',
      'http://localhost:5001',
    ]);
    assert.throws(
      () => loadSeedConfig({ ...required, SHOAL_SEED_TRUSTED_REALMS: 'http://10.0.0.5:5001' }),
      (error: unknown) =>
        error instanceof ConfigError &&
        /SHOAL_SEED_TRUSTED_REALMS: http:\/\/10\.0\.0\.5:5001: .*cleartext/.test(error.message),
    );
  });
});
