import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError } from '@shoal/runtime';

import { loadWatcherConfig } from '../src/config.js';

const REGISTRIES = 'registry.example.com,127.0.0.1:5000=http://127.0.0.1:5000';
const TOKEN = 'webhook-token-0123456789';
const HMAC_SECRET = 'webhook-hmac-secret-0123456789';

/** The problems a configuration is refused for. */
function problemsOf(env: Record<string, string | undefined>): readonly string[] {
  try {
    loadWatcherConfig(env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.problems;
  }
  assert.fail('the configuration was accepted');
}

describe('watcher configuration', () => {
  it('has defaults for everything but the registries and a webhook secret', () => {
    const config = loadWatcherConfig({
      SHOAL_WATCHER_REGISTRIES: REGISTRIES,
      SHOAL_WATCHER_WEBHOOK_TOKEN: TOKEN,
    });
    assert.deepEqual(config.SHOAL_WATCHER_LISTEN, { host: '0.0.0.0', port: 65030 });
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_SCOPE, 'seed');
    assert.deepEqual(config.SHOAL_WATCHER_PLATFORMS, []);
    assert.match(config.SHOAL_WATCHER_ID, /^watcher-[a-z0-9_-]+$/);
    assert.ok(config.SHOAL_WATCHER_ID.length <= 64);
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_HMAC_SECRET, undefined);
    assert.equal(config.SHOAL_WATCHER_API_TOKEN, undefined);
    assert.equal(config.SHOAL_WATCHER_DOCKER_CONFIG, undefined);
    assert.equal(config.SHOAL_WATCHER_SCHEDULE_FILE, undefined);
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_MAX_BYTES, 1024 * 1024);
    assert.equal(config.SHOAL_WATCHER_SCHEDULE_INTERVAL_MS, 300_000);
    assert.equal(config.SHOAL_WATCHER_PREHEAT_CONCURRENCY, 2);
    assert.equal(config.SHOAL_WATCHER_PREHEAT_TIMEOUT_MS, 3_600_000);
    assert.equal(config.SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS, 10_000);
    assert.equal(config.SHOAL_WATCHER_MAX_MANIFEST_BYTES, 4 * 1024 * 1024);
    assert.equal(config.SHOAL_WATCHER_UPSTREAM_TIMEOUT_MS, 30_000);
    assert.equal(config.SHOAL_NATS_URL, 'nats://127.0.0.1:4222');
    assert.deepEqual(
      config.SHOAL_WATCHER_REGISTRIES.map((r) => [r.host, r.url.href]),
      [
        ['registry.example.com', 'https://registry.example.com/'],
        ['127.0.0.1:5000', 'http://127.0.0.1:5000/'],
      ],
    );
  });

  it('reads every variable', () => {
    const config = loadWatcherConfig({
      SHOAL_WATCHER_REGISTRIES: REGISTRIES,
      SHOAL_WATCHER_LISTEN: '127.0.0.1:9030',
      SHOAL_WATCHER_ID: 'watcher-a',
      SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: HMAC_SECRET,
      SHOAL_WATCHER_API_TOKEN: 'api-token-0123456789',
      SHOAL_WATCHER_WEBHOOK_SCOPE: 'nodes',
      SHOAL_WATCHER_PLATFORMS: 'linux/amd64, linux/arm/v7',
      SHOAL_WATCHER_SCHEDULE_FILE: '/etc/shoal/schedule.json',
      SHOAL_WATCHER_SCHEDULE_INTERVAL_MS: '60000',
      SHOAL_WATCHER_PREHEAT_CONCURRENCY: '4',
    });
    assert.deepEqual(config.SHOAL_WATCHER_LISTEN, { host: '127.0.0.1', port: 9030 });
    assert.equal(config.SHOAL_WATCHER_ID, 'watcher-a');
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_TOKEN, undefined);
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_HMAC_SECRET, HMAC_SECRET);
    assert.equal(config.SHOAL_WATCHER_API_TOKEN, 'api-token-0123456789');
    assert.equal(config.SHOAL_WATCHER_WEBHOOK_SCOPE, 'nodes');
    assert.deepEqual(config.SHOAL_WATCHER_PLATFORMS, ['linux/amd64', 'linux/arm/v7']);
    assert.equal(config.SHOAL_WATCHER_SCHEDULE_FILE, '/etc/shoal/schedule.json');
    assert.equal(config.SHOAL_WATCHER_SCHEDULE_INTERVAL_MS, 60_000);
    assert.equal(config.SHOAL_WATCHER_PREHEAT_CONCURRENCY, 4);
  });

  it('refuses to start without a token or an HMAC secret, naming both variables', () => {
    for (const env of [
      { SHOAL_WATCHER_REGISTRIES: REGISTRIES },
      {
        SHOAL_WATCHER_REGISTRIES: REGISTRIES,
        SHOAL_WATCHER_WEBHOOK_TOKEN: '',
        SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: '',
      },
    ]) {
      const problems = problemsOf(env);
      const problem = problems.find((p) => p.includes('unauthenticated'));
      assert.ok(problem !== undefined, JSON.stringify(problems));
      assert.match(problem, /SHOAL_WATCHER_WEBHOOK_TOKEN/);
      assert.match(problem, /SHOAL_WATCHER_WEBHOOK_HMAC_SECRET/);
    }
  });

  it('refuses short secrets', () => {
    const problems = problemsOf({
      SHOAL_WATCHER_REGISTRIES: REGISTRIES,
      SHOAL_WATCHER_WEBHOOK_TOKEN: 'short',
      SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: 'also-short',
      SHOAL_WATCHER_API_TOKEN: '0123456789abcde',
    });
    for (const name of [
      'SHOAL_WATCHER_WEBHOOK_TOKEN',
      'SHOAL_WATCHER_WEBHOOK_HMAC_SECRET',
      'SHOAL_WATCHER_API_TOKEN',
    ]) {
      assert.ok(
        problems.includes(`${name}: use at least 16 characters`),
        `${name} not reported: ${JSON.stringify(problems)}`,
      );
    }
    assert.equal(
      problemsOf({
        SHOAL_WATCHER_REGISTRIES: REGISTRIES,
        SHOAL_WATCHER_WEBHOOK_TOKEN: 'x'.repeat(15),
      }).length,
      1,
    );
    loadWatcherConfig({
      SHOAL_WATCHER_REGISTRIES: REGISTRIES,
      SHOAL_WATCHER_WEBHOOK_TOKEN: 'x'.repeat(16),
    });
  });

  it('reports every problem at once', () => {
    const problems = problemsOf({
      SHOAL_WATCHER_LISTEN: 'nowhere',
      SHOAL_WATCHER_WEBHOOK_SCOPE: 'cluster',
      SHOAL_WATCHER_PLATFORMS: 'linux',
      SHOAL_WATCHER_PREHEAT_TIMEOUT_MS: 'an hour',
    });
    for (const name of [
      'SHOAL_WATCHER_REGISTRIES',
      'SHOAL_WATCHER_LISTEN',
      'SHOAL_WATCHER_WEBHOOK_SCOPE',
      'SHOAL_WATCHER_PLATFORMS',
      'SHOAL_WATCHER_PREHEAT_TIMEOUT_MS',
    ]) {
      assert.ok(
        problems.some((p) => p.startsWith(`${name}:`)),
        `${name} not reported: ${JSON.stringify(problems)}`,
      );
    }
    assert.ok(problems.some((p) => p.includes('unauthenticated')));
  });

  it('trusts https token realms, and plain http ones on loopback only', () => {
    const env = { SHOAL_WATCHER_REGISTRIES: REGISTRIES, SHOAL_WATCHER_WEBHOOK_TOKEN: TOKEN };
    const config = loadWatcherConfig({
      ...env,
      SHOAL_WATCHER_TRUSTED_REALMS: 'https://gitlab.example.com/jwt/auth,http://127.0.0.1:5001',
    });
    assert.deepEqual(config.SHOAL_WATCHER_TRUSTED_REALMS, [
      'https://gitlab.example.com',
      'http://127.0.0.1:5001',
    ]);
    const problems = problemsOf({
      ...env,
      SHOAL_WATCHER_TRUSTED_REALMS: 'http://auth.example.com/token',
    });
    assert.ok(
      problems.some(
        (p) =>
          p.startsWith('SHOAL_WATCHER_TRUSTED_REALMS:') &&
          p.includes('http://auth.example.com/token') &&
          p.includes('cleartext'),
      ),
      JSON.stringify(problems),
    );
  });
});
