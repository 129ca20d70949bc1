import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { platformList, platformWanted } from '../src/preheat/platforms.js';

const amd64 = { os: 'linux', architecture: 'amd64' };
const arm64v8 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
const armv7 = { os: 'linux', architecture: 'arm', variant: 'v7' };
const armv6 = { os: 'linux', architecture: 'arm', variant: 'v6' };
/** How BuildKit lists an attestation manifest in an image index. */
const attestation = { os: 'unknown', architecture: 'unknown' };

describe('platformWanted', () => {
  it('never wants attestations or other unknown platforms', () => {
    for (const wanted of [[], ['linux/amd64'], ['unknown/unknown']]) {
      assert.equal(platformWanted(attestation, wanted), false, JSON.stringify(wanted));
      assert.equal(platformWanted({ os: 'unknown', architecture: 'amd64' }, wanted), false);
      assert.equal(platformWanted({ os: 'linux', architecture: 'unknown' }, wanted), false);
    }
  });

  it('wants every real platform, and entries without one, when the list is empty', () => {
    for (const platform of [amd64, arm64v8, armv7, { os: 'windows', architecture: 'amd64' }]) {
      assert.equal(platformWanted(platform, []), true);
    }
    assert.equal(platformWanted(undefined, []), true);
    assert.equal(platformWanted({}, []), true);
  });

  it('matches a platform without a variant to any variant', () => {
    assert.equal(platformWanted(arm64v8, ['linux/arm64']), true);
    assert.equal(platformWanted({ os: 'linux', architecture: 'arm64' }, ['linux/arm64']), true);
    assert.equal(platformWanted(amd64, ['linux/arm64']), false);
    assert.equal(platformWanted({ os: 'darwin', architecture: 'arm64' }, ['linux/arm64']), false);
  });

  it('matches a platform with a variant to that variant only', () => {
    assert.equal(platformWanted(armv7, ['linux/arm/v7']), true);
    assert.equal(platformWanted(armv6, ['linux/arm/v7']), false);
    assert.equal(platformWanted({ os: 'linux', architecture: 'arm' }, ['linux/arm/v7']), false);
  });

  it('matches any platform of the list', () => {
    const wanted = ['linux/amd64', 'linux/arm/v7'];
    assert.equal(platformWanted(amd64, wanted), true);
    assert.equal(platformWanted(armv7, wanted), true);
    assert.equal(platformWanted(arm64v8, wanted), false);
  });

  it('does not want an entry without a platform when the list names some', () => {
    assert.equal(platformWanted(undefined, ['linux/amd64']), false);
    assert.equal(platformWanted({ os: 'linux' }, ['linux/amd64']), false);
    assert.equal(platformWanted({ architecture: 'amd64' }, ['linux/amd64']), false);
  });
});

describe('platformList', () => {
  it('reads a comma-separated list, trimming space and empty entries', () => {
    assert.deepEqual(platformList.parse(undefined), []);
    assert.deepEqual(platformList.parse(''), []);
    assert.deepEqual(platformList.parse(' linux/amd64 , ,linux/arm/v7,'), [
      'linux/amd64',
      'linux/arm/v7',
    ]);
  });

  it('names every entry that is not os/arch[/variant]', () => {
    const result = platformList.safeParse('linux,linux/amd64,Linux/AMD64,linux/arm/v7/extra,a b/c');
    assert.ok(!result.success);
    assert.deepEqual(
      result.error.issues.map((issue) => issue.message),
      [
        '"linux" is not os/arch[/variant]',
        '"Linux/AMD64" is not os/arch[/variant]',
        '"linux/arm/v7/extra" is not os/arch[/variant]',
        '"a b/c" is not os/arch[/variant]',
      ],
    );
  });
});
