import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { describe, it } from 'node:test';

import {
  checkHandoutClaims,
  decodeMessage,
  handout,
  MAX_NOT_FROM_PEERS,
  pieceAuthHeaders,
  signHandoutToken,
  starvedLateMs,
  notFromHeader,
  notFromPeers,
  verifyHandoutToken,
} from '../src/index.js';

const blob = `sha256:${'a'.repeat(64)}`;
const other = `sha256:${'b'.repeat(64)}`;
const tracker = generateKeyPairSync('ed25519');
const stranger = generateKeyPairSync('ed25519');
const NOW = 1_764_470_000_000;
const claims = { blob, peer: 'node-a', exp: NOW + 600_000 };
const scope = { blob, peer: 'node-a', now: NOW, skewMs: 30_000 };

describe('hand-out tokens', () => {
  it('verify with the signing key and give back their claims', () => {
    const token = signHandoutToken(tracker.privateKey, claims);
    assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    const verified = verifyHandoutToken(token, [tracker.publicKey]);
    assert.ok(verified.ok);
    assert.deepEqual(verified.claims, claims);
    assert.equal(checkHandoutClaims(verified.claims, scope), undefined);
  });

  it('verify with any of several keys (a rotation)', () => {
    const token = signHandoutToken(tracker.privateKey, claims);
    assert.ok(verifyHandoutToken(token, [stranger.publicKey, tracker.publicKey]).ok);
  });

  it('refuse another key, a changed payload and junk', () => {
    const token = signHandoutToken(tracker.privateKey, claims);
    assert.deepEqual(verifyHandoutToken(token, [stranger.publicKey]), {
      ok: false,
      reason: 'bad-signature',
    });
    const [, signature] = token.split('.');
    const forged = Buffer.from(JSON.stringify({ ...claims, blob: other })).toString('base64url');
    assert.deepEqual(verifyHandoutToken(`${forged}.${signature ?? ''}`, [tracker.publicKey]), {
      ok: false,
      reason: 'bad-signature',
    });
    for (const junk of ['', 'abc', 'a.b.c', `${token}=`, 'x'.repeat(2000) + '.y']) {
      assert.deepEqual(verifyHandoutToken(junk, [tracker.publicKey]), {
        ok: false,
        reason: 'malformed',
      });
    }
  });

  it('refuse signed claims that are not claims', () => {
    const payload = Buffer.from(JSON.stringify({ blob: 'sha256:abc', peer: 'x', exp: 1 })).toString(
      'base64url',
    );
    assert.throws(() => signHandoutToken(tracker.privateKey, { blob: 'nope', peer: 'x', exp: 1 }));
    const signature = sign(null, Buffer.from(payload), tracker.privateKey).toString('base64url');
    assert.deepEqual(verifyHandoutToken(`${payload}.${signature}`, [tracker.publicKey]), {
      ok: false,
      reason: 'malformed',
    });
  });

  it('expire after exp plus the allowed skew, by the clock given', () => {
    assert.equal(checkHandoutClaims(claims, { ...scope, now: claims.exp }), undefined);
    assert.equal(checkHandoutClaims(claims, { ...scope, now: claims.exp + 30_000 }), undefined);
    assert.equal(checkHandoutClaims(claims, { ...scope, now: claims.exp + 30_001 }), 'expired');
  });

  it('open one blob, for one peer', () => {
    assert.equal(checkHandoutClaims(claims, { ...scope, blob: other }), 'wrong-blob');
    assert.equal(checkHandoutClaims(claims, { ...scope, peer: 'node-b' }), 'wrong-peer');
    assert.equal(checkHandoutClaims(claims, { ...scope, peer: undefined }), 'wrong-peer');
  });

  it('travel in a hand-out and in two request headers', () => {
    const token = signHandoutToken(tracker.privateKey, claims);
    const decoded = decodeMessage(
      handout,
      Buffer.from(JSON.stringify({ type: 'handout', blob, peers: [], token })),
    );
    assert.ok(decoded.ok);
    assert.equal(decoded.value.token, token);
    assert.deepEqual(pieceAuthHeaders(token, 'node-a'), {
      authorization: `Shoal-Piece ${token}`,
      'shoal-peer': 'node-a',
    });
    const bad = decodeMessage(
      handout,
      Buffer.from(JSON.stringify({ type: 'handout', blob, peers: [], token: 'not a token' })),
    );
    assert.equal(bad.ok, false);
  });
});

describe('the not-from header', () => {
  it('names well-formed peer ids only, at most MAX_NOT_FROM_PEERS of them', () => {
    assert.deepEqual(notFromPeers(undefined), []);
    assert.deepEqual(notFromPeers(''), []);
    assert.deepEqual(notFromPeers('agent-1, agent-2,,bad id,x/y,agent-3'), [
      'agent-1',
      'agent-2',
      'agent-3',
    ]);
    const many = Array.from({ length: 40 }, (_, i) => `agent-${i}`);
    const header = notFromHeader(many);
    assert.deepEqual(notFromPeers(header), many.slice(0, MAX_NOT_FROM_PEERS));
    assert.deepEqual(notFromPeers(many.join(',')), many.slice(0, MAX_NOT_FROM_PEERS));
    assert.deepEqual(notFromPeers(`${'a'.repeat(65)},agent-1`), ['agent-1']);
  });
});

describe('the starved header', () => {
  it('says a whole number of ms, or nothing', () => {
    assert.equal(starvedLateMs('1500'), 1500);
    assert.equal(starvedLateMs('0'), 0);
    for (const bad of [undefined, '', '-1', '1.5', '1e3', ' 12', '12ms', '1234567890']) {
      assert.equal(starvedLateMs(bad), undefined, String(bad));
    }
  });
});
