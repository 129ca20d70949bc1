/** The referrers API's `Link` (next page) rewritten to point at the mirror. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { mirrorLink } from '../src/mirror/mirror.js';

const PATH = '/v2/team/app/referrers/sha256:abc';

describe('mirrorLink', () => {
  it('keeps a relative link below /v2/, its query and params, and adds ns=', () => {
    const registry = { host: 'ghcr.io', url: new URL('https://ghcr.io') };
    assert.equal(
      mirrorLink(`<${PATH}?n=2&last=x%2By>; rel="next"`, registry, PATH),
      `<${PATH}?n=2&last=x%2By&ns=ghcr.io>; rel="next"`,
    );
    assert.equal(mirrorLink(undefined, registry, PATH), undefined);
  });

  it("reads an absolute link to the registry below its base path, and replaces a client's ns=", () => {
    const registry = { host: 'mirror.lan:5000', url: new URL('http://10.0.0.5:5000/proxy/') };
    assert.equal(
      mirrorLink(`<http://10.0.0.5:5000/proxy${PATH}?last=z&ns=other>; rel="next"`, registry, PATH),
      `<${PATH}?last=z&ns=mirror.lan%3A5000>; rel="next"`,
    );
  });

  it('leaves out a link the mirror cannot follow (another host, outside /v2/)', () => {
    const registry = { host: 'ghcr.io', url: new URL('https://ghcr.io') };
    assert.equal(
      mirrorLink('<https://elsewhere.example/v2/x?last=1>; rel="next"', registry, PATH),
      undefined,
    );
    assert.equal(
      mirrorLink(`</token?x=1>; rel="help", <${PATH}?last=1>; rel="next"`, registry, PATH),
      `<${PATH}?last=1&ns=ghcr.io>; rel="next"`,
    );
  });
});
