import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { verifyHandoutToken } from '@shoal/proto';
import { generateHandoutKeys } from '@shoal/testkit';

import { HandoutTokens } from '../src/handout/tokens.js';

const blob = `sha256:${'e'.repeat(64)}`;
const keys = generateHandoutKeys();
const TTL_MS = 600_000;
const NOW = 1_764_470_000_000;

describe('hand-out tokens', () => {
  it('are signed for the blob and the asker, valid for the lifetime', () => {
    const tokens = new HandoutTokens(keys.privateKey, TTL_MS);
    const verified = verifyHandoutToken(tokens.tokenFor(blob, 'node-a', NOW), [keys.publicKey]);
    assert.ok(verified.ok);
    assert.deepEqual(verified.claims, { blob, peer: 'node-a', exp: NOW + TTL_MS });
  });

  it('are reused until half their lifetime has passed, per blob and peer', () => {
    const tokens = new HandoutTokens(keys.privateKey, TTL_MS);
    const first = tokens.tokenFor(blob, 'node-a', NOW);
    assert.equal(tokens.tokenFor(blob, 'node-a', NOW + TTL_MS / 2 - 1), first);
    assert.notEqual(tokens.tokenFor(blob, 'node-b', NOW), first);
    assert.notEqual(tokens.tokenFor(`sha256:${'f'.repeat(64)}`, 'node-a', NOW), first);
    const renewed = tokens.tokenFor(blob, 'node-a', NOW + TTL_MS / 2);
    assert.notEqual(renewed, first);
    const verified = verifyHandoutToken(renewed, [keys.publicKey]);
    assert.ok(verified.ok);
    assert.equal(verified.claims.exp, NOW + TTL_MS / 2 + TTL_MS);
  });

  it('forget the least recently used first, and only past their capacity', () => {
    const tokens = new HandoutTokens(keys.privateKey, TTL_MS, 3);
    const a = tokens.tokenFor(blob, 'node-a', NOW);
    const b = tokens.tokenFor(blob, 'node-b', NOW);
    tokens.tokenFor(blob, 'node-c', NOW);
    // node-a used again: node-b is now the least recently used.
    assert.equal(tokens.tokenFor(blob, 'node-a', NOW + 1), a);
    tokens.tokenFor(blob, 'node-d', NOW + 2);
    assert.equal(tokens.size, 3, 'one forgotten, not all');
    // node-a is still remembered (the same token); node-b was forgotten and is signed anew.
    assert.equal(tokens.tokenFor(blob, 'node-a', NOW + 3), a);
    const renewed = tokens.tokenFor(blob, 'node-b', NOW + 4);
    assert.notEqual(renewed, b);
    const verified = verifyHandoutToken(renewed, [keys.publicKey]);
    assert.ok(verified.ok);
    assert.equal(verified.claims.exp, NOW + 4 + TTL_MS);
    assert.equal(tokens.size, 3);
  });

  it('are forgotten by prune once past half their lifetime, as they are never handed out again', () => {
    const tokens = new HandoutTokens(keys.privateKey, TTL_MS);
    // A long run of rollouts: every (blob, peer) asks once, a minute apart per 100 of them.
    for (let i = 0; i < 1_000; i += 1) {
      tokens.tokenFor(`sha256:${i.toString(16).padStart(64, '0')}`, 'node-a', NOW + i * 600);
    }
    assert.equal(tokens.size, 1_000);
    // At NOW + 600 s, the tokens issued up to NOW + 300 s are past half their lifetime.
    const at = NOW + TTL_MS;
    assert.equal(tokens.prune(at), 501);
    assert.equal(tokens.size, 499);
    // One still remembered is handed out again as it was.
    const kept = `sha256:${(999).toString(16).padStart(64, '0')}`;
    const token = tokens.tokenFor(kept, 'node-a', at);
    assert.equal(tokens.tokenFor(kept, 'node-a', at + 1), token);
    assert.equal(tokens.prune(at + TTL_MS), 499);
    assert.equal(tokens.size, 0);
  });
});
