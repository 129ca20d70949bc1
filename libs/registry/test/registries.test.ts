/** Registry lists as operators write them, and API URLs below a registry's base path. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { registriesList, registryUrl } from '../src/index.js';

describe('registryUrl', () => {
  it('puts API paths below the base path, query kept', () => {
    const [docker, prefixed, ipv6] = registriesList.parse(
      'docker.io,art.example.com=https://art.example.com/api/docker/remote/,[::1]:5000=http://[::1]:5000',
    );
    assert.ok(docker !== undefined && prefixed !== undefined && ipv6 !== undefined);
    assert.equal(
      registryUrl(docker, '/v2/library/alpine/manifests/3').href,
      'https://registry-1.docker.io/v2/library/alpine/manifests/3',
    );
    assert.equal(
      registryUrl(prefixed, '/v2/team/app/referrers/sha256:ab?artifactType=x').href,
      'https://art.example.com/api/docker/remote/v2/team/app/referrers/sha256:ab?artifactType=x',
    );
    assert.equal(registryUrl(ipv6, '/v2/').href, 'http://[::1]:5000/v2/');
    assert.equal(ipv6.host, '[::1]:5000');
  });
});
