import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { jobId } from '@shoal/proto';

import { jobIdFor, type PreheatSpec } from '../src/preheat/ids.js';

const spec: PreheatSpec = {
  registry: 'registry.example.com',
  repository: 'team/app',
  digest: 'sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f',
  scope: 'nodes',
  selector: { pool: 'gpu', zone: 'a' },
  platforms: ['linux/amd64', 'linux/arm64'],
};

describe('jobIdFor', () => {
  it('is stable across calls, selector key order and platform order', () => {
    const id = jobIdFor(spec);
    assert.equal(jobIdFor({ ...spec }), id);
    assert.equal(jobIdFor({ ...spec, selector: { zone: 'a', pool: 'gpu' } }), id);
    assert.equal(jobIdFor({ ...spec, platforms: ['linux/arm64', 'linux/amd64'] }), id);
  });

  it('differs when what the job does differs', () => {
    const id = jobIdFor(spec);
    const variants: [string, PreheatSpec][] = [
      ['scope', { ...spec, scope: 'seed' }],
      [
        'digest',
        {
          ...spec,
          digest: 'sha256:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910',
        },
      ],
      ['registry', { ...spec, registry: 'other.example.com' }],
      ['repository', { ...spec, repository: 'team/other' }],
      ['selector value', { ...spec, selector: { pool: 'cpu', zone: 'a' } }],
      ['selector keys', { ...spec, selector: { pool: 'gpu' } }],
      ['platforms', { ...spec, platforms: ['linux/amd64'] }],
      ['no platforms', { ...spec, platforms: [] }],
    ];
    const ids = new Set([id]);
    for (const [what, variant] of variants) {
      const other = jobIdFor(variant);
      assert.notEqual(other, id, what);
      ids.add(other);
    }
    assert.equal(ids.size, variants.length + 1, 'every variant has its own id');
  });

  it('does not confuse a key-value pair with a differently split one', () => {
    assert.notEqual(
      jobIdFor({ ...spec, selector: { a: 'b,c' } }),
      jobIdFor({ ...spec, selector: { 'a,b': 'c' } }),
    );
  });

  it('is a valid job id: a NATS-safe token of at most 64 characters', () => {
    for (const variant of [spec, { ...spec, selector: {}, platforms: [] }]) {
      const id = jobIdFor(variant);
      assert.match(id, /^[A-Za-z0-9_-]{1,64}$/);
      assert.match(id, /^p-[0-9a-f]{40}$/);
      assert.equal(jobId.safeParse(id).success, true);
    }
  });
});
