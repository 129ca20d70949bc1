import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseChallenge, parseDockerConfig } from '../src/index.js';

describe('parseDockerConfig', () => {
  it('reads auth, username/password entries and Docker Hub keys', () => {
    const config = parseDockerConfig(
      JSON.stringify({
        auths: {
          'registry.example.com:5000': { auth: Buffer.from('alice:pa:ss').toString('base64') },
          'https://index.docker.io/v1/': { auth: Buffer.from('bob:hub').toString('base64') },
          'https://ghcr.io/v2/': { username: 'carol', password: 'tok' },
          'broken.example.com': { auth: Buffer.from('no-colon').toString('base64') },
        },
      }),
    );
    assert.deepEqual(config.get('registry.example.com:5000'), {
      username: 'alice',
      password: 'pa:ss',
    });
    assert.deepEqual(config.get('docker.io'), { username: 'bob', password: 'hub' });
    assert.deepEqual(config.get('ghcr.io'), { username: 'carol', password: 'tok' });
    assert.equal(config.has('broken.example.com'), false);
  });

  it('accepts a config without auths', () => {
    assert.equal(parseDockerConfig('{}').size, 0);
  });
});

describe('parseChallenge', () => {
  it('reads the scheme and parameters of a Bearer challenge', () => {
    const { scheme, params } = parseChallenge(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
    );
    assert.equal(scheme, 'bearer');
    assert.deepEqual(params, {
      realm: 'https://auth.docker.io/token',
      service: 'registry.docker.io',
      scope: 'repository:library/alpine:pull',
    });
  });

  it('reads a Basic challenge', () => {
    assert.deepEqual(parseChallenge('Basic realm="shoal-test"'), {
      scheme: 'basic',
      params: { realm: 'shoal-test' },
    });
  });
});
