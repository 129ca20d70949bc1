/** Retry-After parsing and the holds it starts, on a clock the test moves. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  MAX_HOLD_MS,
  RateLimitHolds,
  retryAfterMs,
  type LimitedRequest,
  type RegistryRequestKind,
} from '../src/index.js';

describe('retryAfterMs', () => {
  it('reads delay-seconds and HTTP dates, capped, and nothing else', () => {
    const now = Date.parse('Mon, 30 Nov 2026 21:00:00 GMT');
    assert.equal(retryAfterMs('7', now), 7000);
    assert.equal(retryAfterMs(' 0 ', now), 0);
    assert.equal(retryAfterMs('Mon, 30 Nov 2026 21:00:30 GMT', now), 30_000);
    assert.equal(retryAfterMs('Mon, 30 Nov 2026 20:59:00 GMT', now), 0, 'a date past is now');
    assert.equal(retryAfterMs('99999999', now), MAX_HOLD_MS);
    assert.equal(retryAfterMs(undefined, now), undefined);
    assert.equal(retryAfterMs('soon', now), undefined);
    assert.equal(retryAfterMs('-5', now), undefined);
  });
});

describe('RateLimitHolds', () => {
  const request = (
    kind: RegistryRequestKind,
    method = 'GET',
    authorization: string | null = 'Bearer a',
    registry = 'docker.io',
  ): LimitedRequest => ({ registry, kind, method, authorization: authorization ?? undefined });

  it('holds the same registry, kind, method and credential until the Retry-After has passed', () => {
    let now = 1_000_000;
    const counted: string[] = [];
    const holds = new RateLimitHolds({
      now: () => now,
      count: (registry, outcome) => counted.push(`${registry} ${outcome}`),
    });
    const manifest = request('manifest');
    assert.equal(holds.note(manifest, 200, '5'), undefined);
    assert.equal(holds.note(manifest, 429, '0'), undefined, 'Retry-After: 0 holds nothing');
    assert.equal(holds.held(manifest), undefined);
    assert.equal(holds.noteAnswer(manifest, 429, { 'retry-after': ['5', '9'] }), 5000);
    assert.deepEqual(holds.held(manifest), { retryAfterS: 5 });
    // A look at the hold is not a request held: not counted.
    assert.equal(holds.holds(manifest), true);
    assert.equal(holds.holds(request('manifest', 'HEAD')), false);
    assert.equal(holds.held(request('manifest', 'HEAD')), undefined, 'HEADs are free');
    assert.equal(holds.held(request('manifest', 'GET', 'Bearer b')), undefined, 'another account');
    assert.equal(holds.held(request('manifest', 'GET', null)), undefined, 'anonymous');
    assert.equal(
      holds.held(request('manifest', 'GET', 'Bearer a', 'ghcr.io')),
      undefined,
      'another registry',
    );
    now += 3_500;
    assert.deepEqual(holds.held(manifest), { retryAfterS: 2 });
    now += 1_499;
    assert.deepEqual(holds.held(manifest), { retryAfterS: 1 });
    now += 1;
    assert.equal(holds.held(manifest), undefined);
    assert.equal(holds.holds(manifest), false);
    assert.deepEqual(counted, [
      'docker.io answered',
      'docker.io held',
      'docker.io held',
      'docker.io held',
    ]);
  });

  it("holds only the kind that met the limit: a manifest's 429 leaves blobs and referrers alone", () => {
    const holds = new RateLimitHolds({ now: () => 1_000_000 });
    assert.equal(holds.note(request('manifest'), 429, '60'), 60_000);
    assert.equal(holds.held(request('blob')), undefined, 'Docker Hub counts manifest GETs only');
    assert.equal(holds.held(request('referrers')), undefined);
    assert.deepEqual(holds.held(request('manifest')), { retryAfterS: 60 });
    assert.equal(holds.note(request('blob'), 429, '30'), 30_000);
    assert.deepEqual(holds.held(request('blob')), { retryAfterS: 30 });
    assert.equal(
      holds.held({ ...request('blob'), started: true }),
      undefined,
      'a transfer already started is never held',
    );
  });

  it('backs off without Retry-After: 1 s, doubled while the limit stays on, up to 60 s', () => {
    let now = 1_000_000;
    const holds = new RateLimitHolds({ now: () => now });
    const manifest = request('manifest');
    const expected = [1, 2, 4, 8, 16, 32, 60, 60];
    for (const seconds of expected) {
      // Asked again the moment the previous hold ended, and refused again.
      assert.equal(holds.noteAnswer(manifest, 429, {}), seconds * 1000);
      assert.deepEqual(holds.held(manifest), { retryAfterS: seconds });
      assert.equal(holds.held(request('blob')), undefined, 'other kinds are not held');
      now += seconds * 1000;
      assert.equal(holds.held(manifest), undefined, `free again after ${seconds} s`);
    }
    // An unreadable Retry-After is no Retry-After; a 429 long after the last hold (the limit
    // was lifted meanwhile) starts from 1 s again.
    now += 10 * 60_000;
    assert.equal(holds.note(manifest, 429, 'soon'), 1000);
    now += 1000;
    assert.equal(holds.note(manifest, 429, undefined), 2000, 'refused again at once: doubled');
    now += 2000 + 2001;
    assert.equal(holds.note(manifest, 429, undefined), 1000, 'later than one hold after: reset');
    // A Retry-After, when one comes, is what counts.
    assert.equal(holds.note(manifest, 429, '7'), 7000);
    // Each credential backs off on its own.
    assert.equal(holds.note(request('manifest', 'GET', 'Bearer b'), 429, undefined), 1000);
  });

  it('never holds the /v2/ ping, and its 429 starts no hold', () => {
    const holds = new RateLimitHolds({ now: () => 1_000_000 });
    assert.equal(holds.note(request('ping', 'GET', null), 429, '60'), undefined);
    assert.equal(holds.held(request('ping', 'GET', null)), undefined);
    assert.equal(holds.note(request('manifest', 'GET', null), 429, '60'), 60_000);
    assert.equal(holds.held(request('ping', 'GET', null)), undefined);
  });
});
