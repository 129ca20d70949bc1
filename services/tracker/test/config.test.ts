import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '@shoal/runtime';

import { loadTrackerConfig } from '../src/config.js';
import { seedPeerMatcher } from '../src/swarm/config.js';

describe('tracker configuration', () => {
  it('has defaults for everything but the hand-out key', () => {
    const config = loadTrackerConfig({ SHOAL_TRACKER_HANDOUT_KEY_FILE: '/keys/handout.key' });
    assert.equal(config.SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS, 10 * 60_000);
    assert.equal(config.SHOAL_TRACKER_PIECE_AUTH, 'on');
    assert.deepEqual(config.SHOAL_TRACKER_LISTEN, { host: '0.0.0.0', port: 65020 });
    assert.equal(config.SHOAL_TRACKER_PEER_MAX_AGE_MS, 30 * 60_000);
    assert.equal(config.SHOAL_TRACKER_LOAD_WINDOW_MS, 10_000);
    assert.equal(config.SHOAL_NATS_URL, 'nats://127.0.0.1:4222');
    assert.equal(config.SHOAL_NATS_STREAM_REPLICAS, 1);
    assert.equal(config.SHOAL_LOG_LEVEL, 'info');
    assert.equal(config.SHOAL_TRACKER_MAX_KEPT_HAVES, 1_000_000);
  });

  it('reads every variable', () => {
    const config = loadTrackerConfig({
      SHOAL_NATS_URL: 'nats://nats-0:4222,nats://nats-1:4222',
      SHOAL_NATS_STREAM_REPLICAS: '3',
      SHOAL_TRACKER_LISTEN: '[::]:9000',
      SHOAL_TRACKER_PEER_MAX_AGE_MS: '60000',
      SHOAL_TRACKER_LOAD_WINDOW_MS: '2000',
      SHOAL_LOG_LEVEL: 'debug',
      SHOAL_SHUTDOWN_TIMEOUT_MS: '5000',
      SHOAL_TRACKER_PIECE_AUTH: 'off',
      SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS: '60000',
      SHOAL_TRACKER_MAX_KEPT_HAVES: '5000',
    });
    assert.equal(config.SHOAL_TRACKER_MAX_KEPT_HAVES, 5_000);
    assert.equal(config.SHOAL_TRACKER_PIECE_AUTH, 'off');
    assert.equal(config.SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS, 60_000);
    assert.deepEqual(config.SHOAL_TRACKER_LISTEN, { host: '::', port: 9000 });
    assert.equal(config.SHOAL_NATS_STREAM_REPLICAS, 3);
    assert.equal(config.SHOAL_TRACKER_PEER_MAX_AGE_MS, 60_000);
    assert.equal(config.SHOAL_TRACKER_LOAD_WINDOW_MS, 2_000);
    assert.equal(config.SHOAL_SHUTDOWN_TIMEOUT_MS, 5_000);
  });

  it('reports every problem at once', () => {
    let thrown: unknown;
    try {
      loadTrackerConfig({
        SHOAL_TRACKER_LISTEN: 'nowhere',
        SHOAL_TRACKER_PEER_MAX_AGE_MS: '0',
        SHOAL_TRACKER_LOAD_WINDOW_MS: 'ten seconds',
        SHOAL_NATS_STREAM_REPLICAS: '2',
        SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS: '5',
      });
    } catch (error) {
      thrown = error;
    }
    assert.ok(thrown instanceof ConfigError);
    for (const name of [
      'SHOAL_TRACKER_LISTEN',
      'SHOAL_TRACKER_PEER_MAX_AGE_MS',
      'SHOAL_TRACKER_LOAD_WINDOW_MS',
      'SHOAL_NATS_STREAM_REPLICAS',
      'SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS',
      'SHOAL_TRACKER_HANDOUT_KEY_FILE',
    ]) {
      assert.ok(
        thrown.problems.some((p) => p.startsWith(`${name}:`)),
        `${name} not reported: ${JSON.stringify(thrown.problems)}`,
      );
    }
  });

  it('refuses to start without a hand-out key unless piece authentication is off', () => {
    assert.throws(() => loadTrackerConfig({}), /SHOAL_TRACKER_HANDOUT_KEY_FILE: required/);
    assert.equal(
      loadTrackerConfig({ SHOAL_TRACKER_PIECE_AUTH: 'off' }).SHOAL_TRACKER_PIECE_AUTH,
      'off',
    );
  });

  it('reads the seed peers as ids and prefixes, and refuses anything else', () => {
    const config = loadTrackerConfig({
      SHOAL_TRACKER_PIECE_AUTH: 'off',
      SHOAL_TRACKER_SEED_PEERS: ' seed-*, other ,',
    });
    assert.deepEqual(config.SHOAL_TRACKER_SEED_PEERS, ['seed-*', 'other']);
    const maySeed = seedPeerMatcher(config.SHOAL_TRACKER_SEED_PEERS);
    assert.deepEqual(['seed-1', 'other', 'others', 'node'].map(maySeed), [
      true,
      true,
      false,
      false,
    ]);
    assert.ok(seedPeerMatcher([])('anyone'), 'no list: any peer');
    assert.throws(
      () => loadTrackerConfig({ SHOAL_TRACKER_PIECE_AUTH: 'off', SHOAL_TRACKER_SEED_PEERS: 'a.b' }),
      /SHOAL_TRACKER_SEED_PEERS/,
    );
  });

  it("refuses the deploy files' placeholder secrets", () => {
    assert.throws(
      () =>
        loadTrackerConfig({
          SHOAL_TRACKER_HANDOUT_KEY_FILE: '/keys/handout.key',
          SHOAL_NATS_URL: 'nats://tracker:change-me-tracker@nats:4222',
        }),
      /SHOAL_NATS_URL: holds the deploy files' placeholder secret/,
    );
  });
});
